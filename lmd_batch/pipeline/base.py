"""What a stage is: a class that turns one shard of its upstream into one shard of output rows.

The stage only computes. `ShardWorker` (pipeline/worker.py) does the bookkeeping around it:
skipping marked shards, reading the upstream, checking schemas, writing data, rejects and the
marker, and reporting progress. So a new stage is a small class plus a registry line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class ShardResult:
    data: object  # pyarrow.Table in the stage's data schema
    rejects: object  # pyarrow.Table in the stage's rejects schema
    stats: dict = field(default_factory=dict)


class Stage:
    """Base class of the pipeline stages.

    name: the stage's folder in the run folder.
    upstream: the stage whose marked shards it reads; None for the first stage (reads the manifest).
    data_schema / rejects_schema: schema names in schemas/.
    """

    name: ClassVar[str]
    upstream: ClassVar[str | None] = None
    data_schema: ClassVar[str]
    rejects_schema: ClassVar[str]
    #: Run-wide services the stage needs (see pipeline/services.py), e.g. ("llm",).
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, job, run, services=None):
        """Load models and clients here: it runs once per worker (Ray actor), not once per shard.

        `services` maps each name in `needs` to a `ServiceRef` shared by all workers of the run.
        """
        self.job = job
        self.run = run
        self.services = services or {}

    def process(self, shard: dict, upstream_table) -> ShardResult:
        """Compute one shard. `shard` is the shard's manifest row; `upstream_table` the upstream
        stage's data for the shard (None for the first stage)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release servers or models (called when the stage's work ends)."""
