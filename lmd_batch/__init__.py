"""lmd-batch: LLM-grounded Diffusion (LMD / LMD+) as an offline, resumable batch pipeline.

Layers (dependencies point downwards only):
    cli.py, config.py         user surface: typer CLI, pydantic job files
    pipeline/                 Ray orchestration: stages, shard scheduling, resume
    storage/                  the run folder on any fsspec URL (the only code that knows paths)
    layout/ grounding/ bench/ algorithms, usable alone from Python
    models/                   loading weights (built-in name, HF id, local dir, fsspec URL) + tiny builders
"""

__version__ = "0.1.0"
