"""The export's output folder (a local path or any fsspec URL) and the files both formats share.

An export owns its folder: it refuses a folder that already holds files, unless asked to
overwrite a previous export of the same format, and then deletes only the entries that format
writes (so a typo in OUT cannot wipe an unrelated folder). OUT may not lie inside the run folder.
Files are written whole through the run folder's Location (temp file + rename on local disk, whole
objects on object stores); files built up over the whole export (annotations.json) are spooled
in OUT/.tmp-export-*/ (local) or the system temp folder (object stores) and put in place last.

    OUT/rejects.jsonl    one JSON object per image left out because it could not be read:
                         layout_id, method, image_path, reason, detail (always written; empty
                         when every image was exported)
"""

from __future__ import annotations

import contextlib
import json

from lmd_batch.errors import StorageError, UserError

REJECTS = "rejects.jsonl"


def check_outside(out_url: str, run_url: str) -> None:
    """An export inside its own run folder would become part of the run (and trip its checks)."""
    out, run = out_url.rstrip("/") + "/", run_url.rstrip("/") + "/"
    if out.startswith(run) or run.startswith(out):
        raise UserError(f"output folder {out_url} and run folder {run_url} overlap; export to a folder outside the run")


def open_output(url: str, entries: tuple[str, ...], overwrite: bool, storage_options: dict | None = None):
    """A Location for OUT, empty and ready; `entries` are the top-level names this format writes."""
    from lmd_batch.storage.location import Location

    out = Location(url, storage_options)
    if out.is_local:
        import os

        if os.path.exists(out.root) and not os.path.isdir(out.root):
            raise UserError(f"output {url} is a file, not a folder")
    present = out.list_names("")
    if not present:
        return out
    if not overwrite:
        raise UserError(f"output folder {url} is not empty; choose a new folder or pass --overwrite "
                        f"to replace a previous export")
    foreign = [n for n in present if n not in entries and not n.startswith(".tmp-")]  # .tmp-: a killed export
    if foreign:
        raise UserError(f"output folder {url} holds files this export does not write ({', '.join(foreign[:5])}); "
                        f"--overwrite only replaces a previous export, choose another folder")
    for name in present:
        out.delete_tree(name)
    return out


def write_rejects(out, rejects: list[dict]) -> None:
    out.write_bytes(REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())


@contextlib.contextmanager
def spool_dir(out):
    """A scratch folder for files built before they are put into OUT: inside OUT on local disk (so the
    final put is a rename and the system temp folder need not hold a large export), else a temp folder."""
    import os
    import shutil
    import tempfile

    if out.is_local:
        os.makedirs(out.root, exist_ok=True)
        path = tempfile.mkdtemp(prefix=".tmp-export-", dir=out.root)
    else:
        path = tempfile.mkdtemp(prefix="lmd-batch-export-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def put_file(out, local_path: str, rel: str) -> None:
    """Put a finished local file at OUT/rel whole: a rename on local disk, one upload elsewhere (an
    object appears only when its upload completes)."""
    import os

    if out.is_local:
        dest = out.path(rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(local_path, dest)
        return
    try:
        out.fs.put_file(local_path, out.path(rel))
    except Exception as exc:
        raise StorageError(f"storage write failed for {out.display(rel)}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
