"""Hugging Face datasets export: Parquet files that `datasets.load_dataset(OUT)` reads as-is.

    OUT/README.md                    dataset card: the `configs` header names the train split's
                                     files, then where the data came from and what the columns hold
    OUT/data/train-00000.parquet     rows in the run's (shard, row) order; a new file every
                                     ~256 MiB of images, row groups of 100 rows (the Hub's viewer size)
    OUT/rejects.jsonl                images left out because they could not be read (see output.py)

Columns (one row per image):

    image         struct<bytes: binary, path: string>  what datasets.Image() stores: the PNG bytes
                                                       as the run wrote them; path = file name only
    layout_id, prompt_id, sample, method, prompt, width, height
    verify_score  float64, null when the image was not evaluated (detector confirmation of the layout)
    objects       struct of lists, one entry per box (the layout of Hugging Face's object-detection
                  datasets, e.g. `row["objects"]["bbox"]`):
                    bbox         list<fixed_size_list<float32, 4>>  [x, y, w, h] in image pixels
                    category     list<string>                       the box caption
                    area         list<int64>                        pixels of the mask
                    mask         list<struct<size: list<int32>, counts: list<int32>>>
                                 COCO uncompressed RLE in image pixels ({"size": [h, w], "counts": [...]},
                                 pycocotools.mask.frPyObjects reads it); the box rectangle for baselines
                    mask_source  list<string>                       "mask" | "box" (baselines: no masks)
                    score        list<float64>                      detector score per box (null: not evaluated)

An export with no image (an empty run, or filters that leave nothing) is one zero-row file with
the full schema: pyarrow, pandas and DuckDB read it; `datasets.load_dataset` refuses any split
without rows, so the CLI says so.

The schema carries the `huggingface` metadata key with the datasets Features, so the `image`
column loads as an Image feature (PIL images) without the `datasets` package being needed here.
"""

from __future__ import annotations

import io
import json

from lmd_batch.export.output import open_output, write_rejects
from lmd_batch.export.source import iter_images

DATA = "data"
README = "README.md"
ENTRIES = (DATA, README, "rejects.jsonl")
MAX_FILE_BYTES = 256 * 2**20
ROW_GROUP_ROWS = 100


