"""Box latents: step 1 of LMD / LMD+ for a shard of layouts, through the content-addressed cache.

For every box of every layout the stage computes the cache key of its per-box run; boxes already
in the cache are not generated again (no UNet, and no model is even loaded when all hit). The
misses of the whole shard run as batched per-box generation (`box_batch_size` runs per UNet
batch, across layouts) and are written to the cache (whole trajectories, so composition settings
can change later). The shard's rows list, per box, the key, the mask (RLE) and hit/generated.
The baselines (`sd`, `gligen`) have no per-box step: their shards are marked with no rows. A job
with several methods (`diffusion.methods`) runs the per-box step once per per-box method (lmd and
lmd_plus draw their boxes with different models, so they share nothing); rows carry the method.
"""

from __future__ import annotations

import time

from lmd_batch.pipeline.base import ShardResult, Stage
from lmd_batch.schemas import table_from_rows


PER_BOX_METHODS = ("lmd", "lmd_plus")


def box_key_fields(job, spec, box_index: int, prompt_id: str, sample: int, identities: dict,
                   method: str | None = None) -> dict:
    """Everything that determines box `box_index`'s per-box trajectory (see storage/latent_cache.py)."""
    from lmd_batch.grounding.noise import background_seed, box_seed, default_blending_ratio
    from lmd_batch.grounding.spec import per_box_negative

    cfg = job.diffusion
    method = method or cfg.method
    b = spec.boxes[box_index]
    return dict(
        model=identities["gligen" if method == "lmd_plus" else "sd"], method=method, scheduler="ddim",
        steps=cfg.steps, size=cfg.size, prompt=spec.per_box_prompts[box_index],
        negative=per_box_negative(spec, cfg.negative_prompt),
        caption=b.caption, word=b.word, box=[float(v) for v in b.box],
        seeds=[background_seed(job.seed, prompt_id, sample), box_seed(job.seed, prompt_id, sample, box_index)],
        guidance_scale=cfg.guidance_scale, guidance_steps=cfg.guidance_steps if method == "lmd" else 0,
        loss_scale=cfg.loss_scale, loss_threshold=cfg.loss_threshold,
        gligen_beta=cfg.gligen_beta if method == "lmd_plus" else None,
        fg_blending_ratio=default_blending_ratio(method, cfg.fg_blending_ratio),
        mask=cfg.mask, sam=identities.get("sam") if cfg.mask == "sam" else None, latent_dtype="float16",
        dtype=str(identities.get("dtype")),
    ) | ({"energy_tokens": cfg.energy_tokens} if cfg.energy_tokens != "all" else {})  # old keys stay valid


class BoxLatentStage(Stage):
    name = "box_latents"
    upstream = "layouts"
    data_schema = "box_latents"
    rejects_schema = "box_latents_rejects"

    def __init__(self, job, run, services=None):
        from lmd_batch.storage.latent_cache import LatentCache, cache_url

        super().__init__(job, run, services)
        self.cache = LatentCache(cache_url(job), job.run.storage_options)
        self._identities: dict | None = None

    def identities(self) -> dict:
        if self._identities is None:
            from lmd_batch.pipeline.stage2_common import model_identity

            cfg = self.job.diffusion
            from lmd_batch.grounding.generate import default_device, resolve_dtype

            self._identities = {"sd": model_identity(cfg.model), "gligen": model_identity(cfg.gligen_model),
                                "dtype": str(resolve_dtype(cfg.dtype, default_device()))}
            if cfg.mask == "sam":
                self._identities["sam"] = model_identity(cfg.sam_model)
        return self._identities

    def process(self, shard: dict, upstream_table) -> ShardResult:
        stats = {"rows_in": upstream_table.num_rows, "cache_hits": 0, "cache_misses": 0, "unet_passes": 0}
        out = []
        for method in self.job.diffusion.run_methods():
            if method in PER_BOX_METHODS:  # baselines: no per-box step
                out += self._process_method(method, upstream_table.to_pylist(), stats)
        return ShardResult(table_from_rows(out, "box_latents"), table_from_rows([], "box_latents_rejects"), stats)

    def _process_method(self, method: str, rows: list[dict], stats: dict) -> list[dict]:
        from lmd_batch.grounding.spec import layout_to_spec
        from lmd_batch.pipeline.stage2_common import mask_rle, row_layout
        from lmd_batch.storage.latent_cache import box_key

        job, cfg = self.job, self.job.diffusion
        specs, keys = [], []
        for r in rows:
            spec = layout_to_spec(row_layout(r), job.llm.max_boxes)
            specs.append((spec, r["prompt_id"], r["sample"]))
            keys.append([box_key(box_key_fields(job, spec, i, r["prompt_id"], r["sample"], self.identities(), method))
                         for i in range(len(spec.boxes))])
        hit = {k for ks in keys for k in ks if self.cache.has(k)}
        missing = {(si, bi) for si, ks in enumerate(keys) for bi, k in enumerate(ks) if k not in hit}
        stats["cache_hits"] += sum(len(ks) for ks in keys) - len(missing)
        stats["cache_misses"] += len(missing)
        # Run whole chunks: a run's floats depend (slightly) on its batch, so a chunk is always the
        # same runs, whether the shard runs whole or resumes after a kill with some boxes cached.
        order = [(si, bi) for si, ks in enumerate(keys) for bi in range(len(ks))]
        size = max(1, int(cfg.box_batch_size))
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        rerun = {run for chunk in chunks if any(run in missing for run in chunk) for run in chunk}
        generated = {}
        if missing:
            from lmd_batch.grounding.generate import cached_model
            from lmd_batch.grounding.per_box import generate_boxes

            t0 = time.perf_counter()
            kind = "gligen" if method == "lmd_plus" else "sd"
            pipe = cached_model(kind, cfg.gligen_model if kind == "gligen" else cfg.model, dtype=cfg.dtype)
            sam = cached_model("sam", cfg.sam_model) if cfg.mask == "sam" else None
            gen_stats: dict = {}
            results = generate_boxes(pipe, specs, cfg, job.seed, method, sam, cfg.mask, cfg.box_batch_size,
                                     keep_images=False, stats=gen_stats, want=lambda si, bi: (si, bi) in rerun,
                                     keep_steps=cfg.steps)
            for si, boxes in enumerate(results):
                for bl in boxes:
                    key = keys[si][bl.index]
                    self.cache.put(key, bl)
                    generated[key] = bl
            stats["unet_passes"] += int(gen_stats.get("unet_passes", 0))
            stats["generate_seconds"] = round(stats.get("generate_seconds", 0.0) + time.perf_counter() - t0, 3)
        out = []
        for si, r in enumerate(rows):
            for bi, key in enumerate(keys[si]):
                bl = generated.get(key) or self.cache.get(key)
                if bl is None:
                    from lmd_batch.errors import StorageError

                    raise StorageError(f"box latent {key} is missing from the cache {self.cache.loc.url} after writing it")
                b = specs[si][0].boxes[bi]
                out.append(dict(layout_id=r["layout_id"], prompt_id=r["prompt_id"], sample=r["sample"], method=method,
                                box_index=bi, caption=b.caption, x=int(round(b.box[0])), y=int(round(b.box[1])),
                                w=int(round(b.box[2])), h=int(round(b.box[3])), cache_key=key,
                                status="generated" if key in generated else "hit", mask=mask_rle(bl.mask.numpy() > 0.5),
                                shift_y=int(bl.shift[0]), shift_x=int(bl.shift[1])))
        return out
