"""Layouts: stage 1 of LMD. Each accepted prompt (x its samples) becomes a layout from the LLM.

Requests go through the run folder's request cache (a resumed or repeated shard asks nothing it
already asked); completions are parsed (JSON or LMD text), repaired and validated; a (prompt,
sample) with nothing usable left becomes a reject row with its reason and the raw completion.
"""

from __future__ import annotations

from lmd_batch.errors import UserError
from lmd_batch.pipeline.base import ShardResult, Stage
from lmd_batch.schemas import table_from_rows


class LayoutStage(Stage):
    name = "layouts"
    upstream = "ingest"
    data_schema = "layouts"
    rejects_schema = "layouts_rejects"
    needs = ("llm",)

    def __init__(self, job, run, services=None):
        from lmd_batch.layout.template import get_template
        from lmd_batch.llm.cache import RequestCache

        super().__init__(job, run, services)
        self.template = get_template(job.llm.template)
        self.cache = RequestCache(run.loc)
        self._client = None
        self._given = None

    def _client_factory(self):
        if self._client is None:
            from lmd_batch.layout.requests import make_client

            self._client = make_client(self.job, self.services["llm"])
        return self._client

    def given(self) -> dict:
        """{prompt_id: layout text} of llm.given_layouts (read once per worker), or {}."""
        if self._given is None:
            from lmd_batch.layout.given import load_given_layouts

            url = self.job.llm.given_layouts
            self._given = load_given_layouts(url, self.job.run.storage_options) if url else {}
        return self._given

    def process(self, shard: dict, upstream_table) -> ShardResult:
        from lmd_batch.layout.given import GIVEN_MODEL
        from lmd_batch.layout.requests import answer_all, layout_request, to_rows
        from lmd_batch.llm.client import Completion

        requests = [layout_request(self.job, self.template, r["prompt_id"], r["prompt"], k)
                    for r in upstream_table.to_pylist() for k in range(r["samples"])]
        given = self.given()
        for req in requests:
            if req.prompt_id in given:
                req.result = Completion(given[req.prompt_id], GIVEN_MODEL, {})
        before = self._client.requests_sent if self._client else 0
        try:
            stats = answer_all([r for r in requests if r.result is None], self.cache, self._client_factory)
            stats["given_layouts"] = sum(r.prompt_id in given for r in requests)
        except UserError as exc:
            why = self.services["llm"].call("diagnose") if "llm" in self.services else ""
            raise UserError(f"{exc}; {why}" if why else str(exc)) from None
        if self._client is not None:  # one client per worker: count only this shard's requests
            stats["llm_requests"] = self._client.requests_sent - before
        rows, rejects = [], []
        for req in requests:
            row, bad = to_rows(req, self.job, self.template)
            if req.prompt_id in given:
                for r in (row, bad):
                    if r is not None and "model" in r:
                        r["model"] = GIVEN_MODEL
            (rows.append(row) if row else rejects.append(bad))
        stats["rows_in"] = upstream_table.num_rows
        return ShardResult(table_from_rows(rows, "layouts"), table_from_rows(rejects, "layouts_rejects"), stats)
