"""The HTML report of a run folder (`lmd-batch report RUN --out report.html`).

    collect.py   what to show, read from the run folder (valid shards only), as plain dicts
    thumbs.py    small JPEG thumbnails with the layout (boxes, masks) and the detector boxes drawn
    html.py      the self-contained HTML document (inline CSS, data: URIs, everything escaped)
    build.py     the whole thing: collect, order failures first, cap, thumbnails, write
"""

from __future__ import annotations


def build_report(*args, **kwargs) -> dict:
    """See lmd_batch.report.build.build_report (imported lazily: PIL and pyarrow load only here)."""
    from lmd_batch.report.build import build_report as _build

    return _build(*args, **kwargs)
