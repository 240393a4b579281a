"""The run folder on every backend: Location primitives, shard markers, run.json, manifest, schemas,
and storage failures turned into one-line StorageErrors."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from conftest import free_port, run_cli
from lmd_batch.errors import RunFolderError, StorageError
from lmd_batch.schemas import get_schema, table_from_rows
from lmd_batch.storage.location import Location
from lmd_batch.storage.run_folder import (
    MANIFEST,
    RUN_FORMAT,
    RUN_JSON,
    RunFolder,
    data_path,
    done_path,
    parquet_bytes,
    rejects_path,
    sha256,
)


def _loc(storage_url) -> Location:
    return Location(storage_url["url"], storage_url["storage_options"])


def _run(storage_url) -> RunFolder:
    return RunFolder(storage_url["url"], storage_url["storage_options"])


def _ingest_data(n=3, offset=0):
    return table_from_rows([dict(prompt_id=f"p{i:09d}", prompt=f"prompt number {i}", samples=1 + i % 2,
                                 source="/in/prompts.txt", row=i) for i in range(offset, offset + n)], "ingest")


def _ingest_rejects():
    return table_from_rows([dict(prompt_id="p000000099", source="/in/prompts.txt", row=99, reason="empty",
                                 detail="the prompt is empty", preview="", chars=0)], "ingest_rejects")


def _manifest_rows():
    return [
        dict(shard_id=0, source="/in/a.jsonl", format="jsonl", row_start=0, row_end=2, byte_start=0, byte_end=40,
             global_row_start=0, duplicate_rows=[]),
        dict(shard_id=1, source="/in/a.jsonl", format="jsonl", row_start=2, row_end=3, byte_start=40, byte_end=61,
             global_row_start=2, duplicate_rows=[2]),
        dict(shard_id=2, source="s3://b/b.parquet", format="parquet", row_start=0, row_end=5, byte_start=0,
             byte_end=0, global_row_start=3, duplicate_rows=[]),
    ]


def _listed(loc: Location, rel: str, storage_url) -> list[str]:
    """list_names, minus the empty folders SeaweedFS keeps listing after their objects are deleted
    (SeaweedFS 4.48 returns them as common prefixes for minutes; real S3, moto and GCS do not)."""
    names = loc.list_names(rel)
    if storage_url["kind"] != "seaweed":
        return names

    def has_files(name):
        p = loc.path(f"{rel}/{name}" if rel else name)
        loc.fs.invalidate_cache(p)
        return loc.fs.isfile(p) or any(f != p for f in loc.fs.find(p))

    return [n for n in names if has_files(n)]


# --- Location -----------------------------------------------------------------------------------

def test_location_write_read_list_exists_delete(storage_url):
    loc = _loc(storage_url)
    assert loc.is_empty()
    assert loc.list_names("") == []
    assert loc.list_names("no/such/folder") == []
    assert not loc.exists("a/b.json")
    assert loc.read_bytes_or_none("a/b.json") is None
    with pytest.raises(FileNotFoundError):
        loc.read_bytes("a/b.json")

    blob = bytes(range(256)) * 4096  # 1 MiB of every byte value
    loc.write_bytes("a/b.json", b'{"v": 1}')
    loc.write_bytes("a/c.bin", blob)
    loc.write_bytes("top.json", b"{}")
    assert loc.exists("a/b.json") and loc.exists("a/c.bin") and loc.exists("top.json")
    assert loc.read_bytes("a/b.json") == b'{"v": 1}'
    assert loc.read_bytes("a/c.bin") == blob
    assert loc.list_names("a") == ["b.json", "c.bin"]
    assert loc.list_names("") == ["a", "top.json"]
    assert not loc.is_empty()

    loc.write_bytes("a/b.json", b'{"v": 2}')  # a rewrite replaces the whole file
    assert loc.read_bytes("a/b.json") == b'{"v": 2}'
    assert loc.list_names("a") == ["b.json", "c.bin"]

    loc.delete("a/b.json")
    assert not loc.exists("a/b.json")
    assert loc.read_bytes_or_none("a/b.json") is None
    assert loc.list_names("a") == ["c.bin"]
    loc.delete("a/b.json")  # deleting what is gone is not an error

    loc.delete_tree("a")
    assert not loc.exists("a/c.bin")
    assert _listed(loc, "", storage_url) == ["top.json"]
    loc.delete_tree("")
    assert not loc.exists("top.json")
    assert _listed(loc, "", storage_url) == []
    if storage_url["kind"] != "seaweed":
        assert loc.is_empty()
    loc.delete_tree("")  # deleting an absent tree is not an error


def test_location_names_are_relative_to_the_root(storage_url):
    """Two locations side by side do not see each other's files."""
    a = Location(storage_url["url"] + "/one", storage_url["storage_options"])
    b = Location(storage_url["url"] + "/one-two", storage_url["storage_options"])
    a.write_bytes("x.json", b"a")
    b.write_bytes("x.json", b"b")
    assert a.read_bytes("x.json") == b"a"
    assert b.read_bytes("x.json") == b"b"
    a.delete_tree("")
    assert not a.exists("x.json")
    assert b.read_bytes("x.json") == b"b"
    parent = Location(storage_url["url"], storage_url["storage_options"])
    assert _listed(parent, "", storage_url) == ["one-two"]


