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
    help="LMD benchmark tools: score stage-1 layouts on the 400-prompt LMD benchmark.",
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
        help="Score the layouts stored in a run (not available yet: needs the layout stage)."),
    as_json: bool = typer.Option(False, "--json", help="Print the accuracies as one JSON object."),
) -> None:
    """Layout-level accuracy (%) per category and overall, as in LMD's eval_stage_one."""
    if run is not None:
        # One plain line (no rich panel) so scripts can grep it; exit code 2 like a usage error.
        typer.echo("Error: --run: not available yet: needs the layout stage", err=True)
        raise typer.Exit(code=2)
    if responses is None:
        raise typer.BadParameter("give --responses FILE", param_hint="--responses")

    from lmd_batch.bench.predicates import evaluate_responses  # lazy: keep `--help` fast

    scores = evaluate_responses(_load_responses(responses))
    if as_json:
        typer.echo(json.dumps(scores))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LMD layout accuracy: {responses.name}")
    table.add_column("category")
    table.add_column("accuracy (%)", justify="right")
    for key, value in scores.items():
        table.add_row(key, f"{value:.1f}", style="bold" if key == "overall" else None)
    Console().print(table)
