"""Progress bars (one per stage) and the status table, for the CLI."""

from __future__ import annotations


class StageProgress:
    """A rich progress display with one bar per stage, fed by the runner's callbacks."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("shards  {task.fields[rows]} rows  {task.fields[rejects]} rejects"),
                                 TimeElapsedColumn(), console=self.console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def log(self, msg: str) -> None:
        self.progress.console.print(msg)

    def start(self, stages: list[str], total: int, done: dict[str, int]) -> None:
        for name in stages:
            self.tasks[name] = self.progress.add_task(name, total=total, completed=done.get(name, 0), rows=0, rejects=0)

    def update(self, stage, shard_id, status, rows, rejects, seconds) -> None:
        task = self.tasks.get(stage)
        if task is None or status == "skipped":
            return
        t = self.progress.tasks[task]
        self.progress.update(task, advance=1, rows=t.fields["rows"] + rows, rejects=t.fields["rejects"] + rejects)


def status_table(st: dict):
    from rich.table import Table

    table = Table(title=f"run {st['job']}: {st['run']}")
    for col in ("stage", "shards done", "rows in", "rows out", "rejects", "compute s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, s in st["stages"].items():
        table.add_row(name, f"{s['done']}/{s['total']}", str(s["rows_in"]), str(s["rows"]), str(s["rejects"]),
                      f"{s['seconds']:.1f}")
    return table
