"""Models: resolving a model reference (built-in name, Hugging Face id, local folder, fsspec URL)
to something a loader can open, and building the tiny built-in models from configs."""
