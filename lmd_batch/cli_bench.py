"""`lmd-batch bench`: score LMD benchmark layouts without running diffusion.

Kept in its own module (registered by cli.py) so the benchmark tooling has no import-time
dependency on the pipeline or the heavy model stack: scoring a responses file needs only the
prompt generator, the layout parser and the predicates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

bench_app = typer.Typer(
    help="LMD benchmark tools: the 400-prompt LMD benchmark at layout level (stage 1) and on images.",
    no_args_is_help=True,
)


def _load_responses(path: Path) -> dict[str, list[str]]:
    """Read {prompt: [completion, ...]} (the shape of the published LMD caches)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read responses file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter("responses file must be a JSON object {prompt: [completions]}")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, str):  # tolerate single-completion caches
            value = [value]
        if not isinstance(value, list):
            raise typer.BadParameter(f"value for prompt {key!r} must be a list of completions")
        out[key] = value
    return out


@bench_app.command("layouts")
def layouts(
    responses: Optional[Path] = typer.Option(
        None, "--responses", exists=True, dir_okay=False, readable=True,
        help="JSON {prompt: [completion, ...]}; the k-th occurrence of a prompt takes the k-th "
             "completion. Unparseable or missing completions count as failures."),
    run: Optional[str] = typer.Option(
        None, "--run",
        help="Score the layouts a run produced (run folder path or URL) for the benchmark prompts "
             "(make its input with `lmd-batch bench prompts`). Rejected layouts count as failures."),
    as_json: bool = typer.Option(False, "--json", help="Print the accuracies as one JSON object."),
) -> None:
    """Layout-level accuracy (%) per category and overall, as in LMD's eval_stage_one."""
    if (run is None) == (responses is None):
        raise typer.BadParameter("give exactly one of --responses FILE or --run RUN")
    from lmd_batch.bench.predicates import evaluate_boxes, evaluate_responses  # lazy: keep `--help` fast

    if run is not None:
        from lmd_batch.bench.run_layouts import run_boxes_by_prompt
        from lmd_batch.errors import UserError

        try:
            boxes, counts = run_boxes_by_prompt(run)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        if counts["shards_done"] < counts["shards"]:
            typer.echo(f"warning: only {counts['shards_done']} of {counts['shards']} layouts shards are done; "
                       f"missing layouts count as failures", err=True)
        scores, title = evaluate_boxes(boxes), f"LMD layout accuracy: {run}"
    else:
        scores, title = evaluate_responses(_load_responses(responses)), f"LMD layout accuracy: {responses.name}"
    if as_json:
        typer.echo(json.dumps(scores))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("category")
    table.add_column("accuracy (%)", justify="right")
    for key, value in scores.items():
        table.add_row(key, f"{value:.1f}", style="bold" if key == "overall" else None)
    Console().print(table)


