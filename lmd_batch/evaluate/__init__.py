"""Image-level evaluation: LMD's OWL-ViT benchmark protocol and detector verification of layouts."""
