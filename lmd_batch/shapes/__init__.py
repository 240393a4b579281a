"""The shapes world: rendered scenes of coloured shapes with captions, boxes and masks, and a
classical detector for them, so a text-to-image model small enough to train on a CPU can be
trained and LMD's effect measured on it (issue 7)."""
