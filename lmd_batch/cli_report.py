"""`lmd-batch report RUN --out report.html`: one self-contained HTML page about a run.

Registered on the main app by cli.py (`register(app)`); its own module so `--help` and the other
commands never import PIL or pyarrow.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmd_batch.errors import UserError

HELP = """Write an HTML report of a run folder: one self-contained file (inline CSS, thumbnails
as data: URIs, no network), to open anywhere or attach to a ticket.

It shows the stages (shards done, rows, rejects, compute time, cache and LLM counters), the
accuracy table of the evaluate stage (per method and LMD category, with the layout-level upper
bound), per-category image grids (failures first; each image with its layout boxes and masks
drawn over it and the detector's boxes beside it), and every stage's rejects with their reasons.
Only shards with a valid marker count. A run without the evaluate stage gets grids without
pass/fail.
"""


def report(
    run_url: str = typer.Argument(..., metavar="RUN", help="Run folder (path or fsspec URL)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", dir_okay=False, help="HTML file to write."),
    max_per_category: int = typer.Option(100, "--max-per-category",
                                         help="Images shown per category grid (failures first; the rest are "
                                              "counted, not shown)."),
    thumb_size: int = typer.Option(160, "--thumb-size", help="Thumbnail size in pixels (long side)."),
    workers: int = typer.Option(4, "--workers", help="Threads reading images and making thumbnails."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    from lmd_batch.config import resolve_location
    from lmd_batch.report import build_report

    try:
        res = build_report(resolve_location(run_url, Path.cwd()), out, max_per_category=max_per_category,
                           thumb_px=thumb_size, workers=workers, show_progress=not quiet)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code)
    broken = f", {res['broken']} could not be shown" if res["broken"] else ""
    note = "" if res["evaluated"] else "; the run is not evaluated"
    typer.echo(f"wrote {res['path']} ({res['bytes'] / 1e6:.1f} MB): {res['shown']} of {res['images']} images "
               f"in {len(res['categories'])} grids{broken}{note}")


def register(app: typer.Typer) -> None:
    """Add `report` to a typer app (cli.py: `from lmd_batch.cli_report import register; register(app)`)."""
    app.command("report", help=HELP, short_help="Write a self-contained HTML report of a run: accuracy, image grids, rejects.",
                no_args_is_help=True)(report)
