"""Stage 2 of LMD (layout-grounded image generation) as small, composable torch pieces.

Read in this order, which is also the paper's order (LMD-REFERENCE.md section 2):

- `tokens`    which prompt token columns belong to a box's phrase (section 2.0);
- `boxes`     512-canvas [x, y, w, h] boxes as cell masks at any attention/latent resolution;
- `noise`     the shared initial noise and the per-box blended noise (section 2.1);
- `layers`    which cross-attention layers LMD reads, found by UNet position, not by name;
- `attention` capturing cross-attention probabilities through diffusers attention processors;
- `energy`    the top-k box energy (2.2) and the attention-transfer term (2.6);
- `guidance`  latent backward guidance: the iteration schedule and the DDIM-scaled step (2.3).

Every module imports torch (and only torch; diffusers objects are passed in), so importing this
package is for generation code only; the CLI and the light tests never import it.
"""