def test_atomic_writes_leave_no_temp_files(storage_url):
    loc = _loc(storage_url)
    for i in range(5):
        loc.write_bytes(f"d/f{i}.json", json.dumps({"i": i}).encode())
        loc.write_bytes(f"d/f{i}.json", json.dumps({"i": i, "again": True}).encode())
    assert loc.list_names("d") == [f"f{i}.json" for i in range(5)]
    if storage_url["kind"] == "file":
        on_disk = sorted(os.listdir(storage_url["url"] + "/d"))
        assert on_disk == [f"f{i}.json" for i in range(5)]


def test_failed_local_write_leaves_no_temp_file_and_raises_storage_error(tmp_path):
    loc = Location(str(tmp_path / "run"))
    loc.write_bytes("d/keep.json", b"keep")
    (tmp_path / "run" / "d" / "target.json").mkdir()  # os.replace onto a folder fails
    (tmp_path / "run" / "d" / "target.json" / "inside").write_text("x")
    with pytest.raises(StorageError) as err:
        loc.write_bytes("d/target.json", b"new")
    msg = str(err.value)
    assert "\n" not in msg
    assert "write" in msg and str(tmp_path / "run" / "d" / "target.json") in msg
    assert sorted(os.listdir(tmp_path / "run" / "d")) == ["keep.json", "target.json"]
    assert loc.read_bytes("d/keep.json") == b"keep"


def test_unknown_protocol_is_a_storage_error():
    with pytest.raises(StorageError, match="nosuchproto://bucket/run"):
        Location("nosuchproto://bucket/run")


# --- RunFolder: shards and markers --------------------------------------------------------------

def test_write_shard_markers_and_verified_reads(storage_url):
    run = _run(storage_url)
    data, rejects = _ingest_data(3), _ingest_rejects()
    assert run.markers("ingest") == {}
    assert run.marker("ingest", 7) is None

    marker = run.write_shard("ingest", 7, data, rejects, "ingest", "ingest_rejects", {"manifest": "m" * 64},
                             {"rows_in": 4})
    assert (marker.stage, marker.shard_id, marker.rows, marker.rejects) == ("ingest", 7, 3, 1)
    assert marker.upstream == {"manifest": "m" * 64}
    assert marker.stats == {"rows_in": 4}

    loc = run.loc
    assert loc.list_names("ingest") == ["data", "done", "rejects"]
    assert loc.list_names("ingest/data") == ["shard-00007.parquet"]
    assert loc.list_names("ingest/done") == ["shard-00007.json"]
    raw = loc.read_bytes(data_path("ingest", 7))
    assert marker.data_sha256 == sha256(raw) and marker.data_bytes == len(raw)
    assert marker.rejects_sha256 == sha256(loc.read_bytes(rejects_path("ingest", 7)))

    # a second RunFolder object (as a resumed run or `status` would open it) sees the same marker
    again = _run(storage_url)
    assert again.markers("ingest") == {7: marker}
    assert again.marker("ingest", 7) == marker
    got = again.read_data("ingest", 7)
    assert got.to_pylist() == data.to_pylist()
    assert got.schema.metadata[b"lmd_batch.schema"] == b"ingest/1"
    assert again.read_rejects("ingest", 7).to_pylist() == rejects.to_pylist()

    # same table, same bytes: a recomputed shard gives the identical file
    marker2 = run.write_shard("ingest", 8, data, rejects, "ingest", "ingest_rejects", {"manifest": "m" * 64}, {})
    assert marker2.data_sha256 == marker.data_sha256
    assert sorted(run.markers("ingest")) == [7, 8]


def test_tampered_or_missing_shard_data_is_detected(storage_url):
    run = _run(storage_url)
    run.write_shard("ingest", 0, _ingest_data(3), _ingest_rejects(), "ingest", "ingest_rejects", {}, {})
    # replace the data file with another valid Parquet file: only the checksum can tell
    run.loc.write_bytes(data_path("ingest", 0), parquet_bytes(_ingest_data(3, offset=10)))
    with pytest.raises(StorageError) as err:
        run.read_data("ingest", 0)
    assert "shard-00000.parquet" in str(err.value) and storage_url["url"] in str(err.value)
    assert "\n" not in str(err.value)
    # the rejects file still matches its marker
    assert run.read_rejects("ingest", 0).num_rows == 1

    run.loc.delete(rejects_path("ingest", 0))
    with pytest.raises(StorageError):
        run.read_rejects("ingest", 0)


def test_unmarked_or_damaged_shards_are_not_done(storage_url):
    run = _run(storage_url)
    run.write_shard("ingest", 1, _ingest_data(2), _ingest_rejects(), "ingest", "ingest_rejects", {}, {})
    # data without a marker (a crash before the marker) and a damaged marker
    run.loc.write_bytes(data_path("ingest", 2), parquet_bytes(_ingest_data(2)))
    run.loc.write_bytes(done_path("ingest", 3), b'{"stage": "ingest", "shard_id": 3')
    run.loc.write_bytes("ingest/done/notes.txt", b"not a marker")
    assert sorted(run.markers("ingest")) == [1]
    assert run.marker("ingest", 2) is None
    assert run.marker("ingest", 3) is None
    with pytest.raises(RunFolderError, match="not done"):
        run.read_data("ingest", 2)


