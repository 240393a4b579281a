"""Every `lmd-batch ...` command line README.md shows names a real command and real flags.

Why: README is the first thing users copy from; a renamed or dropped flag there is a broken promise
that no other test notices (the standards: "every CLI flag it shows must exist").
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[str]:
    lines = README.read_text().splitlines()
    return [ln.strip() for ln in lines if re.match(r"^\s*lmd-batch\s", ln)]


def test_readme_commands_and_flags_exist():
    import typer

    from lmd_batch.cli import app

    root = typer.main.get_command(app)
    lines = _command_lines()
    assert len(lines) >= 20  # the command summary and the examples
    problems = []
    for line in lines:
        code = line.split("#", 1)[0]
        words = code.split()[1:]
        cmd, path = root, ["lmd-batch"]
        while hasattr(cmd, "commands") and words and words[0].split("|")[0] in cmd.commands:
            names = words.pop(0).split("|")  # "coco|parquet": each alternative is a command
            missing = [n for n in names if n not in cmd.commands]
            if missing:
                problems.append(f"{line!r}: no command {', '.join(missing)} under {' '.join(path)}")
            cmd = cmd.commands[names[0]]
            path.append(names[0])
        if hasattr(cmd, "commands"):  # a group: the line names no command of it
            problems.append(f"{line!r}: no such command under {' '.join(path)}")
            continue
        known = {opt for p in cmd.params for opt in p.opts + p.secondary_opts}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code):
            if flag not in known:
                problems.append(f"{line!r}: {' '.join(path)} has no {flag}")
    assert not problems, "\n".join(problems)
