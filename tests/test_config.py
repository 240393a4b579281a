"""Job files: loading and resolving, the `validate` command's error reports, and the fingerprint."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import run_cli
from lmd_batch.cli import app
from lmd_batch.config import Job, load_job
from lmd_batch.errors import JobFileError

runner = CliRunner()


def validate(path) -> "object":
    return runner.invoke(app, ["validate", str(path)])


def _problems(result) -> list[str]:
    """The indented problem lines that `validate` prints on stderr."""
    return [ln.strip() for ln in result.stderr.splitlines() if ln.startswith("  ")]


# --- valid jobs ---------------------------------------------------------------------------------

FULL = {
    "name": "full.job-1",
    "input": {"prompts": ["prompts.txt", "more/*.jsonl"], "format": "auto", "max_prompt_chars": 500,
              "shard_rows": 10, "samples": 2},
    "run": {"url": "runs/full", "cache_url": "cache"},
    "ray": {"executor": "local", "num_cpus": 2, "object_store_mb": 128,
            "stages": {"ingest": {"num_cpus": 0.25, "pool_size": 2}}},
    "llm": {"model": "smollm2-135m", "temperature": 0.5, "max_tokens": 64},
    "diffusion": {"method": "lmd_plus", "steps": 10, "size": 256},
    "seed": 42,
    "stages": ["ingest"],
}


def test_valid_job_round_trip(tmp_path, write_job):
    path = write_job(tmp_path, **copy.deepcopy(FULL))
    job = load_job(path)
    assert job.name == "full.job-1"
    # relative paths are resolved against the job file's folder; globs are kept
    assert job.input.prompts == [str(tmp_path / "prompts.txt"), str(tmp_path / "more" / "*.jsonl")]
    assert job.run.url == str(tmp_path / "runs" / "full")
    assert job.run.cache_url == str(tmp_path / "cache")
    assert (job.input.max_prompt_chars, job.input.shard_rows, job.input.samples) == (500, 10, 2)
    assert job.ray.executor == "local" and job.resources("ingest").pool_size == 2
    assert job.resources("ingest").num_cpus == 0.25
    assert job.llm.temperature == 0.5 and job.llm.max_tokens == 64
    assert job.llm.mode == "chat"  # a default
    assert (job.diffusion.method, job.diffusion.steps, job.diffusion.size) == ("lmd_plus", 10, 256)
    assert job.seed == 42 and job.selected_stages() == ["ingest"]

    # the resolved config, written out again, loads to the same job (from any folder)
    other = tmp_path / "elsewhere"
    other.mkdir()
    again_path = other / "resolved.yaml"
    again_path.write_text(yaml.safe_dump(job.public_dict()), encoding="utf-8")
    again = load_job(again_path)
    assert again.public_dict() == job.public_dict()
    assert again.fingerprint() == job.fingerprint()
    # and through JSON, as Ray actors receive it
    assert Job.model_validate_json(job.model_dump_json()).public_dict() == job.public_dict()


def test_urls_are_kept_and_run_override(tmp_path, monkeypatch, write_job):
    path = write_job(tmp_path, input={"prompts": "s3://bucket/prompts/*.parquet"},
                         run={"url": "memory://runs/x", "storage_options": {"anon": True}})
    job = load_job(path)
    assert job.input.prompts == ["s3://bucket/prompts/*.parquet"]
    assert job.run.url == "memory://runs/x"
    assert job.run.storage_options == {"anon": True}
    monkeypatch.chdir(tmp_path)
    assert load_job(path, run_url="other-run").run.url == str(tmp_path / "other-run")
    assert load_job(path, run_url=f"file://{tmp_path}/r2").run.url == str(tmp_path / "r2")
    assert load_job(path, run_url="s3://b/r3").run.url == "s3://b/r3"


def test_validate_prints_the_resolved_config(tmp_path, write_job):
    path = write_job(tmp_path, **copy.deepcopy(FULL))
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert "is valid" in result.stdout
    body = yaml.safe_load("\n".join(ln for ln in result.stdout.splitlines() if not ln.startswith("#")))
    job = load_job(path)
    assert body == job.public_dict()
    assert f"# config fingerprint: {job.fingerprint()}" in result.stdout
    assert "# stages: ingest" in result.stdout


# --- invalid jobs: every problem, with its field path, exit 2 -----------------------------------

def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\ninput:\n  prompts: p.txt\n   shard_rows: 2\nrun: {url: run}\n")
    proc = run_cli("validate", path)  # the real command: one message, no traceback
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "malformed YAML" in proc.stderr and "line 4" in proc.stderr
    assert proc.stdout == ""

    path.write_text("name: t\ninput: {prompts: [p.txt\nrun: {url: run}\n")  # unclosed bracket
    result = validate(path)
    assert result.exit_code == 2
    assert "malformed YAML: line " in result.stderr


def test_unknown_key_gives_its_field_path(tmp_path, write_job):
    path = write_job(tmp_path, input={"shard_rowz": 5})
    result = validate(path)
    assert result.exit_code == 2
    assert _problems(result) == ["input.shard_rowz: unknown key (not allowed here; check the spelling)"]
    assert str(path) in result.stderr

    nested = write_job(tmp_path, _file="nested.yaml", ray={"stages": {"ingest": {"pool_sise": 2}}}, colour="red")
    problems = _problems(validate(nested))
    assert any(p.startswith("ray.stages.ingest.pool_sise: unknown key") for p in problems), problems
    assert any(p.startswith("colour: unknown key") for p in problems), problems


def test_wrong_types_are_reported_with_the_value(tmp_path, write_job):
    path = write_job(tmp_path, input={"shard_rows": "many"}, llm={"temperature": "hot"},
                         ray={"executor": "slurm"}, diffusion={"size": 100})
    result = validate(path)
    assert result.exit_code == 2
    problems = _problems(result)
    assert len(problems) == 4, problems
    by_field = {p.split(":", 1)[0]: p for p in problems}
    assert set(by_field) == {"input.shard_rows", "llm.temperature", "ray.executor", "diffusion.size"}
    assert "'many'" in by_field["input.shard_rows"]
    assert "'hot'" in by_field["llm.temperature"]
    assert "'slurm'" in by_field["ray.executor"]
    assert "64" in by_field["diffusion.size"]  # multiple of 64


def test_missing_required_keys(tmp_path, write_job):
    path = write_job(tmp_path, name=None, run=None, input={"prompts": None})
    result = validate(path)
    assert result.exit_code == 2
    assert sorted(_problems(result)) == sorted([
        "name: required key is missing",
        "input.prompts: required key is missing",
        "run: required key is missing",
    ])


def test_multiple_problems_are_reported_together(tmp_path, write_job):
    path = write_job(tmp_path, input={"shard_rowz": 1, "samples": 0}, seed=-1, name="bad name!",
                         run={"url": None}, llm={"mode": "shout"})
    result = validate(path)
    assert result.exit_code == 2
    fields = sorted(p.split(":", 1)[0] for p in _problems(result))
    assert fields == sorted(["input.shard_rowz", "input.samples", "seed", "name", "run.url", "llm.mode"])
    with pytest.raises(JobFileError) as err:
        load_job(path)
    assert len(err.value.problems) == 6


def test_semantic_checks(tmp_path, write_job):
    path = write_job(tmp_path, stages=["ingest", "layoutz"])
    result = validate(path)
    assert result.exit_code == 2
    assert "unknown stage(s) ['layoutz']" in result.stderr
    path = write_job(tmp_path, input={"prompts": ["p.txt", "  "]})
    assert "input.prompts" in validate(path).stderr


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_job_file_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = validate(path)
    assert result.exit_code == 2
    assert _problems(result) == ["the job file must be a YAML mapping (key: value lines)"]


def test_missing_and_unreadable_job_files(tmp_path):
    result = validate(tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert _problems(result) == ["job file not found"]
    assert "nope.yaml" in result.stderr
    assert validate(tmp_path).exit_code == 2  # a folder is not a job file

    binary = tmp_path / "job.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00junk\n")
    result = validate(binary)
    assert result.exit_code == 2
    assert _problems(result) == ["not a UTF-8 text file"]


# --- fingerprint ------------------------------------------------------------------------------

BASE = {"name": "fp", "input": {"prompts": ["/data/prompts.jsonl"]}, "run": {"url": "/runs/fp"}}


def _fp(**changes) -> str:
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return Job.model_validate(doc).fingerprint()


@pytest.mark.parametrize("change", [
    {"name": "other-name"},
    {"run__url": "s3://elsewhere/run"},
    {"run__storage_options": {"endpoint_url": "http://127.0.0.1:1"}},
    {"run__cache_url": "/other/cache"},
    {"ray__executor": "local"},
    {"ray__address": "ray://head:10001"},
    {"ray__num_cpus": 64},
    {"ray__object_store_mb": 4096},
    {"ray__stages": {"ingest": {"num_cpus": 4, "num_gpus": 1, "pool_size": 8}}},
    {"input__storage_options": {"anon": True}},
    {"llm__url": "http://127.0.0.1:8000/v1"},
    {"llm__concurrency": 64},
    {"llm__timeout_s": 10},
    {"llm__retries": 0},
    {"diffusion__box_batch_size": 1},
])
def test_fingerprint_ignores_where_and_how_fast(change):
    assert _fp(**change) == _fp()


@pytest.mark.parametrize("change", [
    {"input__prompts": ["/data/other.jsonl"]},
    {"input__max_prompt_chars": 100},
    {"input__shard_rows": 7},
    {"input__samples": 3},
    {"input__format": "jsonl"},
    {"llm__model": "another-model"},
    {"llm__temperature": 0.0},
    {"llm__max_tokens": 100},
    {"llm__structured": False},
    {"diffusion__method": "gligen"},
    {"diffusion__steps": 10},
    {"diffusion__size": 256},
    {"seed": 1},
])
def test_fingerprint_changes_with_what_is_computed(change):
    assert _fp(**change) != _fp()


def test_fingerprint_is_stable_and_independent_of_key_order(tmp_path, write_job):
    a = write_job(tmp_path, _file="a.yaml", seed=3, llm={"temperature": 0.1, "max_tokens": 40})
    doc = yaml.safe_load(Path(a).read_text())
    reordered = {k: doc[k] for k in reversed(list(doc))}
    reordered["llm"] = {"max_tokens": 40, "temperature": 0.1}
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert load_job(a).fingerprint() == load_job(b).fingerprint()
    assert len(load_job(a).fingerprint()) == 64


@pytest.mark.parametrize("name", ["demo", "lmd-benchmark", "synthetic-dataset"])
def test_shipped_job_files_validate(name):
    """The job files README points users at must stay valid as the settings evolve."""
    job_file = Path(__file__).resolve().parents[1] / "jobs" / f"{name}.yaml"
    result = run_cli("validate", job_file)
    assert result.returncode == 0, result.stderr
    assert "# stages: ingest, layouts, box_latents, images" in result.stdout


def test_negative_prompt_mode_changes_the_fingerprint_and_the_box_key(tmp_path, write_job):
    """diffusion.negative_prompt changes every per-box run's negative prompt, so it must change
    the run's fingerprint and the box-latent cache key (a cached run with the other setting is
    not a hit)."""
    from lmd_batch.grounding.spec import layout_to_spec
    from lmd_batch.layout.lmd_text import parse_layout
    from lmd_batch.pipeline.box_latents import box_key_fields
    from lmd_batch.storage.latent_cache import box_key

    on = load_job(write_job(tmp_path, **copy.deepcopy(FULL)))
    off = on.model_copy(update={"diffusion": on.diffusion.model_copy(update={"negative_prompt": "llm"})})
    assert on.diffusion.negative_prompt == "lmd" and on.fingerprint() != off.fingerprint()
    spec = layout_to_spec(parse_layout("[('a red circle', [10, 10, 100, 100])]\nBackground prompt: a grey background"))
    ids = {"sd": "m", "gligen": "g", "dtype": "torch.float32"}
    keys = [box_key(box_key_fields(job, spec, 0, "p1", 0, ids, "lmd")) for job in (on, off)]
    assert keys[0] != keys[1]
    assert box_key_fields(off, spec, 0, "p1", 0, ids, "lmd")["negative"] == ""
