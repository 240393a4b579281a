"""The `lmd-batch` command line, run as the installed console script."""

from __future__ import annotations

import json

import pytest

from conftest import free_port, run_cli

SUBCOMMANDS = ["validate", "run", "status", "models"]


def test_help():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout
    assert "LLM-grounded Diffusion" in proc.stdout


@pytest.mark.parametrize("args, expect", [
    (["validate", "--help"], "Job file (YAML) to check"),
    (["run", "--help"], "--new-run"),
    (["status", "--help"], "--json"),
    (["models", "--help"], "prepare"),
    (["models", "list", "--help"], "built-in"),
    (["models", "prepare", "--help"], "--force"),
])
def test_subcommand_help(args, expect):
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and expect in proc.stdout
    assert proc.stderr == ""


def test_unknown_command_and_option():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "No such command" in proc.stderr
    proc = run_cli("run", "--no-such-option", "job.yaml")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


def test_run_then_status(tmp_path, write_job):
    (tmp_path / "prompts.txt").write_text("a cat\n\na dog\na bird\na fish\n")
    job = write_job(tmp_path, input={"shard_rows": 2})
    proc = run_cli("run", job, "--executor", "local", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "all shards done" in proc.stdout
    assert "3 of 3 shards were pending" in proc.stdout

    proc = run_cli("status", tmp_path / "run", "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["job"] == "test-job" and st["run"] == str(tmp_path / "run") and st["shards"] == 3
    ingest = st["stages"]["ingest"]
    assert ingest["done"] == ingest["total"] == 3
    assert (ingest["rows_in"], ingest["rows"], ingest["rejects"]) == (5, 4, 1)

    # relative run folder paths are resolved against the current folder
    proc = run_cli("status", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3/3" in proc.stdout and "ingest" in proc.stdout

    # a second run has nothing to do
    proc = run_cli("run", job, "--executor", "local", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0 of 3 shards were pending" in proc.stdout


def test_run_options_override_the_job(tmp_path, write_job):
    job = write_job(tmp_path)
    proc = run_cli("run", job, "--executor", "local", "--run", "other-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "other-run" / "run.json").is_file()
    assert not (tmp_path / "run").exists()

    proc = run_cli("run", job, "--executor", "slurm", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --executor must be 'ray' or 'local', not 'slurm'"


def test_run_refuses_changed_settings_until_new_run(tmp_path, write_job):
    job = write_job(tmp_path, input={"shard_rows": 2})
    assert run_cli("run", job, "--executor", "local", cwd=tmp_path).returncode == 0
    job = write_job(tmp_path, input={"shard_rows": 2}, seed=7)
    proc = run_cli("run", job, "--executor", "local", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "seed: 0 -> 7" in err and "--new-run" in err
    proc = run_cli("run", job, "--executor", "local", "--new-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--new-run: deleting the previous run" in proc.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["job"]["seed"] == 7


def test_run_with_an_invalid_job_file(tmp_path, write_job):
    job = write_job(tmp_path, input={"shard_rowz": 2})
    proc = run_cli("run", job, cwd=tmp_path)
    assert proc.returncode == 2
    assert "input.shard_rowz: unknown key" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_status_without_run_json(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "something.txt").write_text("x")
    for target in (tmp_path / "folder", tmp_path / "missing"):
        proc = run_cli("status", target)
        assert proc.returncode == 1
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert lines == [f"error: {target} is not an lmd-batch run folder (no run.json)"]
    proc = run_cli("status", tmp_path / "folder", "--json")
    assert proc.returncode == 1 and proc.stdout == ""


def test_run_with_run_folder_on_s3(tmp_path, moto_s3, write_job):
    import uuid

    url = f"{moto_s3['url']}/cli-{uuid.uuid4().hex[:8]}"
    job = write_job(tmp_path, run={"url": url, "storage_options": moto_s3["storage_options"]})
    # Where the buggy code falls back to the default S3 endpoint, keep it on a closed loopback port.
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    proc = run_cli("run", job, "--executor", "local", cwd=tmp_path, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0
    assert "all shards done" in proc.stdout
