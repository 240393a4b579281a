"""OWL-ViT as the benchmark's detector: text queries in, (label, score, pixel box) out.

Each predicted box takes the label of its best-scoring query (the processor's post-processing,
as in the reference); the protocol's threshold and NMS are applied afterwards by
`protocol.filter_detections`, so the detector itself keeps every box (threshold 0 here).
One image per forward pass: each image has its own query list, and on a GPU the evaluation is
a small fraction of the generation cost (see the issue notes).
"""

from __future__ import annotations

from lmd_batch.evaluate.protocol import Detection


class OwlDetector:
    """A loaded OWL-ViT (built-in name, Hugging Face id, local folder or fsspec URL)."""

    def __init__(self, ref: str, device: str | None = None, storage_options: dict | None = None):
        import torch

        from lmd_batch.models.loaders import load_owlvit

        self.ref = ref
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor, self.model = load_owlvit(ref, storage_options)
        self.model.to(self.device)

    def detect(self, image, queries: list[str], labels: list[str]) -> list[Detection]:
        """All boxes for `queries` on a PIL image, labelled with `labels[best query]`, in pixels."""
        import torch

        if not queries:
            return []
        rgb = image.convert("RGB")
        # The processor's own padding (max_length), as the reference calls it.
        inputs = self.processor(text=[list(queries)], images=rgb, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        res = self.processor.post_process_grounded_object_detection(
            outputs=outputs, threshold=0.0, target_sizes=[(rgb.height, rgb.width)])[0]
        # Boxes are kept as predicted (not clipped to the image): the reference thresholds, NMSes
        # and compares centres on the unclipped boxes, and clipping would move centres.
        return [Detection(labels[label], float(score), x0, y0, x1 - x0, y1 - y0)
                for score, label, (x0, y0, x1, y1) in zip(res["scores"].tolist(), res["labels"].tolist(),
                                                           res["boxes"].tolist())]
