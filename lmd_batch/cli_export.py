"""`lmd-batch export coco|parquet RUN OUT`: a run's images, boxes and masks as a grounded dataset.

Registered on the main app by cli.py (`register(app)`); kept in its own module so `--help` and
the other commands never import the export code. The work is in lmd_batch/export/.
"""

from __future__ import annotations

from typing import Optional

import typer

from lmd_batch.errors import UserError

HELP = """Export a run's images with their layout boxes and masks as a grounded dataset.

Reads the images stage of a run folder (path or fsspec URL): only shards with a valid marker
count; missing or unmarked shards are named and left out. Every box becomes an object with its
caption as the category, its box in image pixels and its mask in image pixels (COCO RLE; the box
rectangle for the sd / gligen baselines, which have no masks). Images that cannot be read are left
out and listed in OUT/rejects.jsonl. With --min-score, only images whose detector verification
(evaluate stage, verify_score) reaches the score are kept.

OUT is a folder that must be empty or new (--overwrite replaces a previous export). A run with
no finished images shard is an error and writes nothing; finished shards that hold no image (or
filters that leave none) give a valid empty dataset.
"""

_RUN = typer.Argument(..., metavar="RUN", help="Run folder (path or fsspec URL, e.g. s3://bucket/run).", show_default=False)
_OUT = typer.Argument(..., metavar="OUT", help="Output folder (path or fsspec URL); created if missing.", show_default=False)
_METHOD = typer.Option(None, "--method", help="Only images of this method (lmd | lmd_plus | sd | gligen); "
                                              "default: every method the run drew.")
_MIN_SCORE = typer.Option(None, "--min-score",
                          help="Keep only images with verify_score >= this (0..1): the OWL-ViT detector found "
                               "every box of the layout with at least this score. Needs the evaluate stage.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace a previous export of the same format in OUT.")

export_app = typer.Typer(help=HELP, no_args_is_help=True)


@export_app.command("coco")
def coco(run: str = _RUN, out: str = _OUT, method: Optional[str] = _METHOD, min_score: Optional[float] = _MIN_SCORE,
         overwrite: bool = _OVERWRITE) -> None:
    r"""COCO instances: OUT/annotations.json (images, categories from the box captions, annotations with
    bbox \[x, y, w, h] in pixels, area, iscrowd 0, RLE segmentation) and the PNGs in OUT/images/.

    Load with pycocotools.coco.COCO("OUT/annotations.json"); image files are under OUT/images/.
    """
    from lmd_batch.export.coco import export_coco

    res = _export(export_coco, run, out, method, min_score, overwrite)
    typer.echo(f"wrote {res['out']}: {res['images']} images, {res['annotations']} annotations, "
               f"{res['categories']} categories; images in {res['images_dir']}/")


@export_app.command("parquet")
def parquet(run: str = _RUN, out: str = _OUT, method: Optional[str] = _METHOD,
            min_score: Optional[float] = _MIN_SCORE, overwrite: bool = _OVERWRITE) -> None:
    r"""Hugging Face datasets Parquet: OUT/data/train-NNNNN.parquet (image bytes, prompt, method, size,
    verify_score, objects with bbox / category / area / RLE mask) and a dataset card OUT/README.md.

    Load with datasets.load_dataset("OUT") (or "parquet", data_dir="OUT/data"); the image column
    decodes to PIL images; objects\["mask"] items go straight into pycocotools.mask.frPyObjects.
    """
    from lmd_batch.export.hf_parquet import export_parquet

    res = _export(export_parquet, run, out, method, min_score, overwrite)
    typer.echo(f"wrote {res['out']}/: {res['images']} images, {res['objects']} objects in "
               f"{len(res['files'])} file{'s' if len(res['files']) != 1 else ''}")


def _export(fn, run: str, out: str, method, min_score, overwrite) -> dict:
    """Select, report what is missing, export under a progress bar, report what was left out."""
    from pathlib import Path

    from lmd_batch.config import resolve_location
    from lmd_batch.export.output import check_outside
    from lmd_batch.export.source import select

    try:
        run_url, out_url = resolve_location(run, Path.cwd()), resolve_location(out, Path.cwd())
        check_outside(out_url, run_url)
        sel = select(run_url, method=method, min_score=min_score)
        _note_missing(sel)
        with _bar(sel.rows_marked) as tick:
            res = fn(sel, out_url, overwrite=overwrite, tick=tick)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code)
    _note_left_out(sel, res)
    return res


def _note_missing(sel) -> None:
    missing = sel.missing_images_shards
    if missing:
        shown = ", ".join(str(s) for s in missing[:10]) + (", ..." if len(missing) > 10 else "")
        typer.echo(f"note: {len(missing)} of {sel.shards_total} images shards are missing or unmarked and are "
                   f"left out (shards {shown}); exporting the {len(sel.images)} marked", err=True)


def _note_left_out(sel, res: dict) -> None:
    c = sel.counts
    if sel.method and c["other_method"]:
        typer.echo(f"note: {c['other_method']} images of other methods skipped (--method {sel.method})", err=True)
    if sel.min_score is not None:
        typer.echo(f"note: --min-score {sel.min_score}: {c['below_min_score']} images below it left out"
                   + (f", {c['not_evaluated']} without an evaluation (evaluate shard missing, or the image rejected there) left out"
                      if c["not_evaluated"] else ""), err=True)
    if sel.rejects:
        reasons: dict[str, int] = {}
        for r in sel.rejects:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        typer.echo(f"warning: {len(sel.rejects)} images could not be read and were left out ("
                   + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + f"); see {res['rejects']}", err=True)
    if c["exported"] == 0:
        why = "the run's marked images shards hold no images" if c["rows"] == 0 else "no image is left"
        hint = " (pyarrow reads it; datasets.load_dataset refuses an empty split)" if "files" in res else ""
        typer.echo(f"note: {why}; wrote an empty dataset{hint}", err=True)


class _bar:
    """A rich progress bar on stderr over the images rows (only on a terminal: logs get the summary lines);
    entering it gives the per-row tick function."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self.progress = Progress(TextColumn("export"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                                 TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)
        self.task = self.progress.add_task("export", total=total)

    def __enter__(self):
        self.progress.__enter__()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def register(app: typer.Typer) -> None:
    """Add the `export` group to a typer app (cli.py: `from lmd_batch.cli_export import register; register(app)`)."""
    app.add_typer(export_app, name="export", help=HELP)
