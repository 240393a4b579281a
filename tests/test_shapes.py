"""The shapes world: deterministic scenes and captions, and the classical detector on renders."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lmd_batch.shapes.detect import detect_shapes, match
from lmd_batch.shapes.scene import Background, ShapeObject, make_caption, render, sample_scene
from lmd_batch.shapes.vocab import COLORS, SHAPES


def test_same_seed_same_scene_and_pixels():
    a, b = sample_scene(7), sample_scene(7)
    assert a == b and a.caption == b.caption
    ia, ib = render(a)[0], render(b)[0]
    assert hashlib.sha256(ia.tobytes()).hexdigest() == hashlib.sha256(ib.tobytes()).hexdigest()
    assert any(sample_scene(s) != a for s in range(8, 12))


def test_scenes_cover_the_vocabulary_and_never_overlap():
    scenes = [sample_scene(s) for s in range(400)]
    counts = [len(s.objects) for s in scenes]
    assert min(counts) == 0 and max(counts) == 5
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.color for s in scenes for o in s.objects} == set(COLORS)
    assert {s.background.style for s in scenes} == {"plain", "gradient", "dotted", "striped"}
    assert sum(s.relation is not None for s in scenes) > 10
    with_form = [s for s in scenes if " background with " in s.caption or s.caption == s.background.phrase()]
    assert 0.25 < len(with_form) / len(scenes) < 0.45  # LMD's own prompt form, ~35% of captions
    assert all(s.relation is None for s in with_form)
    for s in scenes:
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1:]:
                ax, ay, aw, ah = a.box
                bx, by, bw, bh = b.box
                assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay


def test_captions_state_counts_colours_and_relations():
    bg = Background("plain", ("sand",))
    red = [ShapeObject("circle", "red", (0.05 + 0.2 * i, 0.1, 0.15, 0.15)) for i in range(2)]
    star = ShapeObject("star", "blue", (0.7, 0.6, 0.25, 0.25))
    orange = ShapeObject("square", "orange", (0.4, 0.6, 0.2, 0.2))
    assert make_caption(red + [star], bg) == "two red circles and a blue star on a sand background"
    assert make_caption(red + [star], bg, "left of") == "two red circles on the left of a blue star on a sand background"
    assert make_caption([orange], Background("gradient", ("grey", "white"))) == \
        "an orange square on a grey to white gradient background"
    assert make_caption([], Background("striped", ("sky",))) == "an empty scene on a striped sky background"
    assert make_caption(red + [star], bg, form="with") == "a sand background with two red circles, a blue star"
    assert make_caption([], bg, form="with") == "a sand background"


def test_relation_in_caption_holds_in_the_scene():
    for s in (sample_scene(i) for i in range(300)):
        if s.relation is None:
            continue
        first = s.objects[0].color, s.objects[0].shape
        a = [o for o in s.objects if (o.color, o.shape) == first]
        b = [o for o in s.objects if (o.color, o.shape) != first]
        key = {"left of": lambda o: o.cx, "right of": lambda o: -o.cx, "above": lambda o: o.cy,
               "below": lambda o: -o.cy}[s.relation]
        assert max(map(key, a)) < min(map(key, b)), s.caption


def test_masks_and_boxes_match_the_pixels():
    s = next(s for s in (sample_scene(i) for i in range(50)) if len(s.objects) >= 3)
    image, masks, boxes = render(s)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    for o, m, b in zip(s.objects, masks, boxes):
        ys, xs = np.nonzero(m)
        assert m.sum() > 20
        assert xs.min() >= b[0] - 1 and xs.max() <= b[0] + b[2] + 1
        colour = image[m].mean(0)
        assert np.abs(colour - np.array(COLORS[o.color])).max() < 40


@pytest.mark.parametrize("size", [64, 128])
def test_detector_on_rendered_scenes(size):
    tp = fp = fn = 0
    for seed in range(150):
        s = sample_scene(seed, size=size)
        image, _masks, boxes = render(s, size)
        truth = [(o.color, o.shape, b) for o, b in zip(s.objects, boxes)]
        a, b, c = match(detect_shapes(image), truth)
        tp, fp, fn = tp + a, fp + b, fn + c
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95, (tp, fp, fn)


def test_detector_on_noise_and_blank():
    rng = np.random.default_rng(0)
    grey = np.full((64, 64, 3), 200, np.uint8)
    assert detect_shapes(grey) == []
    noisy = np.clip(grey + rng.normal(0, 8, grey.shape), 0, 255).astype(np.uint8)
    assert detect_shapes(noisy) == []


def test_train_smoke_saves_a_pipeline_the_loader_opens(tmp_path):
    """A few steps of each phase: the saved folder is an SD pipeline with a 4x VAE that the
    production loader opens and the LMD pipeline draws with (quality is measured by the benchmark)."""
    import json

    from typer.testing import CliRunner

    from lmd_batch.cli import app
    from lmd_batch.grounding.generate import cached_model, generate_layout
    from lmd_batch.layout.lmd_text import Box, Layout

    out = tmp_path / "shapes-sd"
    res = CliRunner().invoke(app, ["shapes", "train", "--out", str(out), "--vae-steps", "2", "--latents", "16",
                                   "--unet-steps", "3", "--batch", "4", "--attn-from-step", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "training.json").read_text())
    assert metrics["unet"]["history"][-1]["attn"] > 0  # the localisation loss was on
    pipe = cached_model("sd", str(out))
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    from lmd_batch.config import DiffusionConfig

    cfg = DiffusionConfig(method="lmd", model=str(out), mask="attention", steps=3, size=64, guidance_steps=1)
    layout = Layout([Box("a red circle", 40, 200, 160, 160), Box("a blue star", 300, 200, 160, 160)], "a sand background", "")
    res = generate_layout(layout, "lmd", model=str(out), gligen_model="tiny-gligen", sam_model="tiny-sam", cfg=cfg,
                          job_seed=0, prompt_id="p", sample=0, prompt="a red circle on the left of a blue star")
    assert res.image.shape == (64, 64, 3)
    # The GLIGEN variant: grounding layers on the trained base; LMD+ and GLIGEN draw with it.
    import torch

    gl = tmp_path / "shapes-gligen"
    res = CliRunner().invoke(app, ["shapes", "train-gligen", "--base", str(out), "--out", str(gl), "--steps", "2",
                                   "--scenes", "8", "--batch", "4", "--threads", "1"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((gl / "training.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["data"]["phrases"] >= 1
    gpipe = cached_model("gligen", str(gl))
    assert gpipe.unet.position_net is not None and gpipe.vae_scale_factor == 4
    base_unet = cached_model("sd", str(out)).unet.state_dict()
    for key, value in gpipe.unet.state_dict().items():  # the base weights are frozen
        if key in base_unet:
            assert torch.equal(value, base_unet[key]), key
    for method in ("lmd_plus", "gligen"):
        res = generate_layout(layout, method, model=str(out), gligen_model=str(gl), sam_model="tiny-sam", cfg=cfg,
                              job_seed=0, prompt_id="p", sample=0, prompt="a red circle on the left of a blue star")
        assert res.image.shape == (64, 64, 3)


def test_train_gligen_rejects_a_model_that_is_not_a_pipeline(tmp_path):
    from typer.testing import CliRunner

    from lmd_batch.cli import app

    res = CliRunner().invoke(app, ["shapes", "train-gligen", "--base", str(tmp_path / "nothing"), "--out",
                                   str(tmp_path / "out"), "--steps", "1"])
    assert res.exit_code != 0 and "not found" in res.output


def test_scene_images_in_worker_processes_are_the_rendered_scenes():
    """The render pool (what keeps a GPU fed) must give exactly image_tensor's pixels, in order."""
    import torch

    from lmd_batch.shapes.data import SceneImages, image_tensor

    want = image_tensor([sample_scene(100 + i, size=64) for i in range(10)], 64)
    with SceneImages(64, workers=2, chunk=1) as images:  # 10 chunks > 8 rendered ahead
        images.prefetch(100, 10)
        got = torch.cat([images.tensor(100, 3), images.tensor(103, 7)])
        with pytest.raises(ValueError, match="not prefetched"):
            images.tensor(500, 2)
    assert torch.equal(got, want)
    with SceneImages(64) as inline:  # workers=1: rendered on demand in this process
        assert torch.equal(inline.tensor(100, 10), want)


