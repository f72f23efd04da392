"""LoRA files: formats, per-family module names, merging and baking."""
