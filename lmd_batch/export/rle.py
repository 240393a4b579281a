"""Object masks of an exported image as COCO run-length encodings, in image pixels.

The images stage stores each box's mask at latent resolution (image size / 8) as COCO
*uncompressed* RLE. A dataset needs masks in image pixels, so each one is upscaled (nearest, an
exact integer factor for our sizes) before it is encoded again. Both exports write the same
uncompressed RLE, `{"size": [height, width], "counts": [zeros, ones, zeros, ...]}` column-major
(the form COCO itself uses for crowd regions): `pycocotools.mask.frPyObjects` reads it, as does
anything that reads COCO, and it needs no C extension to write.

Baseline images (sd, gligen) have no masks: their segmentation is the box rectangle, and the
annotation says so (`mask_source: "box"`).
"""

from __future__ import annotations


def upscale(mask, height: int, width: int):
    """Nearest-neighbour resize of a {0, 1} array to (height, width); exact for integer factors."""
    import numpy as np

    m = np.asarray(mask, dtype=np.uint8)
    rows = (np.arange(height) * m.shape[0]) // height
    cols = (np.arange(width) * m.shape[1]) // width
    return m[np.ix_(rows, cols)]


def encode(mask) -> dict:
    """COCO uncompressed RLE of a {0, 1} array: column-major run lengths, starting with zeros."""
    import numpy as np

    from lmd_batch.pipeline.stage2_common import rle_counts

    m = np.asarray(mask, dtype=np.uint8)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle_counts(m) if m.size else []}


def area(rle: dict) -> int:
    """Pixels set in an uncompressed RLE (the odd-indexed runs)."""
    return int(sum(rle["counts"][1::2]))


def latent_mask_rle(stored: dict, height: int, width: int) -> dict:
    """A mask as the images table stores it ({height, width, counts} at latent size) -> image-pixel RLE."""
    from lmd_batch.pipeline.stage2_common import rle_decode

    return encode(upscale(rle_decode(stored), height, width))


def box_pixels(bbox: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels whose centres lie inside an [x, y, w, h] box, clipped to the image."""
    x, y, w, h = bbox
    x0, x1 = (max(0, min(width, int(round(v)))) for v in (x, x + w))
    y0, y1 = (max(0, min(height, int(round(v)))) for v in (y, y + h))
    return x0, y0, x1, y1


def box_rle(bbox: list[float], height: int, width: int) -> dict:
    """The box rectangle as an RLE (segmentation of baseline images, which have no masks)."""
    import numpy as np

    x0, y0, x1, y1 = box_pixels(bbox, height, width)
    m = np.zeros((height, width), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return encode(m)
