"""Evaluate: OWL-ViT on every image of a shard, with LMD's benchmark protocol and box verification.

For an LMD benchmark prompt (matched by its exact text) the detector gets the protocol's queries
and the row records whether the category's predicate holds (`passed`). For every image, the
detector is also queried with the layout's own box captions, and each box gets the best score of
a detection of its caption overlapping it (`box_scores`, `verify_score`): the signal
`lmd-batch export --min-score` uses to keep detector-verified synthetic data.
A PNG that is missing or does not decode becomes a reject row; the other images go on.

With `evaluation.detector: shapes` the classical shapes detector (lmd_batch/shapes/detect.py)
replaces OWL-ViT: prompts of the shapes benchmark (bench/shapes_suite.py, parsed from their text)
get that suite's predicate, and each layout box is confirmed by a detection of its colour and
shape overlapping it (score 1) or not (score 0).
"""

from __future__ import annotations

import time

from lmd_batch.pipeline.base import ShardResult, Stage
from lmd_batch.schemas import table_from_rows


SHAPES_DETECTOR = "shapes"


class EvaluateStage(Stage):
    name = "evaluate"
    upstream = "images"
    data_schema = "evaluations"
    rejects_schema = "evaluations_rejects"

    def __init__(self, job, run, services=None):
        super().__init__(job, run, services)
        self._detector = None

    def detector(self):
        if self._detector is None:
            from lmd_batch.evaluate.owl import OwlDetector

            self._detector = OwlDetector(self.job.evaluation.detector, storage_options=self.job.run.storage_options)
        return self._detector

    def process(self, shard: dict, upstream_table) -> ShardResult:
        rows, rejects = [], []
        stats = {"rows_in": upstream_table.num_rows, "benchmark_images": 0, "passed": 0, "detections": 0}
        t0 = time.perf_counter()
        for img in upstream_table.to_pylist():
            image, problem = self._open(img["image_path"])
            if image is None:
                rejects.append(dict(layout_id=img["layout_id"], prompt_id=img["prompt_id"], sample=img["sample"],
                                    method=img["method"], image_path=img["image_path"], reason=problem[0],
                                    detail=problem[1]))
                continue
            row = self.evaluate_image(img, image)
            stats["benchmark_images"] += row["category"] is not None
            stats["passed"] += bool(row["passed"])
            stats["detections"] += len(row["detections"]) + len(row["box_detections"])
            rows.append(row)
        stats["evaluate_seconds"] = round(time.perf_counter() - t0, 3)
        return ShardResult(table_from_rows(rows, "evaluations"), table_from_rows(rejects, "evaluations_rejects"), stats)

    def _open(self, rel: str):
        """(PIL image, None) or (None, (reason, detail))."""
        import io

        from PIL import Image, UnidentifiedImageError

        data = self.run.loc.read_bytes_or_none(rel)
        if data is None:
            return None, ("image_missing", f"{rel} is not in the run folder")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            return None, ("image_unreadable", f"{rel} does not decode as an image: {str(exc).splitlines()[0][:200]}")
        return image, None

    def evaluate_image(self, img: dict, image) -> dict:
        if self.job.evaluation.detector == SHAPES_DETECTOR:
            return self.evaluate_shapes(img, image)
        from lmd_batch.evaluate.protocol import (bench_prompt, box_scores, filter_detections, judge,
                                                 protocol_labels, queries_for, verify_score)

        ev = self.job.evaluation
        det = self.detector()

        def run(labels):
            raw = det.detect(image, queries_for(labels), labels)
            return filter_detections(raw, ev.score_threshold, ev.nms_threshold, ev.class_aware_nms)

        bp = bench_prompt(img["prompt"])
        labels = protocol_labels(bp) if bp is not None else []
        dets = run(labels) if bp is not None else []
        sx, sy = image.width / 512.0, image.height / 512.0
        boxes_px = [(b["caption"], (b["x"] * sx, b["y"] * sy, b["w"] * sx, b["h"] * sy)) for b in img["boxes"]]
        captions = list(dict.fromkeys(c for c, _ in boxes_px))
        box_dets = run(captions)
        scores = box_scores(boxes_px, box_dets, ev.verify_iou)
        return dict(layout_id=img["layout_id"], prompt_id=img["prompt_id"], sample=img["sample"], method=img["method"],
                    image_path=img["image_path"], width=image.width, height=image.height,
                    category=bp.category if bp is not None else None, queries=queries_for(labels),
                    detections=[d.as_row() for d in dets], passed=judge(bp, dets) if bp is not None else None,
                    box_detections=[d.as_row() for d in box_dets], box_scores=scores,
                    verify_score=verify_score(scores))

    def evaluate_shapes(self, img: dict, image) -> dict:
        import numpy as np

        from lmd_batch.bench.shapes_suite import caption_kind, judge, parse_prompt
        from lmd_batch.evaluate.protocol import Detection, verify_score
        from lmd_batch.shapes.detect import box_iou, detect_shapes

        found = detect_shapes(np.asarray(image.convert("RGB")))
        dets = [Detection(d.label, 1.0, *d.box) for d in found]
        sp = parse_prompt(img["prompt"])
        sx, sy = image.width / 512.0, image.height / 512.0
        scores = []
        for b in img["boxes"]:
            kind = caption_kind(b["caption"])
            box = (b["x"] * sx, b["y"] * sy, b["w"] * sx, b["h"] * sy)
            hit = kind is not None and any((d.color, d.shape) == kind and box_iou(d.box, box) >= self.job.evaluation.verify_iou
                                           for d in found)
            scores.append(1.0 if hit else 0.0)
        return dict(layout_id=img["layout_id"], prompt_id=img["prompt_id"], sample=img["sample"], method=img["method"],
                    image_path=img["image_path"], width=image.width, height=image.height,
                    category=sp.category if sp is not None else None, queries=[],
                    detections=[d.as_row() for d in dets],
                    passed=judge(sp, [(d.color, d.shape, d.box) for d in found]) if sp is not None else None,
                    box_detections=[d.as_row() for d in dets], box_scores=scores, verify_score=verify_score(scores))

    def close(self) -> None:
        self._detector = None
