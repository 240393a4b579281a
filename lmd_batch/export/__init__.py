"""Grounded dataset export: a finished run's images with their boxes and masks, as a dataset.

    source.py      what is read: the marked images shards (and evaluate scores), checked PNGs,
                   boxes in image pixels and masks upscaled from latent size
    rle.py         masks as COCO uncompressed RLE in image pixels
    coco.py        `lmd-batch export coco RUN OUT`: OUT/annotations.json + OUT/images/
    hf_parquet.py  `lmd-batch export parquet RUN OUT`: OUT/data/train-*.parquet + OUT/README.md
    output.py      the output folder (refuses a non-empty one) and OUT/rejects.jsonl

The CLI is cli_export.py. Nothing here imports torch or Ray.
"""
