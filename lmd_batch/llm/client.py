"""An OpenAI-compatible client for batch work: async, bounded concurrency, retries, timeouts.

Why not the `openai` package: it is not in the main environment, and we need little of it: two
endpoints (/chat/completions, /completions), vLLM's extra `structured_outputs` field, several base
URLs (one per server replica) and per-request results that never raise, so one bad prompt becomes
one reject row and the rest of the shard goes on.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    usage: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LLMFailure:
    """A request that failed for good; `reason` is a short code for the reject row."""

    reason: str  # llm_http_error | llm_transport_error | llm_unreachable | llm_bad_response
    detail: str


_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMClient:
    """Send many request bodies to one or more base URLs (round-robin), `concurrency` at a time.

    A body is the JSON of one request without "model" (added here): `messages` for chat mode or
    `prompt` for completion mode, plus sampling fields. Transport errors, timeouts and 429/5xx are
    retried with exponential backoff, moving to the next URL; other HTTP errors fail at once.
    """

    def __init__(self, urls: list[str], model: str, mode: str = "chat", api_key: str | None = None,
                 timeout_s: float = 300, retries: int = 3, concurrency: int = 8, backoff_s: float = 1.0):
        if not urls:
            raise ValueError("LLMClient needs at least one base URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.model, self.mode, self.api_key = model, mode, api_key
        self.timeout_s, self.retries, self.concurrency, self.backoff_s = timeout_s, retries, concurrency, backoff_s
        self.requests_sent = 0  # HTTP requests actually made, retries included

    @property
    def endpoint(self) -> str:
        return "/chat/completions" if self.mode == "chat" else "/completions"

    def run(self, bodies: list[dict], on_result=None) -> list[Completion | LLMFailure]:
        """Answer every body; `on_result(i, result)` is called as each finishes (e.g. to cache it)."""
        if not bodies:
            return []
        return asyncio.run(self._run_all(bodies, on_result))

    async def _run_all(self, bodies, on_result):
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits) as http:
            async def one(i, body):
                async with sem:
                    result = await self._request(http, i, body)
                if on_result is not None:
                    on_result(i, result)
                return result

            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

    async def _request(self, http, i: int, body: dict) -> Completion | LLMFailure:
        import httpx

        payload = dict(body, model=self.model)
        failure = LLMFailure("llm_transport_error", "no attempt made")
        for attempt in range(self.retries + 1):
            url = self.urls[(i + attempt) % len(self.urls)] + self.endpoint
            try:
                self.requests_sent += 1
                resp = await http.post(url, json=payload)
            except httpx.ConnectError as exc:  # nothing listening: the endpoint is down, not this request
                failure = LLMFailure("llm_unreachable", f"{type(exc).__name__}: {exc}"[:300] + f" ({url})")
            except httpx.TransportError as exc:  # resets, timeouts
                failure = LLMFailure("llm_transport_error", f"{type(exc).__name__}: {exc}"[:300] + f" ({url})")
            else:
                if resp.status_code == 200:
                    return self._parse(resp)
                failure = LLMFailure("llm_http_error", f"HTTP {resp.status_code} from {url}: {_error_text(resp)}")
                if resp.status_code not in _RETRY_STATUS:
                    return failure
            if attempt < self.retries:
                await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        return failure

    def _parse(self, resp) -> Completion | LLMFailure:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
            if not isinstance(text, str):
                text = "" if text is None else str(text)
            return Completion(text, choice.get("finish_reason"), dict(data.get("usage") or {}))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return LLMFailure("llm_bad_response", f"unexpected response ({type(exc).__name__}): {resp.text[:200]}")


def _error_text(resp) -> str:
    try:
        err = resp.json().get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        return str(msg or resp.text)[:300]
    except (ValueError, AttributeError):
        return resp.text[:300]