def _v(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


def _seq(feature: dict, length: int = -1) -> dict:
    return {"feature": feature, "length": length, "_type": "Sequence"}


# datasets.Features.to_dict() of the columns, in the form every datasets version since 2.x reads
FEATURES = {
    "image": {"_type": "Image"},
    "layout_id": _v("string"), "prompt_id": _v("string"), "sample": _v("int32"), "method": _v("string"),
    "prompt": _v("string"), "width": _v("int32"), "height": _v("int32"), "verify_score": _v("float64"),
    "objects": {
        "bbox": _seq(_seq(_v("float32"), 4)), "category": _seq(_v("string")), "area": _seq(_v("int64")),
        "mask": [{"size": _seq(_v("int32")), "counts": _seq(_v("int32"))}],
        "mask_source": _seq(_v("string")), "score": _seq(_v("float64")),
    },
}


def arrow_schema():
    """The Arrow schema matching FEATURES, with the `huggingface` metadata key."""
    import pyarrow as pa

    objects = pa.struct([
        ("bbox", pa.list_(pa.list_(pa.float32(), 4))), ("category", pa.list_(pa.string())),
        ("area", pa.list_(pa.int64())),
        ("mask", pa.list_(pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.list_(pa.int32()))]))),
        ("mask_source", pa.list_(pa.string())), ("score", pa.list_(pa.float64())),
    ])
    fields = [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
              ("layout_id", pa.string()), ("prompt_id", pa.string()), ("sample", pa.int32()), ("method", pa.string()),
              ("prompt", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("verify_score", pa.float64()),
              ("objects", objects)]
    meta = {"huggingface": json.dumps({"info": {"features": FEATURES}})}
    return pa.schema(fields, metadata=meta)


def _row(item) -> dict:
    r = item.row
    return dict(
        image=dict(bytes=item.png, path=item.file_name), layout_id=r["layout_id"], prompt_id=r["prompt_id"],
        sample=int(r["sample"]), method=r["method"], prompt=r["prompt"], width=int(r["width"]),
        height=int(r["height"]), verify_score=item.verify_score,
        objects=dict(bbox=[o.bbox for o in item.objects], category=[o.caption for o in item.objects],
                     area=[o.area for o in item.objects], mask=[o.segmentation for o in item.objects],
                     mask_source=[o.mask_source for o in item.objects], score=[o.score for o in item.objects]))


class _Files:
    """Rows to data/train-NNNNN.parquet, one file in memory at a time, written whole when full."""

    def __init__(self, out, schema, max_file_bytes: int):
        self.out, self.schema, self.max = out, schema, max_file_bytes
        self.files: list[str] = []
        self.rows: list[dict] = []
        self.buf = self.writer = None

    def add(self, row: dict) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.buf = io.BytesIO()
            self.writer = pq.ParquetWriter(self.buf, self.schema)
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP_ROWS:
            self._flush_rows()
        if self.buf.tell() >= self.max:
            self.close_file()

    def _flush_rows(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=ROW_GROUP_ROWS)
            self.rows = []

    def close_file(self, force: bool = False) -> None:
        """Finish the open file; with force, write one (empty) file even when no row came, so that
        an export with nothing in it is still a valid dataset with the full schema."""
        import pyarrow.parquet as pq

        if self.writer is None and force and not self.files:
            self.buf = io.BytesIO()
            self.writer = pq.ParquetWriter(self.buf, self.schema)
        if self.writer is None:
            return
        self._flush_rows()
        self.writer.close()
        name = f"{DATA}/train-{len(self.files):05d}.parquet"
        self.out.write_bytes(name, self.buf.getvalue())
        self.files.append(name)
        self.buf = self.writer = None


def export_parquet(sel, out_url: str, overwrite: bool = False, tick=lambda: None,
                   max_file_bytes: int = MAX_FILE_BYTES) -> dict:
    """Write the Parquet dataset folder for a Selection (source.select); returns a summary dict."""
    out = open_output(out_url, ENTRIES, overwrite)
    files = _Files(out, arrow_schema(), max_file_bytes)
    n = boxes = 0
    for item in iter_images(sel, tick):
        files.add(_row(item))
        n += 1
        boxes += len(item.objects)
    files.close_file(force=True)
    out.write_bytes(README, _card(sel, n, boxes).encode("utf-8"))
    write_rejects(out, sel.rejects)
    return dict(out=out.display(DATA), files=[out.display(f) for f in files.files], images=n, objects=boxes,
                rejects=out.display("rejects.jsonl"))


def _card(sel, images: int, boxes: int) -> str:
    """README.md: the `configs` header that tells datasets (and the Hub) which files are the split."""
    filters = []
    if sel.method:
        filters.append(f"method {sel.method} only")
    if sel.min_score is not None:
        filters.append(f"verify_score >= {sel.min_score}")
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n\n"
        f"# {sel.info['job'].get('name', 'lmd-batch')}: grounded images from lmd-batch\n\n"
        f"Exported from run `{sel.run.url}` (config fingerprint `{sel.info.get('fingerprint')}`): "
        f"{images} images, {boxes} boxes with masks"
        f"{' (' + ', '.join(filters) + ')' if filters else ''}. "
        "Images were generated by LLM-grounded Diffusion from LLM layouts; `objects` holds each layout box in "
        "image pixels ([x, y, w, h]), its caption as the category and its mask as COCO uncompressed RLE "
        "(`mask_source` \"box\": the rectangle, for baseline images without masks). `verify_score` is the "
        "open-vocabulary detector's confirmation of the whole layout (null: not evaluated).\n"
    )