RESUME_CFG = dict(vae_steps=5, vae_batch=4, latents=40, unet_steps=7, batch=4, attn_from_step=1, threads=1,
                  checkpoint_every=2)


def _weight_digests(out):
    return {f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(out.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def whole_training_run(tmp_path_factory):
    """One uninterrupted tiny training run (scenes rendered inline, workers=1)."""
    from lmd_batch.shapes.train import TrainConfig, train

    out = tmp_path_factory.mktemp("whole")
    train(TrainConfig(**RESUME_CFG), out, log=lambda *a: None)
    return out


@pytest.mark.parametrize("stop_at", [("vae", 3), ("unet", 5)])
def test_interrupted_training_resumes_to_the_same_bytes(tmp_path, stop_at, whole_training_run):
    """Kill the run after a checkpoint (here: an exception from the progress callback), rerun the
    same config into the same folder with 2 render workers: the weights equal those of the
    uninterrupted inline run (so neither resuming nor the render pool changes a byte)."""
    import json

    from lmd_batch.errors import UserError
    from lmd_batch.shapes.train import TrainConfig, train

    class Killed(Exception):
        pass

    def kill(phase, done, total, **_):
        if (phase, done) == stop_at:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        train(TrainConfig(**RESUME_CFG), out, log=lambda *a: None, progress=kill)
    state = json.loads((out / ".checkpoint" / "state.json").read_text())
    assert (state["phase"], state["step"]) == (stop_at[0], 2 if stop_at[0] == "vae" else 4)
    with pytest.raises(UserError, match="other settings"):  # a changed setting does not resume silently
        train(TrainConfig(**(RESUME_CFG | {"lr": 1e-3})), out, log=lambda *a: None)
    logs = []
    train(TrainConfig(**(RESUME_CFG | {"workers": 2})), out, log=logs.append)
    assert any("resuming" in line for line in logs)
    assert not (out / ".checkpoint").exists()
    want = _weight_digests(whole_training_run)
    assert _weight_digests(out) == want and len(want) == 3
    whole = json.loads((whole_training_run / "training.json").read_text())
    resumed = json.loads((out / "training.json").read_text())
    assert [h["mse"] for h in resumed["unet"]["history"]] == [h["mse"] for h in whole["unet"]["history"]]


def test_checkpoint_saves_aliased_tensors_and_restores_them(tmp_path):
    """Right after a loss-history row the UNet phase's two loss sums were one zeros tensor, and
    safetensors refuses aliased entries: the default run crashed at its first UNet checkpoint
    (step 200; the tiny resume runs above never checkpoint on a history row)."""
    import torch

    from lmd_batch.shapes import checkpoint
    from lmd_batch.shapes.train import TrainConfig

    cfg = TrainConfig(**RESUME_CFG)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    zero = torch.zeros((), dtype=torch.float64)
    checkpoint.save(tmp_path, cfg, "unet", 200, {"m": model}, {"m": opt}, gen, {"unet_history": []},
                    extra={"sum_mse": zero, "sum_attn": zero})
    state = checkpoint.load(tmp_path, cfg)
    assert (state["phase"], state["step"]) == ("unet", 200)
    assert torch.equal(state["tensors"]["extra.sum_mse"], zero) and torch.equal(state["tensors"]["extra.sum_attn"], zero)
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), 1e-3)
    fresh_gen = torch.Generator()
    checkpoint.restore(state, {"m": fresh}, {"m": fresh_opt}, fresh_gen)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(fresh_gen.get_state(), gen.get_state())
