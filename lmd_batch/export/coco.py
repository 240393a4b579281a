"""COCO instances export: the run's images with their layout boxes and per-box masks.

    OUT/annotations.json      COCO instances: info, images, categories, annotations
    OUT/images/<file_name>    the run's PNGs, byte for byte (file_name as in annotations.json)
    OUT/rejects.jsonl         images left out because they could not be read (see output.py)

Load it with `pycocotools.coco.COCO("OUT/annotations.json")`, images from `OUT/images/`.

- categories: one per distinct box caption ("a red ball"), ids 1..N in sorted caption order;
- images: id, file_name, width, height, plus layout_id, prompt_id, sample, method, prompt and,
  when the run was evaluated, verify_score (the detector's confirmation of the whole layout);
- annotations: bbox [x, y, w, h] in image pixels (the layout box scaled from the 512 canvas),
  segmentation as COCO uncompressed RLE in image pixels (the image stage's latent mask upscaled,
  nearest; for baseline images without masks, sd and gligen, the box rectangle), area = pixels of
  that segmentation, iscrowd 0, mask_source ("mask" | "box") and, when evaluated, score (the
  detector's score for that box).

Ids follow the run's (shard, row) order, so the same run gives the same file.
"""

from __future__ import annotations

import json

from lmd_batch.export.output import open_output, put_file, spool_dir, write_rejects
from lmd_batch.export.source import iter_images

ANNOTATIONS = "annotations.json"
IMAGES = "images"
ENTRIES = (ANNOTATIONS, IMAGES, "rejects.jsonl")


def export_coco(sel, out_url: str, overwrite: bool = False, tick=lambda: None) -> dict:
    """Write the COCO folder for a Selection (source.select); returns a summary dict.

    Images and annotations are spooled to JSON-lines files as they come and annotations.json is
    assembled from them at the end (category ids are known only then), so memory stays flat however
    many images the run has; annotations.json appears whole, last.
    """
    import os

    out = open_output(out_url, ENTRIES, overwrite)
    captions: set[str] = set()
    n_images = n_anns = 0
    with spool_dir(out) as tmp:
        images_spool, anns_spool = os.path.join(tmp, "images.jsonl"), os.path.join(tmp, "annotations.jsonl")
        with open(images_spool, "w", encoding="utf-8") as fi, open(anns_spool, "w", encoding="utf-8") as fa:
            for item in iter_images(sel, tick):
                out.write_bytes(f"{IMAGES}/{item.file_name}", item.png)
                n_images += 1
                fi.write(_dumps(_image(n_images, item)) + "\n")
                for obj in item.objects:
                    n_anns += 1
                    captions.add(obj.caption)
                    fa.write(_dumps(_annotation(n_anns, n_images, obj)) + "\n")
        ids = {name: i for i, name in enumerate(sorted(captions), start=1)}
        final = os.path.join(tmp, ANNOTATIONS)
        _assemble(final, images_spool, anns_spool, ids, _info(sel))
        put_file(out, final, ANNOTATIONS)
    write_rejects(out, sel.rejects)
    return dict(out=out.display(ANNOTATIONS), images=n_images, annotations=n_anns, categories=len(ids),
                images_dir=out.display(IMAGES), rejects=out.display("rejects.jsonl"))


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _info(sel) -> dict:
    return dict(description=f"lmd-batch grounded dataset from run {sel.run.url}", job=sel.info["job"].get("name"),
                config_fingerprint=sel.info.get("fingerprint"), method=sel.method, min_score=sel.min_score)


def _image(image_id: int, item) -> dict:
    r = item.row
    image = dict(id=image_id, file_name=item.file_name, width=int(r["width"]), height=int(r["height"]),
                 layout_id=r["layout_id"], prompt_id=r["prompt_id"], sample=int(r["sample"]), method=r["method"],
                 prompt=r["prompt"])
    if item.verify_score is not None:
        image["verify_score"] = item.verify_score
    return image


def _annotation(ann_id: int, image_id: int, obj) -> dict:
    """The annotation with its caption in place of category_id (filled in by _assemble)."""
    ann = dict(id=ann_id, image_id=image_id, caption=obj.caption, bbox=obj.bbox, area=obj.area, iscrowd=0,
               segmentation=obj.segmentation, mask_source=obj.mask_source)
    if obj.score is not None:
        ann["score"] = obj.score
    return ann


def _assemble(path: str, images_spool: str, anns_spool: str, ids: dict, info: dict) -> None:
    """annotations.json from the spools, one line at a time: {info, licenses, images, categories, annotations}."""
    categories = [dict(id=i, name=name, supercategory="object") for name, i in ids.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info":' + _dumps(info) + ',"licenses":[],"images":[')
        with open(images_spool, encoding="utf-8") as lines:
            for k, line in enumerate(lines):
                f.write(("," if k else "") + line.rstrip("\n"))
        f.write('],"categories":' + _dumps(categories) + ',"annotations":[')
        with open(anns_spool, encoding="utf-8") as lines:
            for k, line in enumerate(lines):
                ann = json.loads(line)
                ann["category_id"] = ids[ann.pop("caption")]
                f.write(("," if k else "") + _dumps(ann))
        f.write("]}")
