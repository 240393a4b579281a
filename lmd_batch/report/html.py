"""The report as one self-contained HTML string: inline CSS, images as data: URIs, no script.

Everything that comes from users or models (prompts, captions, labels, ids, reject details, the
run URL) goes through `esc` (html.escape, quotes included), in text and in attributes alike.
Stable hooks for tests and for readers who script against the file: `table#stages`,
`table#accuracy`, `section.grid[data-category=...]` with `figure.cell` items (`data-passed`),
`section#rejects`.
"""

from __future__ import annotations

import html
import time

from lmd_batch.report.collect import OTHER, reason_counts

CATEGORY_TITLES = {"negation": "Negation", "numeracy": "Numeracy", "attribution": "Attribute binding",
                   "spatial": "Spatial relations", OTHER: "Other prompts"}
CATEGORY_ORDER = ("negation", "numeracy", "attribution", "spatial", OTHER)
METHOD_ORDER = ("lmd", "lmd_plus", "gligen", "sd")
MAX_REJECT_ROWS = 200  # per stage; the reason counts above each table are always complete

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:0 24px 48px;color:#222;background:#fff}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}code{font-size:12px;background:#f3f3f3;padding:0 3px;border-radius:3px}
nav a{margin-right:12px}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}tr.upper-bound td{font-style:italic;
background:#f4f8ff}tr.incomplete td{color:#a00}td.counters,td.detail{text-align:left;font-size:12px}
.cells{display:grid;grid-template-columns:repeat(auto-fill,minmax(345px,1fr));gap:10px}
figure.cell{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
figure.fail{border-color:#d33;background:#fff5f5}figure.pass{border-color:#3a3}figure.broken{border-style:dashed}
.pics{display:flex;gap:4px}.pics img{display:block;border:1px solid #ccc;image-rendering:auto}
.nodet,.placeholder{display:flex;align-items:center;justify-content:center;text-align:center;width:160px;
min-height:120px;border:1px dashed #bbb;color:#777;font-size:12px;padding:4px;box-sizing:border-box}
.placeholder{width:100%;color:#a00}.badge{display:inline-block;padding:0 6px;border-radius:3px;font-weight:600;
font-size:12px;color:#fff;background:#888}.badge.pass{background:#2a2}.badge.fail{background:#c22}
.method{font-weight:600;margin:0 4px}figcaption{font-size:12px;margin-top:4px}.prompt{margin:3px 0;
font-size:13px;word-break:break-word}ul.legend{list-style:none;margin:2px 0;padding:0}ul.legend li{margin:1px 0;
word-break:break-word}.sw{display:inline-block;width:10px;height:10px;margin-right:4px;border:1px solid #0003;
vertical-align:-1px}.muted{color:#777}.warn{color:#a60}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return esc(v)


def render(data: dict, groups: dict[str, list[dict]], totals: dict[str, int], thumbs: dict[int, dict],
           max_per_category: int) -> str:
    """The whole document. `groups`: category -> shown items (failures first); `totals`: category ->
    number of items before the cap; `thumbs`: id(item) -> thumbnails() or placeholder() dict."""
    st = data["status"]
    from lmd_batch import __version__

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>lmd-batch report: {esc(st['job'])}</title><style>{CSS}</style></head><body>",
        f"<header><h1>lmd-batch report: {esc(st['job'])}</h1>",
        f'<p>run folder <code id="run-url">{esc(st["run"])}</code> &middot; {st["shards"]} shards &middot; '
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by lmd-batch {esc(__version__)}</p>",
        _nav(groups), "</header>",
        _summary(data),
        _accuracy(data),
        _grids(data, groups, totals, thumbs, max_per_category),
        _rejects(data),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _nav(groups: dict) -> str:
    links = ['<a href="#summary">Stages</a>', '<a href="#accuracy-section">Accuracy</a>']
    links += [f'<a href="#grid-{c}">{CATEGORY_TITLES.get(c, esc(c))}</a>' for c in groups]
    links.append('<a href="#rejects">Rejects</a>')
    return "<nav>" + "".join(links) + "</nav>"


def _summary(data: dict) -> str:
    st = data["status"]
    rows = []
    for name, s in st["stages"].items():
        per_row = f"{1000 * s['seconds'] / s['rows']:.0f}" if s["rows"] else "&ndash;"
        counters = ", ".join(f"{esc(k.replace('_', ' '))} {v}" for k, v in (s.get("counters") or {}).items())
        cls = ' class="incomplete"' if s["done"] < s["total"] else ""
        rows.append(f'<tr{cls} data-stage="{esc(name)}"><td>{esc(name)}</td><td>{s["done"]}/{s["total"]}</td>'
                    f'<td>{s["rows_in"]}</td><td>{s["rows"]}</td><td>{s["rejects"]}</td><td>{s["seconds"]:.1f}</td>'
                    f'<td>{per_row}</td><td class="counters">{counters}</td></tr>')
    out = ['<section id="summary"><h2>Stages</h2>',
           '<table id="stages"><thead><tr><th>stage</th><th>shards done</th><th>rows in</th><th>rows out</th>'
           '<th>rejects</th><th>compute s</th><th>ms / row</th><th style="text-align:left">counters (cache, LLM, UNet)</th></tr></thead>'
           "<tbody>" + "".join(rows) + "</tbody></table>",
           '<p class="muted">Compute seconds are summed over finished shards (workers run in parallel, so they '
           "exceed wall time); only shards with a valid marker count.</p>"]
    incomplete = [n for n, s in st["stages"].items() if s["done"] < s["total"]]
    if incomplete:
        out.append(f'<p class="note">Incomplete stages: {esc(", ".join(incomplete))}. The report shows what is '
                   "finished.</p>")
    for p in data["problems"]:
        out.append(f'<p class="note warn">Skipped: {esc(p)}</p>')
    out.append("</section>")
    return "\n".join(out)


def _accuracy(data: dict) -> str:
    head = '<section id="accuracy-section"><h2>Accuracy (benchmark prompts)</h2>'
    if not data["evaluated"]:
        return head + ('<p class="note" id="accuracy-note">This run was not evaluated (no finished evaluate '
                       "shards): the grids show images without pass/fail. Add the evaluate stage to the job "
                       "and resume the run to score it.</p></section>")
    acc = data["accuracy"] or {}
    if acc.get("error"):
        return head + f'<p class="note" id="accuracy-note">{esc(acc["error"])}</p></section>'
    from lmd_batch.bench.lmd_prompts import CATEGORIES

    cols = list(CATEGORIES) + ["overall"]
    rows = []
    methods = acc.get("methods") or {}
    for m in sorted(methods, key=lambda k: (METHOD_ORDER.index(k) if k in METHOD_ORDER else 99, k)):
        v = methods[m]
        rows.append(f'<tr data-method="{esc(m)}"><td>{esc(m)}</td>' + "".join(f"<td>{_fmt(v.get(c))}</td>" for c in cols)
                    + f"<td>{_fmt(v.get('images'))}</td></tr>")
    if acc.get("layouts"):
        v = acc["layouts"]
        rows.append('<tr class="upper-bound" data-method="layouts"><td>layouts (upper bound)</td>'
                    + "".join(f"<td>{_fmt(v.get(c))}</td>" for c in cols) + f"<td>{_fmt(v.get('images'))}</td></tr>")
    if not rows:
        rows.append(f'<tr><td colspan="{len(cols) + 2}">no benchmark prompts among the evaluated images</td></tr>')
    out = [head, '<table id="accuracy"><thead><tr><th>method</th>'
           + "".join(f"<th>{esc(c)}</th>" for c in cols) + "<th>images</th></tr></thead><tbody>"
           + "".join(rows) + "</tbody></table>",
           '<p class="muted">Accuracy in % of images passing LMD\'s image-level predicates (OWL-ViT detections, '
           "or the shapes detector for the shapes suite); the layouts row scores the LLM's layouts themselves, the most an image method can reach.</p>"]
    shards = acc.get("shards") or {}
    if shards:
        out.append(f'<p class="muted">Shards evaluated: {_fmt(shards.get("evaluated"))} of {_fmt(shards.get("total"))}'
                   f' ({_fmt(shards.get("images"))} with images); images the evaluate stage rejected (they did not '
                   f'decode): {_fmt(acc.get("rejects", 0))}, counted as failures; images of other prompts: '
                   f'{_fmt(acc.get("other_images", 0))}.</p>')
    for line in acc.get("missing") or []:
        out.append(f'<p class="note missing">Missing: {esc(line)}</p>')
    out.append("</section>")
    return "\n".join(out)


def _grids(data: dict, groups: dict, totals: dict, thumbs: dict, cap: int) -> str:
    out = ['<section id="grids">']
    if not data["has_images"]:
        out.append('<p class="note" id="empty">This run has no images stage: nothing to show.</p>')
    elif not groups:
        out.append('<p class="note" id="empty">This run has no images yet (no finished images shards, or every '
                   "layout was rejected).</p>")
    for cat, items in groups.items():
        title = CATEGORY_TITLES.get(cat, cat)
        n = totals[cat]
        fails = sum(1 for it in items if it["passed"] is False)
        shown = (f"showing {len(items)} of {n} images (--max-per-category {cap}, failures first), {fails} of them "
                 "failed" if n > len(items) else f"{n} images, {fails} failed")
        out.append(f'<section class="grid" id="grid-{esc(cat)}" data-category="{esc(cat)}"><h2>{esc(title)}</h2>'
                   f'<p class="muted">{shown}. Left: layout boxes and masks over the image; right: detector boxes.'
                   '</p><div class="cells">')
        out.extend(_cell(it, thumbs[id(it)]) for it in items)
        out.append("</div></section>")
    out.append("</section>")
    return "\n".join(out)


def _cell(item: dict, th: dict) -> str:
    img, ev = item["image"], item["evaluation"]
    passed = item["passed"]
    if th.get("error"):
        state = "broken"
    else:
        state = "fail" if passed is False else ("pass" if passed is True else "na")
    attrs = (f'class="cell {state}" data-passed="{"none" if passed is None else str(passed).lower()}" '
             f'data-method="{esc(img["method"])}" data-layout-id="{esc(img["layout_id"])}"')
    if passed is True:
        badge = '<span class="badge pass">PASS</span>'
    elif passed is False:
        badge = '<span class="badge fail">FAIL</span>'
    elif ev is not None:
        badge = '<span class="badge">not a benchmark prompt</span>'
    else:
        badge = '<span class="badge">not evaluated</span>'
    if th.get("error"):
        pics = f'<div class="placeholder">cannot show the image: {esc(th["error"])}</div>'
    else:
        w, h = th["size"]
        pics = (f'<img class="layout" src="{th["layout"]}" width="{w}" height="{h}" '
                f'alt="layout boxes and masks over the image">')
        if th.get("detections"):
            pics += (f'<img class="det" src="{th["detections"]}" width="{w}" height="{h}" '
                     f'alt="detector boxes over the image">')
        else:
            why = item["eval_reject"] or "not evaluated"
            pics += f'<div class="nodet">{esc(why)}</div>'
    scores = (ev or {}).get("box_scores") or []
    legend = []
    for i, b in enumerate(img.get("boxes") or []):
        c = th["box_colours"][i] if i < len(th.get("box_colours") or []) else "#999"
        score = f' <span class="muted">det {scores[i]:.2f}</span>' if i < len(scores) else ""
        legend.append(f'<li><i class="sw" style="background:{c}"></i>{esc(b["caption"])}{score}</li>')
    dets = _det_legend(th.get("dets") or [])
    det_title = {"protocol": "benchmark detections", "boxes": "detections of the box captions"}.get(th.get("det_kind"))
    parts = [f"<figure {attrs}><div class=\"pics\">{pics}</div><figcaption>",
             f'<div>{badge}<span class="method">{esc(img["method"])}</span><code>{esc(img["layout_id"])}</code></div>',
             f'<p class="prompt">{esc(img["prompt"])}</p>']
    if legend:
        parts.append('<ul class="legend boxes">' + "".join(legend) + "</ul>")
    elif not th.get("error"):
        parts.append(f'<p class="muted">no boxes; background: {esc(img.get("background"))}</p>')
    if det_title:
        parts.append(f'<p class="muted">{det_title}: {len(th.get("dets") or [])}</p>'
                     + ('<ul class="legend dets">' + "".join(dets) + "</ul>" if dets else ""))
    if item["verify_score"] is not None:
        parts.append(f'<p class="muted">detector confirms the layout: {item["verify_score"]:.2f}</p>')
    for note in list(img.get("warnings") or []) + list(th.get("notes") or []):
        parts.append(f'<p class="warn">{esc(note)}</p>')
    parts.append("</figcaption></figure>")
    return "".join(parts)


def _det_legend(dets: list[tuple[str, float, str]], scores_shown: int = 4) -> list[str]:
    """One line per detected label (a noisy image can give dozens of boxes of one label):
    'a cat x12: 0.89 0.83 0.60 0.58 ...', best scores first."""
    by_label: dict[str, list] = {}
    for label, score, c in dets:
        by_label.setdefault(label, [c, []])[1].append(score)
    out = []
    for label, (c, scores) in by_label.items():
        scores = sorted(scores, reverse=True)
        shown = " ".join(f"{v:.2f}" for v in scores[:scores_shown]) + (" ..." if len(scores) > scores_shown else "")
        count = f" &times;{len(scores)}" if len(scores) > 1 else ""
        out.append(f'<li><i class="sw" style="border:2px solid {c}"></i>{esc(label)}{count}: {shown}</li>')
    return out


def _rejects(data: dict) -> str:
    out = ['<section id="rejects"><h2>Rejects</h2>']
    total = sum(len(r) for r in data["rejects"].values())
    if not total:
        out.append('<p class="muted">No rejected rows in finished shards.</p>')
    for stage, rows in data["rejects"].items():
        if not rows:
            continue
        counts = "".join(f"<tr><td>{esc(reason)}</td><td>{n}</td></tr>" for reason, n in reason_counts(rows))
        out.append(f'<h3>{esc(stage)} ({len(rows)})</h3><table class="reasons" data-stage="{esc(stage)}">'
                   f"<thead><tr><th>reason</th><th>rows</th></tr></thead><tbody>{counts}</tbody></table>")
        body = []
        for r in rows[:MAX_REJECT_ROWS]:
            rid = r.get("layout_id") or r.get("prompt_id") or ""
            extra = r.get("method")
            detail = str(r.get("detail") or "")
            if len(detail) > 300:
                detail = detail[:300] + " ..."
            what = r.get("prompt") or r.get("preview") or r.get("image_path") or ""
            what = f'<br><span class="muted">{esc(str(what)[:200])}</span>' if what else ""
            body.append(f"<tr><td>{r['shard']}</td><td><code>{esc(rid)}</code>{' ' + esc(extra) if extra else ''}"
                        f'</td><td>{esc(r.get("reason"))}</td><td class="detail">{esc(detail)}{what}</td></tr>')
        more = (f'<p class="muted">showing the first {MAX_REJECT_ROWS} of {len(rows)}</p>'
                if len(rows) > MAX_REJECT_ROWS else "")
        out.append(f'<table class="rejects" data-stage="{esc(stage)}"><thead><tr><th>shard</th><th>row</th>'
                   f"<th>reason</th><th>detail</th></tr></thead><tbody>{''.join(body)}</tbody></table>{more}")
    out.append("</section>")
    return "\n".join(out)
