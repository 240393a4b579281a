"""The `lmd-batch` command line.

Every error a user can cause is printed as one line (job-file problems one per line) with a
non-zero exit code: 2 for an invalid job file, 1 for everything else. Heavy imports happen inside
the commands, so `--help` and `validate` start fast.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from lmd_batch.errors import JobFileError, UserError

app = typer.Typer(
    help="LLM-grounded Diffusion (LMD / LMD+) as a resumable batch pipeline.\n\n"
    "A job file (YAML) names the prompts, the run folder (any fsspec URL) and the settings; "
    "`lmd-batch run JOB` runs it stage by stage and resumes from the last finished shard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Built-in models: build them into the local cache and list them.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _register_bench() -> None:
    from lmd_batch.cli_bench import bench_app

    app.add_typer(bench_app, name="bench", help="Benchmarks: LMD accuracy of layouts (stage 1) and of images (OWL-ViT).")


_register_bench()


def _register_generate() -> None:
    from lmd_batch.cli_generate import register

    register(app)


_register_generate()


def _register_shapes() -> None:
    from lmd_batch.cli_shapes import register

    register(app)


_register_shapes()


def _register_report_and_export() -> None:
    from lmd_batch.cli_export import register as register_export
    from lmd_batch.cli_report import register as register_report

    register_report(app)
    register_export(app)


_register_report_and_export()


def _fail(exc: UserError) -> None:
    if isinstance(exc, JobFileError):
        typer.echo(f"error: {exc.path} is not a valid job file:", err=True)
        for p in exc.problems:
            typer.echo(f"  {p}", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def validate(job_file: str = typer.Argument(..., help="Job file (YAML) to check.")):
    """Check a job file; print every problem with its field path (exit 2) or the resolved config."""
    import yaml

    from lmd_batch.config import load_job

    try:
        job = load_job(job_file)
    except UserError as exc:
        _fail(exc)
    typer.echo(f"# {job_file} is valid; resolved config (defaults filled in, paths absolute):")
    typer.echo(yaml.safe_dump(job.public_dict(), sort_keys=False, allow_unicode=True).rstrip())
    typer.echo(f"# stages: {', '.join(job.selected_stages())}")
    typer.echo(f"# config fingerprint: {job.fingerprint()}")


@app.command()
def run(
    job_file: str = typer.Argument(..., help="Job file (YAML)."),
    run_url: Optional[str] = typer.Option(None, "--run", help="Run folder URL or path; overrides run.url of the job."),
    new_run: bool = typer.Option(False, "--new-run", help="Delete the existing run folder and start over."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="Join this Ray cluster instead of starting a local one."),
    executor: Optional[str] = typer.Option(None, "--executor",
                                           help="'ray' (default) or 'local' (in-process, one shard at a time)."),
):
    """Run a job, or resume it from its run folder (finished shards are not redone)."""
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    try:
        job = load_job(job_file, run_url=run_url)
        if ray_address:
            job.ray.address = ray_address
        if executor:
            if executor not in ("ray", "local"):
                raise UserError(f"--executor must be 'ray' or 'local', not {executor!r}")
            job.ray.executor = executor
        from lmd_batch.cli_progress import StageProgress

        with StageProgress() as bars:
            result = run_job(job, new_run=new_run, log=bars.log, progress=bars.update, on_start=bars.start)
        _print_summary(result, job.run.storage_options)
    except UserError as exc:
        _fail(exc)


def _print_summary(result: dict, storage_options: dict) -> None:
    from lmd_batch.cli_progress import status_table
    from lmd_batch.pipeline.status import run_status
    from lmd_batch.storage.run_folder import RunFolder

    from rich.console import Console

    console = Console()
    st = run_status(RunFolder(result["run"], storage_options))
    console.print(status_table(st))
    _print_counters(console, st)
    for name, svc in (result.get("services") or {}).items():
        if svc.get("started"):
            console.print(f"{name}: {svc['kind']} server started in {svc['startup_s']:.1f} s and stopped")
    if "images" in st["stages"] and st["stages"]["images"]["rows"]:
        console.print(f"images: {result['run'].rstrip('/')}/images/png/  (one row per image in "
                      f"{result['run'].rstrip('/')}/images/data/)")
    if "evaluate" in st["stages"] and st["stages"]["evaluate"]["rows"]:
        console.print(f"evaluation: lmd-batch bench images --run {result['run']} --no-evaluate   "
                      f"(report: lmd-batch report {result['run']} --out report.html)")
    done = "all shards done" if all(s["done"] == s["total"] for s in st["stages"].values()) else "INCOMPLETE"
    console.print(f"run folder: {result['run']}  ({done}; {result['pending']} of {result['shards']} shards "
                  f"were pending; wall time {result['seconds']:.1f} s)")


@app.command()
def edit(
    run_url: str = typer.Option(..., "--run", help="Run folder (path or URL) whose layouts to revise."),
    instructions: str = typer.Option(
        ..., "--instructions",
        help="JSONL, CSV or Parquet rows: 'layout_id' (or 'prompt_id' [+ 'sample']) and 'instruction', "
             "e.g. {\"prompt_id\": \"p000000003\", \"instruction\": \"move the dog to the left\"}."),
):
    """Revise finished layouts with instructions (one round of multi-round editing).

    The LLM sees each layout's conversation so far plus the instruction; revised layouts go to
    RUN/edits/data/shard-<round>.parquet, linked to their parents (parent_layout_id, edit_round).
    """
    from pathlib import Path

    from lmd_batch.config import resolve_location
    from lmd_batch.layout.edit import run_edit

    try:
        res = run_edit(resolve_location(run_url, Path.cwd()), instructions, log=lambda m: typer.echo(m, err=True))
    except UserError as exc:
        _fail(exc)
    typer.echo(f"edit round {res['round']}: {res['rows']} revised layouts, {res['rejects']} rejects "
               f"({res['llm_requests']} LLM requests, {res['cache_hits']} cache hits) -> {res['data']}")


@app.command()
def status(
    run_url: str = typer.Argument(..., help="Run folder URL or path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Per-stage done/total shards, rows and reject counts of a run folder."""
    from lmd_batch.cli_progress import status_table
    from lmd_batch.config import resolve_location
    from lmd_batch.pipeline.status import run_status
    from lmd_batch.storage.run_folder import RunFolder
    from pathlib import Path

    try:
        st = run_status(RunFolder(resolve_location(run_url, Path.cwd())))
    except UserError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(st, indent=1))
        return
    from rich.console import Console

    console = Console()
    console.print(status_table(st))
    _print_counters(console, st)


def _print_counters(console, st: dict) -> None:
    """One line per stage with its own counters, e.g. 'layouts: cache hits 0, llm requests 32, ...'."""
    for name, s in st["stages"].items():
        if s.get("counters"):
            console.print(f"{name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s["counters"].items()))


@models_app.command("list")
def models_list():
    """Show the built-in models, what they are, and whether they are prepared (and where)."""
    from lmd_batch.models.registry import BUILTINS, builtin_dir, is_prepared

    for name, spec in BUILTINS.items():
        state = "prepared" if is_prepared(name) else "not prepared"
        typer.echo(f"{name:14s} {state:13s} {builtin_dir(name)}\n{'':14s} {spec.description}")


@models_app.command("prepare")
def models_prepare(
    names: Optional[list[str]] = typer.Argument(None, help="Built-in names (default: all)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when already prepared."),
):
    """Build the built-in models into the model cache (idempotent: prepared ones are kept)."""
    from lmd_batch.models.registry import BUILTINS, prepare

    try:
        for name in names or list(BUILTINS):
            path, built = prepare(name, force=force)
            typer.echo(f"{name}: {'built' if built else 'already prepared'} at {path}")
    except UserError as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
