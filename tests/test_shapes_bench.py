"""The committed shapes-world model: loaded like any SD model, and a small end-to-end benchmark run.

`shapes-sd` / `shapes-gligen` are built-ins copied from the source tree into the model cache and
opened by the same loader as SD1.5 (models/loaders.py). The end-to-end test runs
`lmd-batch bench images --suite shapes` on 12 prompts (3 per category) with oracle layouts through
every stage (ingest, layouts from the given file, box_latents, images, evaluate) and all four
methods, then resumes it (nothing to redo).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_shapes_sd_loads_through_the_sd_loader_and_draws_what_it_is_asked():
    import numpy as np
    import torch

    from lmd_batch.models.loaders import load_gligen_pipeline, load_sd_pipeline
    from lmd_batch.shapes.detect import detect_shapes

    pipe = load_sd_pipeline("shapes-sd", dtype=torch.float32)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.vae_scale_factor == 4
    assert pipe.tokenizer.model_max_length == 32 and pipe.unet.config.cross_attention_dim == 128
    training = json.loads((REPO / "lmd_batch" / "shapes" / "weights" / "shapes-sd" / "training.json").read_text())
    assert training["config"]["seed"] == 0
    hits = 0
    for seed in range(4):
        image = pipe("a red circle on a sand background", height=64, width=64, num_inference_steps=20,
                     generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
        found = detect_shapes((np.asarray(image) * 255).round().astype(np.uint8))
        hits += any(d.color == "red" for d in found)
    assert hits >= 3  # the committed weights draw the colour they are asked for
    gl = load_gligen_pipeline("shapes-gligen", dtype=torch.float32)
    assert gl.unet.position_net is not None and gl.vae_scale_factor == 4


def test_shapes_evaluate_measures_the_committed_model():
    """`lmd-batch shapes evaluate` on the committed weights (one seed, 20 VAE scenes): the numbers
    are deterministic for the committed bytes, so the floors catch a broken model, loader or
    detector (the full measure, 4 seeds, is in benchmarks/RESULTS.md)."""
    from typer.testing import CliRunner

    from lmd_batch.cli import app

    res = CliRunner().invoke(app, ["shapes", "evaluate", "shapes-sd", "--seeds", "1", "--vae-scenes", "20",
                                   "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    q = json.loads(res.output[res.output.index("{"):])
    assert q["vae"]["precision"] >= 90 and q["vae"]["recall"] >= 90
    assert q["single"]["accuracy"] >= 75 and q["single"]["on"]["images"] == q["single"]["with"]["images"] == 24
    assert 0 <= q["pairs"]["both_found"] <= 100 and q["pairs"]["images"] == 24
    bad = CliRunner().invoke(app, ["shapes", "evaluate", "no-such-model-here"])
    assert bad.exit_code != 0 and "error:" in bad.output


@pytest.fixture(scope="module")
def bench_job(tmp_path_factory):
    """jobs/shapes-benchmark.yaml, in-process executor and fewer steps (the same code path)."""
    d = tmp_path_factory.mktemp("shapes-bench")
    job = yaml.safe_load((REPO / "jobs" / "shapes-benchmark.yaml").read_text())
    job["ray"] = {"executor": "local"}
    job["input"]["shard_rows"] = 5
    job["diffusion"].update(steps=8, guidance_steps=4)
    path = d / "shapes-benchmark.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_shapes_benchmark_end_to_end_with_oracle_layouts(tmp_path, bench_job):
    run = tmp_path / "bench"
    args = ["bench", "images", "--suite", "shapes", "--layouts", "oracle", "--per-category", "3", "--run", run,
            "--job", bench_job]
    res = run_cli(*args, "--json", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert set(got) >= {"sd", "gligen", "lmd", "lmd_plus", "layouts"}
    for method in ("sd", "gligen", "lmd", "lmd_plus"):
        assert got[method]["images"] == 12
        assert all(got[method][c] is not None for c in ("negation", "numeracy", "attribution", "spatial"))
    assert got["layouts"]["overall"] == 100.0  # oracle layouts satisfy their prompts by construction
    assert got["shards"] == {"total": 3, "images": 3, "evaluated": 3} and not got["missing"]
    assert (tmp_path / "bench.suite" / "prompts.jsonl").is_file()
    assert (tmp_path / "bench.suite" / "oracle-layouts.jsonl").is_file()

    import pyarrow.parquet as pq

    layouts = [r for f in sorted((run / "layouts" / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(layouts) == 12 and {r["model"] for r in layouts} == {"given"}
    evals = [r for f in sorted((run / "evaluate" / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(evals) == 48 and all(r["width"] == 64 and r["category"] for r in evals)
    assert all(len(r["box_scores"]) == len(next(lay for lay in layouts if lay["layout_id"] == r["layout_id"])["boxes"])
               for r in evals)

    # The same command resumes: nothing is redone and the table is the same.
    before = {f: f.stat().st_mtime_ns for f in run.rglob("*.parquet")}
    res = run_cli(*args, "--json", "--layouts", "llm", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout) == got
    assert "made with oracle layouts" in res.stderr
    assert {f: f.stat().st_mtime_ns for f in run.rglob("*.parquet")} == before

    res = run_cli("bench", "images", "--suite", "shapes", "--run", run, "--no-evaluate")
    assert res.returncode == 0 and "Shapes image accuracy" in res.stdout and "lmd_plus" in res.stdout


def test_shapes_benchmark_bad_flags_are_one_line_errors(tmp_path, bench_job):
    res = run_cli("bench", "images", "--suite", "shapes", "--layouts", "guess", "--run", tmp_path / "r",
                  "--job", bench_job)
    assert res.returncode != 0 and "--layouts must be one of oracle, llm" in res.stderr
    res = run_cli("bench", "images", "--suite", "nope", "--run", tmp_path / "r")
    assert res.returncode != 0 and "--suite must be 'lmd' or 'shapes'" in res.stderr
