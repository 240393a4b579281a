"""The stage plug-ins, in pipeline order, named by import path so listing them imports nothing heavy.

Later stages (layouts, box_latents, images, evaluate) register here as they are built.
"""

from __future__ import annotations

import importlib

STAGES: dict[str, str] = {
    "ingest": "lmd_batch.pipeline.ingest:IngestStage",
    "layouts": "lmd_batch.pipeline.layouts:LayoutStage",
    "box_latents": "lmd_batch.pipeline.box_latents:BoxLatentStage",
    "images": "lmd_batch.pipeline.images:ImageStage",
    "evaluate": "lmd_batch.pipeline.evaluate:EvaluateStage",
}


def stage_names() -> list[str]:
    return list(STAGES)


def stage_class(name: str):
    module, _, cls = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), cls)
