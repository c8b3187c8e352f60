"""The pipeline's stages (run as `python -m stages.<name>`) and the shared modules they call."""
