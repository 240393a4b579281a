"""The whole pipeline on tiny models: ingest -> layouts -> box_latents -> images.

Layouts come from the replay endpoint (known layouts, no vLLM), so the test is about stage 2 in
the pipeline: the content-addressed box-latent cache (a recompose run reuses every box), the
method switch, and determinism (same job, fresh cache, same PNG bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_job_file
from llm_replay import ReplayLLM

pytestmark = pytest.mark.slow

KEY = "sk-images"
ANSWERS = {
    "a red ball on the left of a blue cube":
        "[('a red ball', [40, 200, 150, 150]), ('a blue cube', [300, 180, 160, 160])]\nBackground prompt: a table",
    "two cats on a sofa": "[('a cat', [60, 220, 150, 140]), ('a cat', [280, 220, 150, 140])]\nBackground prompt: a sofa",
    "an empty beach": "[]\nBackground prompt: an empty beach\nNegative prompt: people",
}


@pytest.fixture(scope="module")
def endpoint():
    server = ReplayLLM(ANSWERS, api_key=KEY)
    yield server
    server.close()


def _job(folder: Path, endpoint, run: str, cache: str, **diffusion):
    prompts = folder / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("".join(p + "\n" for p in ANSWERS))
    d = dict(method="lmd", model="tiny-sd", gligen_model="tiny-gligen", sam_model="tiny-sam", mask="box", steps=4,
             size=128, guidance_steps=2)
    d.update(diffusion)
    return make_job_file(folder, _file=f"job-{run}.yaml", input={"prompts": str(prompts), "shard_rows": 2},
                         run={"url": run, "cache_url": cache}, stages=None,
                         llm=dict(url=endpoint.url, model="replay", api_key_env="IMAGES_KEY", structured=False),
                         diffusion=d)


def _run(job_file, monkeypatch):
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    monkeypatch.setenv("IMAGES_KEY", KEY)
    job = load_job(job_file)
    run_job(job, log=lambda *a: None)
    return Path(job.run.url)


def _table(run: Path, stage: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((run / stage / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _counters(run: Path, stage: str) -> dict:
    from lmd_batch.pipeline.status import run_status
    from lmd_batch.storage.run_folder import RunFolder

    return run_status(RunFolder(str(run)))["stages"][stage]["counters"]


def test_lmd_pipeline_cache_recompose_and_determinism(tmp_path, endpoint, monkeypatch):
    from PIL import Image

    run = _run(_job(tmp_path, endpoint, "run1", "cache1"), monkeypatch)
    images = _table(run, "images")
    assert sorted(r["prompt"] for r in images) == sorted(ANSWERS)
    for r in images:
        png = (run / r["image_path"]).read_bytes()
        assert Image.open(run / r["image_path"]).size == (128, 128)
        import hashlib

        assert hashlib.sha256(png).hexdigest() == r["image_sha256"]
        assert len(r["masks"]) == len(r["boxes"]) == len(r["in_box_ratio"])
    boxes = _table(run, "box_latents")
    assert len(boxes) == 4 and {b["status"] for b in boxes} == {"generated"}
    assert _counters(run, "box_latents")["cache_misses"] == 4
    assert len(list((tmp_path / "cache1" / "boxes").rglob("*.safetensors"))) == 4

    # A rerun of the finished run does no work at all (no Ray, no model, no request).
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    asked = endpoint.count()
    again = run_job(load_job(_job(tmp_path, endpoint, "run1", "cache1")), log=lambda *a: None)
    assert again["pending"] == 0 and again["services"] == {} and endpoint.count() == asked

    # Recompose as a new run: only composition settings change, every box comes from the cache.
    run2 = _run(_job(tmp_path, endpoint, "run2", "cache1", frozen_step_ratio=0.25, ref_ca_loss_weight=1.0,
                     overall_guidance_steps=1), monkeypatch)
    c = _counters(run2, "box_latents")
    assert (c["cache_hits"], c["cache_misses"], c["unet_passes"]) == (4, 0, 0)
    assert {b["status"] for b in _table(run2, "box_latents")} == {"hit"}
    assert len(_table(run2, "images")) == 3

    # Same job, fresh cache and run folder: the same bytes.
    run3 = _run(_job(tmp_path, endpoint, "run3", "cache3"), monkeypatch)
    first = {r["layout_id"]: r["image_sha256"] for r in images}
    assert {r["layout_id"]: r["image_sha256"] for r in _table(run3, "images")} == first
    assert (run / "images" / "data" / "shard-00000.parquet").read_bytes() == \
        (run3 / "images" / "data" / "shard-00000.parquet").read_bytes()


@pytest.mark.parametrize("method", ["sd", "lmd_plus"])
def test_other_methods(tmp_path, endpoint, monkeypatch, method):
    run = _run(_job(tmp_path, endpoint, "run", "cache", method=method, mask="sam" if method == "lmd_plus" else "box"),
               monkeypatch)
    images = _table(run, "images")
    assert len(images) == 3 and {r["method"] for r in images} == {method}
    boxes = _table(run, "box_latents")
    assert len(boxes) == (0 if method == "sd" else 4)
    if method == "sd":
        assert all(r["masks"] == [] for r in images)
