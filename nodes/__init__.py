"""The ComfyUI adapter: node schemas and conversions; the work is done in `reward/` and `training/`."""
