"""Turning (prompt, sample) or (layout, instruction) into LLM requests, and answers into rows.

Shared by the layout stage and `lmd-batch edit`, so both build identical request bodies and cache
keys and write rows of the same schema. The cache sits between: `answer_all` asks the endpoint
only for keys the run folder's cache does not hold, and stores each answer as it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmd_batch.seeds import derive_seed

RAW_CHARS = 100_000


@dataclass
class LayoutRequest:
    """One request to make (or find in the cache), with what its output row needs."""

    layout_id: str
    prompt_id: str
    sample: int
    prompt: str
    seed: int
    body: dict
    key_fields: dict
    parent_layout_id: str | None = None
    edit_round: int = 0
    instruction: str | None = None
    key: str = ""
    result: object = None  # Completion | LLMFailure once answered
    cached: bool = False
    extra: dict = field(default_factory=dict)


def sampling(job, seed: int, structured: bool, schema: dict | None) -> dict:
    """Request fields besides the prompt: LMD's defaults plus structured decoding."""
    from lmd_batch.layout.template import TEXT_STOP

    cfg = job.llm
    out = dict(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed)
    if structured:
        if cfg.mode == "chat":
            out["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "layout", "schema": schema, "strict": True}}
        else:
            out["structured_outputs"] = {"json": schema}  # vLLM's field for /v1/completions
    else:
        out["stop"] = list(TEXT_STOP)
    return out


def _key_fields(job, template, prompt: str, sample: int, seed: int, conversation=None) -> dict:
    cfg = job.llm
    fields = dict(model=cfg.model, template=template.id, template_fp=template.fingerprint(), mode=cfg.mode,
                  structured=cfg.structured, prompt=prompt, sample=sample, seed=seed, temperature=cfg.temperature,
                  max_tokens=cfg.max_tokens, max_boxes=cfg.max_boxes)
    if conversation is not None:
        fields["conversation"] = conversation
    return fields


def layout_request(job, template, prompt_id: str, prompt: str, sample: int) -> LayoutRequest:
    from lmd_batch.llm.cache import request_key

    cfg = job.llm
    seed = derive_seed(job.seed, "layout", prompt, sample)
    schema = template.json_schema(cfg.max_boxes) if cfg.structured else None
    if cfg.mode == "chat":
        body = dict(messages=template.chat_messages(prompt, cfg.structured))
    else:
        body = dict(prompt=template.completion_prompt(prompt, cfg.structured))
    body.update(sampling(job, seed, cfg.structured, schema))
    fields = _key_fields(job, template, prompt, sample, seed)
    return LayoutRequest(f"{prompt_id}#{sample}", prompt_id, sample, prompt, seed, body, fields,
                         key=request_key(fields))


def edit_request(job, template, parent: dict, history: list[tuple[str, object]], instruction: str,
                 edit_round: int) -> LayoutRequest:
    """A chat request revising `parent` (a layouts row); `history` is the conversation so far."""
    from lmd_batch.errors import UserError
    from lmd_batch.layout.template import render_json
    from lmd_batch.llm.cache import request_key

    cfg = job.llm
    if cfg.mode != "chat":
        raise UserError("editing needs llm.mode: chat (a conversation)")
    seed = derive_seed(job.seed, "edit", parent["layout_id"], instruction, edit_round)
    schema = template.json_schema(cfg.max_boxes) if cfg.structured else None
    body = dict(messages=template.edit_messages(parent["prompt"], history, instruction, cfg.structured))
    body.update(sampling(job, seed, cfg.structured, schema))
    conversation = [[turn, render_json(layout)] for turn, layout in history] + [[instruction, None]]
    fields = _key_fields(job, template, parent["prompt"], parent["sample"], seed, conversation)
    root = parent["layout_id"].split("/e")[0]
    return LayoutRequest(f"{root}/e{edit_round}", parent["prompt_id"], parent["sample"], parent["prompt"], seed,
                         body, fields, parent_layout_id=parent["layout_id"], edit_round=edit_round,
                         instruction=instruction, key=request_key(fields))


def answer_all(requests: list[LayoutRequest], cache, client_factory) -> dict:
    """Fill `result` of every request from the cache or the endpoint; returns counters.

    `client_factory()` is called only when something is missing from the cache, so a fully cached
    shard never starts (or even contacts) a server.
    """
    from lmd_batch.llm.client import Completion, LLMFailure

    missing: dict[str, list[LayoutRequest]] = {}  # identical requests (same key) are asked once
    for r in requests:
        if r.key in missing:
            missing[r.key].append(r)
            continue
        hit = cache.get(r.key)
        if hit is not None:
            r.result, r.cached = Completion(hit["text"], hit.get("finish_reason"), hit.get("usage") or {}), True
        else:
            missing[r.key] = [r]
    asked = [group[0] for group in missing.values()]
    stats = dict(cache_hits=len(requests) - sum(len(g) for g in missing.values()), llm_requests=0, llm_failures=0,
                 prompt_tokens=0, completion_tokens=0)
    if asked:
        client = client_factory()

        def store(i, result):
            req = asked[i]
            if isinstance(result, Completion):
                cache.put(req.key, result.text, result.finish_reason, result.usage, req.key_fields)
            for same in missing[req.key]:
                same.result = result

        client.run([r.body for r in asked], on_result=store)
        stats["llm_requests"] = client.requests_sent
        down = [r.result for r in asked if isinstance(r.result, LLMFailure) and r.result.reason == "llm_unreachable"]
        if down:
            from lmd_batch.errors import UserError

            # Not a reject: the prompts are fine, the endpoint is down. Fail the shard (it stays
            # unmarked, answers so far are cached) so that a rerun asks again.
            raise UserError(f"the LLM endpoint is unreachable: {len(down)} of {len(asked)} requests could not "
                            f"connect ({down[0].detail}); answered requests are cached, rerun to continue")
        for r in asked:
            if isinstance(r.result, LLMFailure):
                stats["llm_failures"] += 1
            else:
                stats["prompt_tokens"] += int(r.result.usage.get("prompt_tokens") or 0)
                stats["completion_tokens"] += int(r.result.usage.get("completion_tokens") or 0)
    return stats


def to_rows(req: LayoutRequest, job, template) -> tuple[dict | None, dict | None]:
    """(layouts row, None) or (None, reject row) for an answered request."""
    from lmd_batch.layout.repair import LayoutRejected, read_layout
    from lmd_batch.llm.client import LLMFailure

    base = dict(layout_id=req.layout_id, prompt_id=req.prompt_id, sample=req.sample,
                parent_layout_id=req.parent_layout_id, edit_round=req.edit_round, prompt=req.prompt)
    if isinstance(req.result, LLMFailure):
        return None, dict(base, reason=req.result.reason, detail=req.result.detail[:500], raw=None,
                          cache_key=req.key)
    raw = req.result.text
    try:
        layout, form, notes = read_layout(raw, max_boxes=job.llm.max_boxes)
    except LayoutRejected as exc:
        return None, dict(base, reason=exc.reason, detail=str(exc.detail)[:500], raw=raw[:RAW_CHARS],
                          cache_key=req.key)
    if req.result.finish_reason == "length":
        notes = notes + ["completion hit max_tokens (finish_reason=length)"]
    if len(raw) > RAW_CHARS:
        notes = notes + [f"raw completion truncated to {RAW_CHARS} of {len(raw)} characters"]
    boxes = [dict(caption=b.caption, x=int(b.x), y=int(b.y), w=int(b.w), h=int(b.h)) for b in layout.boxes]
    row = dict(base, instruction=req.instruction, boxes=boxes, background=layout.background,
               negative=layout.negative, template=template.id, model=job.llm.model, llm_seed=req.seed, format=form,
               raw=raw[:RAW_CHARS], finish_reason=req.result.finish_reason, repair_notes=notes, cache_key=req.key)
    return row, None


def make_client(job, endpoints):
    """An LLMClient on the endpoints' URLs (starting managed servers if this is the first miss)."""
    from lmd_batch.llm.client import LLMClient
    from lmd_batch.llm.endpoints import api_key

    cfg = job.llm
    return LLMClient(endpoints.call("urls"), cfg.model, cfg.mode, api_key(job), cfg.timeout_s, cfg.retries,
                     cfg.concurrency)
