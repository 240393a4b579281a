"""Planning and the ingest stage through the real pipeline (run_job), read back from the run folder.

Most tests use the in-process 'local' executor; one runs the same job through Ray with the run
folder on S3 (moto), since the two executors share ShardWorker.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_job_file, run_cli
from lmd_batch.config import load_job
from lmd_batch.errors import RunFolderError, UserError
from lmd_batch.pipeline.runner import run_job
from lmd_batch.pipeline.status import run_status
from lmd_batch.storage.run_folder import RunFolder, data_path, done_path


def _quiet(*_args):
    pass


def make_job(tmp_path, prompts, **overrides):
    """A loaded job reading `prompts` (paths or URLs), run folder tmp_path/run, local executor."""
    if isinstance(prompts, (str, Path)):
        prompts = [prompts]
    overrides = dict(overrides)
    overrides["input"] = dict({"prompts": [str(p) for p in prompts]}, **overrides.get("input", {}))
    return load_job(make_job_file(tmp_path, **overrides))


def ingest(job, new_run=False, events=None):
    cb = None if events is None else (lambda *ev: events.append(ev))
    return run_job(job, new_run=new_run, log=_quiet, progress=cb)


def _run(job, **kw):
    """Ingest `job` and return it (for chaining into Results)."""
    ingest(job, **kw)
    return job


class Results:
    """Everything the ingest stage left in a run folder, read through RunFolder (checksums verified)."""

    def __init__(self, job):
        self.run = RunFolder(job.run.url, job.run.storage_options)
        self.manifest = self.run.read_manifest().to_pylist()
        self.markers = self.run.markers("ingest")
        assert sorted(self.markers) == [s["shard_id"] for s in self.manifest], "every shard must be done"
        self.shards = {sid: self.run.read_data("ingest", sid).to_pylist() for sid in sorted(self.markers)}
        self.rejects_by_shard = {sid: self.run.read_rejects("ingest", sid).to_pylist() for sid in sorted(self.markers)}
        self.accepted = [r for sid in sorted(self.shards) for r in self.shards[sid]]
        self.rejects = [r for sid in sorted(self.rejects_by_shard) for r in self.rejects_by_shard[sid]]

    @property
    def ids(self):
        return [r["prompt_id"] for r in self.accepted]

    @property
    def prompts(self):
        return [r["prompt"] for r in self.accepted]

    def reasons(self) -> dict[int, str]:
        return {r["row"]: r["reason"] for r in self.rejects}


ROWS = [
    dict(id="a-1", prompt="a red apple on a table", samples=2),
    dict(id="b-2", prompt="two cats, one \"grey\", on a sofa", samples=1),
    dict(id="c-3", prompt="a blue car next to a tree", samples=3),
    dict(id="d-4", prompt="  naïve café ☕ with a dog  ", samples=1),
    dict(id="e-5", prompt="three balloons in the sky", samples=4),
]


def _write_format(folder: Path, fmt: str) -> Path:
    if fmt == "parquet":
        path = folder / "prompts.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)  # shards cut across row groups
    elif fmt == "jsonl":
        path = folder / "prompts.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    elif fmt == "csv":
        import csv

        path = folder / "prompts.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "prompt", "samples"])
            for r in ROWS:
                w.writerow([r["id"], r["prompt"], r["samples"]])
    else:
        path = folder / "prompts.txt"
        path.write_bytes("\r\n".join(r["prompt"] for r in ROWS).encode() + b"\r\n")  # CRLF, as from Windows
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "text"])
def test_formats(tmp_path, fmt):
    path = _write_format(tmp_path, fmt)
    job = make_job(tmp_path, path, input={"shard_rows": 3, "samples": 1})
    result = ingest(job)
    assert (result["shards"], result["pending"], result["stages"]) == (2, 2, ["ingest"])
    res = Results(job)
    assert [(s["row_start"], s["row_end"], s["format"]) for s in res.manifest] == [(0, 3, fmt), (3, 5, fmt)]
    assert res.rejects == []
    assert res.prompts == [r["prompt"].strip() for r in ROWS]
    assert [r["row"] for r in res.accepted] == [0, 1, 2, 3, 4]
    assert {r["source"] for r in res.accepted} == {str(path)}
    if fmt == "text":  # no ids or samples in the file: generated ids, the job's default samples
        assert res.ids == [f"p{i:09d}" for i in range(5)]
        assert [r["samples"] for r in res.accepted] == [1] * 5
    else:
        assert res.ids == [r["id"] for r in ROWS]
        assert [r["samples"] for r in res.accepted] == [r["samples"] for r in ROWS]
    assert [len(res.shards[0]), len(res.shards[1])] == [3, 2]


def test_declared_format_overrides_the_extension(tmp_path):
    path = tmp_path / "prompts.data"
    path.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "id": 7}\n')
    res_auto = Results(_run(make_job(tmp_path / "auto", path)))
    assert res_auto.prompts == ['{"prompt": "a cat"}', '{"prompt": "a dog", "id": 7}']  # read as text
    res = Results(_run(make_job(tmp_path / "jsonl", path, input={"format": "jsonl"})))
    assert res.prompts == ["a cat", "a dog"]
    assert res.ids == ["p000000000", "7"]


def test_glob_of_several_files_and_gz(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "b.txt").write_text("b0\nb1\nb2\n")
    (data / "a.txt").write_text("a0\na1\n")
    with gzip.open(data / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("c0\nc1\nc2\nc3\nc4")  # no final newline
    (data / "skip.csv").write_text("prompt\nnot matched\n")
    job = make_job(tmp_path, [str(data / "*.txt"), str(data / "*.gz")], input={"shard_rows": 2})
    ingest(job)
    res = Results(job)
    # files in sorted glob order; a shard never spans two files
    assert [(Path(s["source"]).name, s["row_start"], s["row_end"]) for s in res.manifest] == [
        ("a.txt", 0, 2), ("b.txt", 0, 2), ("b.txt", 2, 3), ("c.txt.gz", 0, 2), ("c.txt.gz", 2, 4), ("c.txt.gz", 4, 5)]
    assert res.prompts == ["a0", "a1", "b0", "b1", "b2", "c0", "c1", "c2", "c3", "c4"]
    # generated ids count rows over all files, in order
    assert res.ids == [f"p{i:09d}" for i in range(10)]
    assert [r["row"] for r in res.accepted] == [0, 1, 0, 1, 2, 0, 1, 2, 3, 4]


def test_gz_jsonl_and_csv(tmp_path):
    with gzip.open(tmp_path / "p.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(5):
            f.write(json.dumps({"id": f"j{i}", "prompt": f"jsonl prompt {i}"}) + "\n")
    with gzip.open(tmp_path / "p.csv.gz", "wt", encoding="utf-8", newline="") as f:
        f.write('prompt,id\n"csv, prompt 0",c0\n"multi\nline",c1\ncsv prompt 2,c2\n')
    job = make_job(tmp_path, [tmp_path / "p.jsonl.gz", tmp_path / "p.csv.gz"], input={"shard_rows": 2})
    ingest(job)
    res = Results(job)
    assert res.ids == ["j0", "j1", "j2", "j3", "j4", "c0", "c1", "c2"]
    assert res.prompts[5:] == ["csv, prompt 0", "multi\nline", "csv prompt 2"]
    assert [s["format"] for s in res.manifest] == ["jsonl"] * 3 + ["csv"] * 2


def test_bz2_text(tmp_path):
    import bz2

    path = tmp_path / "p.txt.bz2"
    path.write_bytes(bz2.compress(b"a cat\na dog\na bird\n"))
    job = make_job(tmp_path, path, input={"shard_rows": 2})
    ingest(job)
    assert Results(job).prompts == ["a cat", "a dog", "a bird"]


def test_generated_ids_are_stable(tmp_path):
    lines = [f"prompt {i}" for i in range(7)]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    ids = []
    for shard_rows in (1, 3, 100):
        job = make_job(tmp_path / f"s{shard_rows}", tmp_path / "p.txt", input={"shard_rows": shard_rows})
        ingest(job)
        res = Results(job)
        assert len(res.manifest) == -(-7 // shard_rows)
        ids.append(list(zip(res.ids, res.prompts)))
    assert ids[0] == ids[1] == ids[2] == [(f"p{i:09d}", f"prompt {i}") for i in range(7)]
    # a rejected row keeps its place: the rows after it keep their ids
    (tmp_path / "q.txt").write_text("prompt 0\n\nprompt 2\n")
    res = Results(_run(make_job(tmp_path / "q", tmp_path / "q.txt")))
    assert res.ids == ["p000000000", "p000000002"]
    assert [r["prompt_id"] for r in res.rejects] == ["p000000001"]


def test_duplicate_ids_first_wins_across_shards_and_files(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "x", "prompt": "first x"},
        {"id": "y", "prompt": "first y"},
        {"id": "z", "prompt": "first z"},
        {"id": "x", "prompt": "second x"},   # another shard (shard_rows 2)
        {"id": 5, "prompt": "int id 5"},
        {"id": "5", "prompt": "string id 5"},  # same id as the integer 5
    ]) + "\n")
    with open(tmp_path / "b.csv", "w") as f:
        f.write("id,prompt\ny,second y from another file\nw,first w\n")
    job = make_job(tmp_path, [tmp_path / "a.jsonl", tmp_path / "b.csv"], input={"shard_rows": 2})
    ingest(job)
    res = Results(job)
    assert res.ids == ["x", "y", "z", "5", "w"]
    assert res.prompts == ["first x", "first y", "first z", "int id 5", "first w"]
    dups = [(Path(r["source"]).name, r["row"], r["prompt_id"], r["reason"]) for r in res.rejects]
    assert dups == [("a.jsonl", 3, "x", "duplicate_id"), ("a.jsonl", 5, "5", "duplicate_id"),
                    ("b.csv", 0, "y", "duplicate_id")]
    assert all("already appears" in r["detail"] for r in res.rejects)
    assert res.manifest[1]["duplicate_rows"] == [3]
    assert res.manifest[2]["duplicate_rows"] == [5]


def test_bad_rows_become_rejects_with_reasons(tmp_path):
    huge = "x" * 1_000_000
    text_lines = [
        b"a good prompt",                   # 0
        b"",                                # 1 empty
        b"   \t ",                          # 2 only whitespace
        huge.encode(),                      # 3 too long
        b"caf\xe9 au lait \xff\xfe",        # 4 Latin-1, not UTF-8
        b"\x00\x01\x02PK\x03\x04\x14\x00\x7f", # 5 binary junk (valid UTF-8)
        b"another good prompt",             # 6
    ]
    (tmp_path / "p.txt").write_bytes(b"\n".join(text_lines) + b"\n")
    job = make_job(tmp_path / "text", tmp_path / "p.txt", input={"shard_rows": 3})
    ingest(job)
    res = Results(job)
    assert res.prompts == ["a good prompt", "another good prompt"]
    assert res.reasons() == {1: "empty", 2: "empty", 3: "too_long", 4: "invalid_utf8", 5: "control_characters"}
    by_row = {r["row"]: r for r in res.rejects}
    long = by_row[3]
    assert long["chars"] == 1_000_000
    assert long["preview"] == "x" * 200
    assert "input.max_prompt_chars" in long["detail"] and "1000000" in long["detail"]
    assert by_row[4]["preview"] == "caf\\xe9 au lait \\xff\\xfe"
    assert by_row[4]["chars"] == len(text_lines[4])
    assert by_row[5]["preview"].startswith("\x00\x01\x02PK")
    assert all(r["prompt_id"] == f"p{r['row']:09d}" for r in res.rejects)
    assert all(r["source"] == str(tmp_path / "p.txt") and r["detail"] for r in res.rejects)
    st = run_status(res.run)["stages"]["ingest"]
    assert (st["rows_in"], st["rows"], st["rejects"]) == (7, 2, 5)


def test_bad_jsonl_rows_become_rejects(tmp_path):
    lines = [
        json.dumps({"prompt": "ok one", "samples": 2}),   # 0
        '{"prompt": "broken json"',                       # 1
        "[1, 2, 3]",                                      # 2 not an object
        json.dumps({"id": "no-prompt"}),                  # 3
        json.dumps({"prompt": 42}),                       # 4
        json.dumps({"prompt": "zero", "samples": 0}),     # 5
        json.dumps({"prompt": "word", "samples": "two"}),  # 6
        json.dumps({"prompt": "half", "samples": 1.5}),   # 7
        json.dumps({"prompt": "many", "samples": 5000}),  # 8
        json.dumps({"prompt": "bool", "samples": True}),  # 9
        json.dumps({"prompt": "float ok", "samples": 3.0}),  # 10
        json.dumps({"prompt": "id list", "id": [1]}),     # 11
        "",                                               # 12 blank line
        json.dumps({"prompt": "tab\tand newline\n ok"}),   # 13 (\t and \n are not junk)
        json.dumps({"prompt": "bell \u0007"}),            # 14
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = make_job(tmp_path, tmp_path / "p.jsonl", input={"shard_rows": 4, "samples": 1})
    ingest(job)
    res = Results(job)
    assert res.prompts == ["ok one", "float ok", "tab\tand newline\n ok"]
    assert [r["samples"] for r in res.accepted] == [2, 3, 1]
    assert res.reasons() == {1: "bad_row", 2: "bad_row", 3: "bad_row", 4: "bad_row", 5: "bad_samples",
                             6: "bad_samples", 7: "bad_samples", 8: "bad_samples", 9: "bad_samples",
                             11: "bad_row", 12: "empty", 14: "control_characters"}
    by_row = {r["row"]: r for r in res.rejects}
    assert "not valid JSON" in by_row[1]["detail"]
    assert by_row[1]["preview"] == '{"prompt": "broken json"'
    assert "no 'prompt'" in by_row[3]["detail"]
    assert by_row[3]["prompt_id"] == "no-prompt"


def test_bad_rows_in_parquet_and_csv(tmp_path):
    table = pa.table({"prompt": pa.array([b"fine", b"\xff\xfe", b"", b"ok \x01"], pa.binary()),
                      "samples": pa.array([1, 2, None, 1], pa.int64())})
    pq.write_table(table, tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_bytes(b"prompt,samples\nfine csv,1\nbad \xff utf8,1\ntoo,many,fields\n,1\nsix,six\n")
    job = make_job(tmp_path, [tmp_path / "p.parquet", tmp_path / "p.csv"], input={"shard_rows": 10})
    ingest(job)
    res = Results(job)
    assert res.prompts == ["fine", "fine csv"]
    got = sorted((Path(r["source"]).suffix, r["row"], r["reason"]) for r in res.rejects)
    assert got == [(".csv", 1, "invalid_utf8"), (".csv", 2, "bad_row"), (".csv", 3, "empty"), (".csv", 4, "bad_samples"),
                   (".parquet", 1, "invalid_utf8"), (".parquet", 2, "empty"), (".parquet", 3, "control_characters")]


# --- whole inputs that cannot be used: one clear error through the real CLI ----------------------

def _cli_run_fails(tmp_path, prompts, expect):
    job = make_job_file(tmp_path, input={"prompts": prompts})
    proc = run_cli("run", job, "--executor", "local", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: "), err
    assert expect in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")  # nothing planned
    return err


def test_missing_prompt_file(tmp_path):
    err = _cli_run_fails(tmp_path, "nope.jsonl", "prompt file not found")
    assert str(tmp_path / "nope.jsonl") in err
    _cli_run_fails(tmp_path, "nothing/*.jsonl", "no prompt file matches")
    (tmp_path / "folder").mkdir()
    _cli_run_fails(tmp_path, "folder", "is a folder")


def test_corrupt_parquet(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(os.urandom(2000))
    err = _cli_run_fails(tmp_path, "junk.parquet", "cannot read Parquet file")
    assert "junk.parquet" in err
    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "cut.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "cut.parquet").read_bytes()[:-30])
    _cli_run_fails(tmp_path, "cut.parquet", "cut.parquet")
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "noprompt.parquet")
    _cli_run_fails(tmp_path, "noprompt.parquet", "has no 'prompt' column")


def _parquet_with_damaged_row_group(path: Path) -> None:
    """200 rows in 4 row groups; the data pages of row group 1 are overwritten (the footer is fine)."""
    pq.write_table(pa.table({"prompt": [f"prompt number {i} " * 20 for i in range(200)]}), path,
                   compression="zstd", row_group_size=50)
    raw = bytearray(path.read_bytes())
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    for i in range(col.data_page_offset + 40, col.data_page_offset + col.total_compressed_size - 10):
        raw[i] = (raw[i] * 7 + 13) % 256
    path.write_bytes(bytes(raw))


def test_parquet_corrupt_inside_a_row_group(tmp_path):
    """Planning passes (the footer is fine); the damaged shard fails with a clear error and the
    shard before it stays done."""
    _parquet_with_damaged_row_group(tmp_path / "mid.parquet")
    job = make_job_file(tmp_path, input={"prompts": "mid.parquet", "shard_rows": 50})
    proc = run_cli("run", job, "--executor", "local", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = proc.stderr[proc.stderr.index("error: "):]
    assert err.startswith(f"error: cannot read Parquet file {tmp_path / 'mid.parquet'}: OSError:"), err
    assert sorted(RunFolder(str(tmp_path / "run")).markers("ingest")) == [0]


def test_parquet_corrupt_inside_a_row_group_is_a_one_line_error(tmp_path):
    _parquet_with_damaged_row_group(tmp_path / "mid.parquet")
    job = load_job(make_job_file(tmp_path, input={"prompts": "mid.parquet", "shard_rows": 50}))
    with pytest.raises(UserError) as err:
        ingest(job)
    assert "\n" not in str(err.value).strip(), repr(str(err.value))


def test_utf8_bom_is_ignored(tmp_path):
    (tmp_path / "p.txt").write_bytes("\ufeffa cat\na dog\n".encode())
    (tmp_path / "p.jsonl").write_bytes("\ufeff".encode() + b'{"prompt": "a bird"}\n')
    job = make_job(tmp_path, [tmp_path / "p.txt", tmp_path / "p.jsonl"])
    ingest(job)
    res = Results(job)
    assert res.rejects == []
    assert res.prompts == ["a cat", "a dog", "a bird"]


def test_empty_inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    err = _cli_run_fails(tmp_path, "empty.txt", "no prompts")
    assert "empty.txt" in err
    (tmp_path / "header.csv").write_text("id,prompt\n")
    _cli_run_fails(tmp_path, "header.csv", "no prompts")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    _cli_run_fails(tmp_path, "empty.parquet", "no prompts")


def test_csv_without_prompt_column(tmp_path):
    (tmp_path / "p.csv").write_text("id,text\n1,a cat\n")
    err = _cli_run_fails(tmp_path, "p.csv", "has no 'prompt' column")
    assert "p.csv" in err and "'text'" in err


# --- resume -----------------------------------------------------------------------------------

def _five_prompts(tmp_path) -> Path:
    path = tmp_path / "p.jsonl"
    rows = [{"id": f"r{i}", "prompt": f"prompt {i}" + (" long" * 10 if i == 3 else "")} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _snapshot(run: RunFolder) -> dict:
    """Every byte of data, rejects and manifest; markers without their timings (stats.seconds
    varies run to run, by design: timings live in markers so that data bytes do not vary)."""
    out = {}
    for folder in ("ingest/data", "ingest/rejects", "ingest/done", "manifest"):
        for name in run.loc.list_names(folder):
            data = run.loc.read_bytes(f"{folder}/{name}")
            if folder == "ingest/done":
                marker = json.loads(data)
                marker.get("stats", {}).pop("seconds", None)
                data = json.dumps(marker, sort_keys=True).encode()
            out[f"{folder}/{name}"] = data
    out["run.json"] = run.loc.read_bytes("run.json")
    return out


def test_second_run_does_nothing(tmp_path):
    job = make_job(tmp_path, _five_prompts(tmp_path), input={"shard_rows": 2})
    events = []
    first = ingest(job, events=events)
    assert (first["shards"], first["pending"]) == (3, 3)
    assert sorted((e[0], e[1], e[2]) for e in events) == [("ingest", i, "done") for i in range(3)]
    run = RunFolder(job.run.url)
    before = _snapshot(run)
    events.clear()
    second = ingest(job, events=events)
    assert (second["shards"], second["pending"]) == (3, 0)
    assert events == []
    assert _snapshot(run) == before


def test_resume_redoes_only_unfinished_shards(tmp_path):
    job = make_job(tmp_path, _five_prompts(tmp_path), input={"shard_rows": 2})
    ingest(job)
    run = RunFolder(job.run.url)
    before = _snapshot(run)
    # a crash after shard 1's data but before its marker; a damaged marker for shard 2
    run.loc.delete(done_path("ingest", 1))
    run.loc.write_bytes(data_path("ingest", 1), b"half a file")
    run.loc.write_bytes(done_path("ingest", 2), b"{")
    events = []
    result = ingest(job, events=events)
    assert result["pending"] == 2
    assert sorted(e[1] for e in events if e[2] == "done") == [1, 2]
    assert _snapshot(run) == before  # recomputed shards are bit-identical


def test_marker_of_another_manifest_is_not_trusted(tmp_path):
    job = make_job(tmp_path, _five_prompts(tmp_path), input={"shard_rows": 2})
    ingest(job)
    run = RunFolder(job.run.url)
    marker = json.loads(run.loc.read_bytes(done_path("ingest", 0)))
    marker["upstream"] = {"manifest": "0" * 64}
    run.loc.write_bytes(done_path("ingest", 0), json.dumps(marker).encode())
    assert run_status(run)["stages"]["ingest"]["done"] == 2
    assert ingest(job)["pending"] == 1
    assert run_status(run)["stages"]["ingest"]["done"] == 3


def test_changed_config_is_refused(tmp_path):
    prompts = _five_prompts(tmp_path)
    job = make_job(tmp_path, prompts, input={"shard_rows": 2})
    ingest(job)
    changed = make_job(tmp_path, prompts, input={"shard_rows": 2, "max_prompt_chars": 20})
    with pytest.raises(RunFolderError) as err:
        ingest(changed)
    msg = str(err.value)
    assert "--new-run" in msg and "input.max_prompt_chars: 2000 -> 20" in msg
    # where/how settings are not part of the check
    moved = make_job(tmp_path, prompts, input={"shard_rows": 2}, name="renamed",
                     ray={"executor": "local", "num_cpus": 3})
    assert ingest(moved)["pending"] == 0


def test_new_run_starts_over(tmp_path):
    prompts = _five_prompts(tmp_path)
    job = make_job(tmp_path, prompts, input={"shard_rows": 2})
    ingest(job)
    assert len(Results(job).rejects) == 0
    changed = make_job(tmp_path, prompts, input={"shard_rows": 4, "max_prompt_chars": 20})
    result = ingest(changed, new_run=True)
    assert (result["shards"], result["pending"]) == (2, 2)
    res = Results(changed)
    assert res.run.loc.list_names("ingest/done") == ["shard-00000.json", "shard-00001.json"]
    assert res.run.loc.list_names("ingest/data") == ["shard-00000.parquet", "shard-00001.parquet"]
    assert res.reasons() == {3: "too_long"}
    assert res.run.read_run_info()["job"]["input"]["max_prompt_chars"] == 20
    assert ingest(changed)["pending"] == 0


def test_new_run_on_every_backend(tmp_path, storage_url):
    prompts = _five_prompts(tmp_path)
    run_cfg = {"url": storage_url["url"], "storage_options": storage_url["storage_options"]}
    job = make_job(tmp_path, prompts, input={"shard_rows": 2}, run=run_cfg)
    assert ingest(job)["pending"] == 3
    assert len(Results(job).accepted) == 5
    assert ingest(job)["pending"] == 0
    changed = make_job(tmp_path, prompts, input={"shard_rows": 5, "max_prompt_chars": 20}, run=run_cfg)
    with pytest.raises(RunFolderError, match="--new-run"):
        ingest(changed)
    assert ingest(changed, new_run=True)["pending"] == 1
    res = Results(changed)
    assert len(res.manifest) == 1 and res.reasons() == {3: "too_long"}
    assert res.run.loc.list_names("ingest/data") == ["shard-00000.parquet"]
    # run.json holds no credentials
    opts = storage_url["storage_options"]
    saved = res.run.read_run_info()["job"]["run"]["storage_options"]
    assert set(saved) == set(opts)
    if "secret" in opts:
        assert saved["key"] == saved["secret"] == "***"
        assert saved["endpoint_url"] == opts["endpoint_url"]
        assert opts["secret"].encode() not in res.run.loc.read_bytes("run.json")


def test_changed_input_file_is_refused(tmp_path):
    prompts = _five_prompts(tmp_path)
    job = make_job(tmp_path, prompts, input={"shard_rows": 2})
    ingest(job)
    with open(prompts, "a") as f:
        f.write(json.dumps({"prompt": "one more"}) + "\n")
    with pytest.raises(RunFolderError, match="input prompt files changed.*--new-run"):
        ingest(job)
    prompts.write_text(prompts.read_text().replace("prompt 1", "prompt X"))  # same size, new content
    with pytest.raises(RunFolderError, match="changed"):
        ingest(job)
    assert ingest(job, new_run=True)["pending"] == 3
    assert "one more" in Results(job).prompts


def test_run_killed_between_manifest_and_run_json_is_planned_again(tmp_path):
    """What a driver SIGKILLed while planning leaves: manifest/ and a temporary run.json."""
    prompts = _five_prompts(tmp_path)
    job = make_job(tmp_path, prompts)
    root = Path(job.run.url)
    (root / "manifest").mkdir(parents=True)
    (root / "manifest" / "shards.parquet").write_bytes(b"PAR1 half")
    (root / ".tmp-123-abcd1234-run.json").write_bytes(b'{"format"')
    assert ingest(job)["pending"] == 3
    assert not list(root.glob(".tmp-*"))
    assert "prompt 1" in Results(job).prompts


def test_foreign_run_folder_is_refused(tmp_path):
    prompts = _five_prompts(tmp_path)
    job = make_job(tmp_path, prompts)
    Path(job.run.url).mkdir()
    (Path(job.run.url) / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RunFolderError, match="not an lmd-batch run"):
        ingest(job)
    with pytest.raises(RunFolderError, match="refusing to delete"):
        ingest(job, new_run=True)
    assert (Path(job.run.url) / "holiday.jpg").exists()


# --- other executors and backends -------------------------------------------------------------

def test_local_executor_on_memory(tmp_path):
    import uuid

    url = f"memory://lmd-tests/ingest-{uuid.uuid4().hex[:8]}"
    prompts = _five_prompts(tmp_path)
    job = make_job(tmp_path, prompts, input={"shard_rows": 2, "max_prompt_chars": 20}, run={"url": url})
    assert ingest(job)["pending"] == 3
    res = Results(job)
    assert res.ids == ["r0", "r1", "r2", "r4"] and res.reasons() == {3: "too_long"}
    assert not (tmp_path / "run").exists() and not Path("memory:").exists()  # nothing on local disk
    assert ingest(job)["pending"] == 0
    res.run.clear()


@pytest.mark.slow
def test_ray_executor_on_moto_s3(tmp_path, moto_s3):
    import uuid

    import ray

    url = f"{moto_s3['url']}/ray-{uuid.uuid4().hex[:8]}"
    lines = [f"prompt {i}" for i in range(9)]
    lines[4] = ""
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    job = make_job(tmp_path, tmp_path / "p.txt", input={"shard_rows": 2},
                   run={"url": url, "storage_options": moto_s3["storage_options"]},
                   ray={"executor": "ray", "num_cpus": 2, "object_store_mb": 128,
                        "stages": {"ingest": {"num_cpus": 0.5, "pool_size": 2}}})
    events = []
    try:
        result = ingest(job, events=events)
    finally:
        ray.shutdown()
    assert (result["shards"], result["pending"]) == (5, 5)
    assert sorted(e[1] for e in events if e[2] == "done") == [0, 1, 2, 3, 4]
    res = Results(job)
    assert res.ids == [f"p{i:09d}" for i in range(9) if i != 4]
    assert res.reasons() == {4: "empty"}
    st = run_status(res.run)
    assert st["stages"]["ingest"]["done"] == st["stages"]["ingest"]["total"] == 5
    # resuming needs no Ray at all: nothing is pending
    assert ingest(job)["pending"] == 0
    assert not ray.is_initialized()


def test_run_json_redacts_storage_secrets_but_keeps_settings(tmp_path):
    from lmd_batch.pipeline.prepare import redact

    job = {"input": {"storage_options": {"key": "AKIA123", "secret": "s3cr3t", "client_kwargs": {"region_name": "x"},
                                         "token": ""}},
           "run": {"storage_options": {"password": "pw", "anon": False}},
           "llm": {"max_tokens": 900, "api_key_env": "MY_KEY"}}
    out = redact(job)
    assert out["input"]["storage_options"] == {"key": "***", "secret": "***", "client_kwargs": {"region_name": "x"},
                                               "token": ""}
    assert out["run"]["storage_options"] == {"password": "***", "anon": False}
    assert out["llm"] == {"max_tokens": 900, "api_key_env": "MY_KEY"}

    prompts = _five_prompts(tmp_path)
    job = make_job(tmp_path, prompts, llm={"max_tokens": 321})
    ingest(job)
    info = json.loads((Path(job.run.url) / "run.json").read_text())
    assert info["job"]["llm"]["max_tokens"] == 321
