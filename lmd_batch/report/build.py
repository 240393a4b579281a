"""Build the report: read the run folder, pick the images to show, make thumbnails, write the HTML.

Per category (the evaluate stage's, or "other" for prompts outside the LMD benchmark) the images
are ordered failures first and capped at `max_per_category`, so a 400-prompt x 4-method run gives
a report of a few MB. Thumbnails are made in a small thread pool: on object stores the time goes
into reading PNGs, and PIL's decode/encode release the GIL.
"""

from __future__ import annotations

from pathlib import Path

from lmd_batch.errors import UserError


def build_report(run_url: str, out: str | Path, storage_options: dict | None = None, max_per_category: int = 100,
                 thumb_px: int = 160, workers: int = 4, show_progress: bool = False) -> dict:
    """Write the report of `run_url` to `out`; returns {'path', 'bytes', 'images', 'shown', 'broken',
    'categories', 'evaluated'}."""
    from lmd_batch.report.collect import collect
    from lmd_batch.report.html import render
    from lmd_batch.storage.run_folder import RunFolder

    if max_per_category < 1:
        raise UserError("--max-per-category must be at least 1")
    if not 32 <= thumb_px <= 1024:
        raise UserError("--thumb-size must be between 32 and 1024 pixels")
    run = RunFolder(run_url, storage_options or {})
    data = collect(run)

    groups, totals = arrange(data["items"], max_per_category)
    shown = [it for items in groups.values() for it in items]
    thumbs = _thumbnails(run, shown, thumb_px, workers, show_progress)

    text = render(data, groups, totals, thumbs, max_per_category)
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    return dict(path=str(path), bytes=len(text.encode("utf-8")), images=len(data["items"]), shown=len(shown),
                broken=sum(1 for t in thumbs.values() if t.get("error")), categories=totals,
                evaluated=data["evaluated"])


def arrange(items: list[dict], cap: int) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """({category: the items shown, failures first, at most `cap`}, {category: items before the cap}),
    categories in benchmark order, then "other"."""
    from lmd_batch.report.collect import sort_key
    from lmd_batch.report.html import CATEGORY_ORDER

    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(it["category"], []).append(it)
    order = sorted(by_cat, key=lambda c: (CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else 99, c))
    return {c: sorted(by_cat[c], key=sort_key)[:cap] for c in order}, {c: len(by_cat[c]) for c in order}


def _thumbnails(run, items: list[dict], px: int, workers: int, show_progress: bool) -> dict[int, dict]:
    """id(item) -> thumbnails dict, or a placeholder with the reason the image cannot be shown."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: dict) -> dict:
        from lmd_batch.report.thumbs import ThumbError, placeholder, thumbnails

        rel = item["image"]["image_path"]
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            return placeholder(f"image path {rel!r} is not inside the run folder")
        try:
            return thumbnails(run.loc.read_bytes_or_none(rel), item["image"], item["evaluation"], px)
        except ThumbError as exc:
            return placeholder(str(exc))
        except UserError as exc:  # storage failure reading the PNG
            return placeholder(str(exc))

    out: dict[int, dict] = {}
    with _progress(show_progress, len(items)) as advance, ThreadPoolExecutor(max(1, workers)) as pool:
        for item, th in zip(items, pool.map(one, items)):
            out[id(item)] = th
            advance()
    return out


class _progress:
    """A rich progress bar on stderr while thumbnails are made (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled and total > 0, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("thumbnails"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("thumbnails", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.bar is not None:
            return self.bar.__exit__(*exc)
        return False