# --- run.json and manifest ----------------------------------------------------------------------

def test_run_json_round_trip(storage_url):
    run = _run(storage_url)
    assert run.read_run_info() is None
    info = dict(format=RUN_FORMAT, job={"name": "x", "input": {"prompts": ["/a", "s3://b/c"]}},
                fingerprint="f" * 64, shards=3, text="naïve – ✓")
    run.write_run_info(info)
    assert run.loc.list_names("") == [RUN_JSON]
    assert _run(storage_url).read_run_info() == info


def test_run_json_that_is_broken_or_foreign_is_refused(storage_url):
    run = _run(storage_url)
    run.loc.write_bytes(RUN_JSON, b"{not json")
    with pytest.raises(RunFolderError, match="--new-run"):
        run.read_run_info()
    run.loc.write_bytes(RUN_JSON, json.dumps({"format": "something-else/3"}).encode())
    with pytest.raises(RunFolderError, match="not an lmd-batch run"):
        run.read_run_info()


def test_manifest_round_trip(storage_url):
    run = _run(storage_url)
    with pytest.raises(RunFolderError, match="missing"):
        run.read_manifest()
    rows = _manifest_rows()
    digest = run.write_manifest(pa.Table.from_pylist(rows, schema=get_schema("manifest")))
    assert run.loc.exists(MANIFEST)
    assert digest == run.manifest_sha256() == sha256(run.loc.read_bytes(MANIFEST))
    back = _run(storage_url).read_manifest()
    assert back.to_pylist() == rows
    assert back.schema.metadata[b"lmd_batch.schema"] == b"manifest/1"
    assert back.schema.field("shard_id").type == pa.int32()
    assert not back.schema.field("shard_id").nullable


# --- schema checks happen before anything is written -------------------------------------------

def _bad_tables():
    good = _ingest_data(2)
    return {
        "missing column": good.drop_columns(["row"]),
        "extra column": good.append_column("extra", pa.array([1, 2])),
        "wrong order": good.select(["prompt", "prompt_id", "samples", "source", "row"]),
        "null in non-nullable": good.set_column(1, "prompt", pa.array(["ok", None], pa.string())),
        "lossy cast": good.set_column(2, "samples", pa.array(["one", "two"])),
    }


@pytest.mark.parametrize("case", list(_bad_tables()))
def test_schema_violations_raise_before_writing(storage_url, case):
    run = _run(storage_url)
    bad = _bad_tables()[case]
    with pytest.raises(ValueError):
        run.write_shard("ingest", 0, bad, _ingest_rejects(), "ingest", "ingest_rejects", {}, {})
    # bad rejects with good data: still nothing written (the data must not land without its rejects)
    bad_rejects = _ingest_rejects().drop_columns(["reason"])
    with pytest.raises(ValueError):
        run.write_shard("ingest", 0, _ingest_data(2), bad_rejects, "ingest", "ingest_rejects", {}, {})
    assert run.loc.is_empty()
    assert run.markers("ingest") == {}


def test_manifest_schema_violation_raises_before_writing(storage_url):
    run = _run(storage_url)
    rows = _manifest_rows()
    rows[1]["source"] = None
    with pytest.raises(ValueError, match="source"):
        run.write_manifest(pa.Table.from_pylist(rows, schema=get_schema("manifest")))
    with pytest.raises(ValueError):
        run.write_manifest(pa.Table.from_pylist([{"shard_id": 0}]))
    assert run.loc.is_empty()


# --- storage failures -------------------------------------------------------------------------

def _closed_port_options(port: int) -> dict:
    return {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing",
            "config_kwargs": {"connect_timeout": 1, "read_timeout": 1,
                              "retries": {"max_attempts": 1, "mode": "standard"}}}


def test_unreachable_s3_gives_one_line_storage_error():
    port = free_port()  # nothing listens there
    url = "s3://lmd-test/unreachable-run"
    loc = Location(url, _closed_port_options(port))
    for op, call in [("write", lambda: loc.write_bytes("run.json", b"{}")),
                     ("read", lambda: loc.read_bytes("run.json")),
                     ("list", lambda: loc.list_names("ingest/done"))]:
        with pytest.raises(StorageError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg, msg
        assert msg.startswith(f"storage {op} failed for {url}"), msg

    run = RunFolder(url, _closed_port_options(port))
    with pytest.raises(StorageError, match=f"{url}/{RUN_JSON}"):
        run.read_run_info()


def test_cli_status_on_unreachable_s3_is_one_line(tmp_path):
    port = free_port()
    env_extra = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1",
                 "AWS_RETRY_MODE": "standard"}
    proc = run_cli("status", "s3://lmd-test/nowhere", cwd=tmp_path, env=env_extra)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: storage") and "s3://lmd-test/nowhere" in lines[0]
