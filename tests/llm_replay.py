"""A loopback OpenAI-compatible endpoint that answers from recorded completions.

Used where a test needs an LLM whose answers are known (the published GPT-3.5 layouts of the LMD
benchmark) or that misbehaves on purpose (HTTP 503 once, 500 forever, too slow, wrong key). It is
a real HTTP server on 127.0.0.1, so the client, the stage and the cache run exactly as against
vLLM or a hosted API; it replaces the model, not any of our code.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ReplayLLM:
    """`answers`: {prompt: completion}; `faults`: {prompt: "503-once" | "500" | "slow" | "garbage"}."""

    def __init__(self, answers: dict[str, str], faults: dict[str, str] | None = None, api_key: str | None = None,
                 model: str = "replay"):
        self.answers, self.faults, self.api_key, self.model = answers, dict(faults or {}), api_key, model
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._seen_503: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                outer._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def prompt_of(body: dict) -> str:
        if "messages" in body:
            text = body["messages"][-1]["content"]
        else:
            text = body["prompt"].rsplit("Caption:", 1)[-1].rsplit("Layout:", 1)[0]
        return text.split("Caption:", 1)[-1].strip()

    def _reply(self, h, status: int, payload: dict | str):
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        prompt = self.prompt_of(body)
        with self.lock:
            self.requests.append(dict(path=h.path, prompt=prompt, auth=h.headers.get("Authorization"), body=body))
        if self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._reply(h, 401, {"error": {"message": "invalid api key"}})
        if body.get("model") != self.model:
            return self._reply(h, 404, {"error": {"message": f"model {body.get('model')} not found"}})
        fault = self.faults.get(prompt)
        if fault == "503-once":
            with self.lock:
                first = prompt not in self._seen_503
                self._seen_503.add(prompt)
            if first:
                return self._reply(h, 503, {"error": {"message": "overloaded"}})
        elif fault == "500":
            return self._reply(h, 500, {"error": {"message": "internal error"}})
        elif fault == "slow":
            time.sleep(3)
        elif fault == "garbage":
            return self._reply(h, 200, "<html>not json</html>")
        text = self.answers.get(prompt, "I cannot draw that.")
        usage = {"prompt_tokens": 10, "completion_tokens": len(text) // 4}
        if h.path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
        return self._reply(h, 200, {"id": "x", "model": self.model, "choices": [choice], "usage": usage})

    def count(self, prompt: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if prompt is None or r["prompt"] == prompt)
