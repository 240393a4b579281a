"""Images: step 2 of LMD / LMD+ (composition + overall generation), or a baseline, per layout.

Reads the shard's layouts and (for lmd / lmd_plus) the box latents from the content-addressed
cache, runs the overall generation and writes one PNG per layout and method under
`{run}/images/png/` (names derived from the layout id and method, so a redone shard overwrites; a
job with `diffusion.methods` draws every layout once per method, same noise) plus the shard's Parquet:
ids, method, model ids, seed, layout, per-box masks, image path and sha256, UNet passes and the
final in-box attention ratio per box. Timings go to the shard's marker (not the table), so the
table's bytes depend only on the job: same job, same bytes.
"""

from __future__ import annotations

import hashlib
import time

from lmd_batch.pipeline.base import ShardResult, Stage
from lmd_batch.schemas import table_from_rows


class ImageStage(Stage):
    name = "images"
    upstream = "box_latents"
    data_schema = "images"
    rejects_schema = "images_rejects"

    def __init__(self, job, run, services=None):
        from lmd_batch.storage.latent_cache import LatentCache, cache_url

        super().__init__(job, run, services)
        self.cache = LatentCache(cache_url(job), job.run.storage_options)

    def process(self, shard: dict, upstream_table) -> ShardResult:
        from lmd_batch.grounding.generate import generate_layout
        from lmd_batch.grounding.noise import background_seed
        from lmd_batch.pipeline.stage2_common import png_bytes, row_layout, safe_name

        job, cfg = self.job, self.job.diffusion
        shard_id = int(shard["shard_id"])
        layouts = self.run.read_data("layouts", shard_id).to_pylist()
        by_layout: dict[tuple, list[dict]] = {}
        for r in upstream_table.to_pylist():
            by_layout.setdefault((r["layout_id"], r["method"]), []).append(r)
        rows, rejects = [], []
        stats = {"rows_in": len(layouts), "unet_passes": 0, "load_seconds": 0.0, "generate_seconds": 0.0}
        for lay, method in ((lay, m) for lay in layouts for m in cfg.run_methods()):
            t0 = time.perf_counter()
            boxes = None
            box_rows = sorted(by_layout.get((lay["layout_id"], method), []), key=lambda b: b["box_index"])
            if method in ("lmd", "lmd_plus"):
                boxes = [self.cache.get(b["cache_key"]) for b in box_rows]
                if any(b is None for b in boxes):
                    from lmd_batch.errors import StorageError

                    raise StorageError(f"a box latent of {lay['layout_id']} is missing from {self.cache.loc.url}; "
                                       f"rerun to regenerate it")
            res = generate_layout(row_layout(lay), method, model=cfg.model, gligen_model=cfg.gligen_model,
                                  sam_model=cfg.sam_model, cfg=cfg, job_seed=job.seed,
                                  prompt_id=lay["prompt_id"], sample=lay["sample"], prompt=lay["prompt"],
                                  max_boxes=job.llm.max_boxes, boxes=boxes)
            png = png_bytes(res.image)
            rel = f"images/png/shard-{shard_id:05d}/{safe_name(lay['layout_id'])}.{method}.png"
            self.run.loc.write_bytes(rel, png)
            ratios = {e["index"]: (e.get("in_box_ratio") or {}).get("final") for e in res.report.get("boxes", [])}
            spec_boxes = [dict(caption=b.caption, x=int(round(b.box[0])), y=int(round(b.box[1])),
                               w=int(round(b.box[2])), h=int(round(b.box[3]))) for b in res.spec.boxes]
            rows.append(dict(
                layout_id=lay["layout_id"], prompt_id=lay["prompt_id"], sample=lay["sample"], method=method,
                model=cfg.gligen_model if method in ("lmd_plus", "gligen") else cfg.model,
                seed=background_seed(job.seed, lay["prompt_id"], lay["sample"]), prompt=lay["prompt"],
                overall_prompt=res.spec.overall_prompt, boxes=spec_boxes, background=res.spec.background,
                negative=res.spec.negative, masks=[b["mask"] for b in box_rows],
                image_path=rel, image_sha256=hashlib.sha256(png).hexdigest(),
                width=int(res.image.shape[1]), height=int(res.image.shape[0]),
                unet_passes=int(res.report["unet_passes"]["overall"]),
                in_box_ratio=[float(ratios.get(i) or 0.0) for i in range(len(res.spec.boxes))],
                warnings=[str(w) for w in res.report.get("warnings", [])]))
            stats["unet_passes"] += int(res.report["unet_passes"]["overall"])
            stats["load_seconds"] += float(res.report.get("timings", {}).get("load_s", 0.0))
            stats["generate_seconds"] += time.perf_counter() - t0
        stats["load_seconds"] = round(stats["load_seconds"], 3)
        stats["generate_seconds"] = round(stats["generate_seconds"], 3)
        return ShardResult(table_from_rows(rows, "images"), table_from_rows(rejects, "images_rejects"), stats)
