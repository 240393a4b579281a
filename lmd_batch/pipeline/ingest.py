"""Ingest: the first stage. Reads a shard's rows from the prompt file, checks each, assigns ids."""

from __future__ import annotations

from lmd_batch.pipeline.base import ShardResult, Stage
from lmd_batch.prompts import sources
from lmd_batch.prompts.checks import check_row
from lmd_batch.prompts.plan import generated_id
from lmd_batch.schemas import table_from_rows


def read_shard_rows(shard: dict, storage_options: dict) -> list[sources.RawRow]:
    """The raw rows of one manifest shard, read from its source file."""
    import fsspec.core

    src, form = shard["source"], shard["format"]
    start, end = shard["row_start"], shard["row_end"]
    fs, path = fsspec.core.url_to_fs(src, **storage_options)
    if form == "parquet":
        pf = sources.open_parquet(fs, path, src)
        return sources.parquet_rows(pf, src, start, end)
    if form in ("text", "jsonl"):
        from fsspec.utils import infer_compression

        if infer_compression(path):  # compressed: offsets were taken on the decompressed bytes
            data = sources.read_all_bytes(fs, path, src)[shard["byte_start"]:shard["byte_end"]]
        else:
            try:
                with fs.open(path, "rb") as f:
                    f.seek(shard["byte_start"])
                    data = f.read(shard["byte_end"] - shard["byte_start"])
            except Exception as exc:
                from lmd_batch.errors import UserError

                raise UserError(f"cannot read prompt file {src}: {type(exc).__name__}: {exc}") from None
        lines = sources.split_lines(data)
        parse = sources.parse_text_line if form == "text" else sources.parse_jsonl_line
        return [parse(start + i, ln) for i, ln in enumerate(lines)]
    header, records = sources.csv_records(sources.read_all_bytes(fs, path, src), src)
    return [sources.parse_csv_record(start + i, header, rec) for i, rec in enumerate(records[start:end])]


class IngestStage(Stage):
    name = "ingest"
    upstream = None
    data_schema = "ingest"
    rejects_schema = "ingest_rejects"

    def process(self, shard: dict, upstream_table) -> ShardResult:
        cfg = self.job.input
        rows = read_shard_rows(shard, cfg.storage_options)
        expected = shard["row_end"] - shard["row_start"]
        if len(rows) != expected:
            from lmd_batch.errors import RunFolderError

            raise RunFolderError(f"{shard['source']} changed since the run was planned "
                                 f"(shard {shard['shard_id']}: {len(rows)} rows, expected {expected}); use --new-run")
        dups = set(shard["duplicate_rows"])
        accepted, rejected = [], []
        for raw in rows:
            rid = raw.id if raw.id is not None else generated_id(shard["global_row_start"] + raw.row - shard["row_start"])
            ok, bad = check_row(raw, rid, duplicate=raw.row in dups, max_chars=cfg.max_prompt_chars,
                                default_samples=cfg.samples, source=shard["source"])
            (accepted if ok else rejected).append(ok or bad)
        return ShardResult(table_from_rows(accepted, "ingest"), table_from_rows(rejected, "ingest_rejects"),
                           {"rows_in": len(rows)})