@bench_app.command("images")
def images(
    run: str = typer.Option(..., "--run", help="Run folder (path or URL) whose images to evaluate; with --suite "
                            "shapes, the benchmark run to create or resume."),
    suite: str = typer.Option("lmd", "--suite", help="'lmd': evaluate RUN's images (OWL-ViT, LMD's protocol). "
                              "'shapes': plan, run or resume the shapes benchmark in RUN (shapes-sd, every "
                              "method, the shapes detector), then score it."),
    layouts: str = typer.Option("llm", "--layouts", help="--suite shapes, new runs: 'llm' (stage 1 asks the "
                                "job's LLM) or 'oracle' (ground-truth layouts: stage-2 errors only)."),
    per_category: int = typer.Option(100, "--per-category", min=1, help="--suite shapes, new runs: prompts per "
                                     "category (4 categories)."),
    job_file: Optional[Path] = typer.Option(None, "--job", exists=True, dir_okay=False, help="--suite shapes, new "
                                            "runs: job file to start from (default jobs/shapes-benchmark.yaml)."),
    as_json: bool = typer.Option(False, "--json", help="Print {method: {category: %, overall, images}, "
                                 "'layouts': {...}, 'shards': {...}, 'missing': [...]} as one JSON object."),
    executor: Optional[str] = typer.Option(None, "--executor", help="'ray' or 'local' (default: the run's job)."),
    no_evaluate: bool = typer.Option(False, "--no-evaluate", help="Only print the table of what is already "
                                     "evaluated; run nothing."),
) -> None:
    """Image-level benchmark: one table of accuracy per method and category, with the run's
    layout-level accuracy as the upper-bound row.

    --suite lmd (default): runs the `evaluate` stage over every finished images shard of RUN
    (resumable like any stage; the detector and thresholds are the job's `evaluation` settings).
    --suite shapes: the shapes world's benchmark (4 x --per-category prompts: negation, numeracy
    1-5, three-object attribute binding, spatial) drawn by shapes-sd with every method on the same
    layouts and seeds and judged by the classical shapes detector; RUN is created (prompts and
    oracle layouts written to RUN.suite/) or resumed. Unfinished shards are listed, not guessed at.
    """
    from pathlib import Path as _Path

    from lmd_batch.config import resolve_location
    from lmd_batch.errors import UserError
    from lmd_batch.evaluate.summary import format_table, summarize_run
    from lmd_batch.storage.run_folder import RunFolder

    url = resolve_location(run, _Path.cwd())
    try:
        if suite not in ("lmd", "shapes"):
            raise UserError(f"--suite must be 'lmd' or 'shapes', not {suite!r}")
        if suite == "shapes" and not no_evaluate:
            _run_shapes(url, layouts, per_category, job_file, executor)
        elif not no_evaluate:
            _run_evaluate(url, executor)
        summary = summarize_run(RunFolder(url))
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    for line in summary["missing"]:
        typer.echo(f"warning: {line}; evaluated what is finished", err=True)
    if as_json:
        typer.echo(json.dumps(dict(summary["methods"], layouts=summary["layouts"], shards=summary["shards"],
                                   missing=summary["missing"], rejects=summary["rejects"])))
        return
    from rich.console import Console
    from rich.table import Table

    rows = format_table(summary)
    detector = "shapes detector" if suite == "shapes" else "OWL-ViT"
    table = Table(title=f"{'Shapes' if suite == 'shapes' else 'LMD'} image accuracy (%), {detector}: {url}")
    for i, col in enumerate(rows[0]):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in rows[1:]:
        table.add_row(*r, style="dim" if r[0].startswith("layouts") else None)
    console = Console()
    console.print(table)
    if not summary["methods"]:
        console.print("no benchmark images evaluated (make the run's input with `lmd-batch bench prompts`, "
                      "or use --suite shapes)")
    if summary["rejects"]:
        console.print(f"{summary['rejects']} images could not be evaluated (see {url}/evaluate/rejects/); "
                      f"they count as failures")
    if summary["other_images"]:
        console.print(f"{summary['other_images']} images of non-benchmark prompts: detector verification only")


def _run_shapes(url: str, layouts: str, per_category: int, job_file, executor: str | None) -> None:
    """Create or resume the shapes benchmark run at `url`, through every stage."""
    from lmd_batch.bench.shapes_run import plan_job, resume_job
    from lmd_batch.storage.run_folder import RunFolder

    info = RunFolder(url).read_run_info()
    if info is None:
        job = plan_job(url, layouts, per_category, job_file)
    else:
        job = resume_job(info, url)
        given = job.llm.given_layouts is not None
        if (layouts == "oracle") != given:
            typer.echo(f"note: {url} exists and was made with {'oracle' if given else 'llm'} layouts; resuming it "
                       f"as it is (--layouts, --per-category and --job apply to new runs)", err=True)
    _run(job, executor)


def _run_evaluate(url: str, executor: str | None) -> None:
    """Run the evaluate stage of the run's own job over its finished images shards."""
    from lmd_batch.bench.shapes_run import resume_job
    from lmd_batch.errors import RunFolderError
    from lmd_batch.storage.run_folder import RunFolder

    info = RunFolder(url).read_run_info()
    if info is None:
        raise RunFolderError(f"{url} is not an lmd-batch run folder (no run.json)")
    _run(resume_job(info, url, stages=["evaluate"]), executor)


def _run(job, executor: str | None) -> None:
    from lmd_batch.errors import UserError
    from lmd_batch.pipeline.runner import run_job

    if executor:
        if executor not in ("ray", "local"):
            raise UserError(f"--executor must be 'ray' or 'local', not {executor!r}")
        job.ray.executor = executor
    from lmd_batch.cli_progress import StageProgress

    with StageProgress() as bars:
        run_job(job, log=bars.log, progress=bars.update, on_start=bars.start)


@bench_app.command("prompts")
def prompts(
    out: Path = typer.Option(..., "--out", dir_okay=False, help="JSONL file to write (id, prompt, category)."),
) -> None:
    """Write the 400 LMD benchmark prompts as a prompt file for a job (ids lmd-000 ... lmd-399)."""
    from lmd_batch.bench.run_layouts import bench_prompt_rows

    rows = bench_prompt_rows()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    typer.echo(f"wrote {len(rows)} benchmark prompts to {out}")
