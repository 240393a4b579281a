"""Stage-2 step 1: layout -> spec, per-box runs (LMD, LMD+), masks, alignment.

Real tiny models throughout, built into a temporary model cache and opened by the production
loaders (load_sd_pipeline, load_gligen_pipeline, load_sam), at their native 128 px (16x16 latents),
with few steps (6 steps, 3 guided, frozen ratio 0.5).
"""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("segment_anything")

import numpy as np  # noqa: E402

from lmd_batch.config import DiffusionConfig  # noqa: E402
from lmd_batch.grounding.align import (align_box_latents, alignment_shift, centred_box, quantum_cells,  # noqa: E402
                                       scaled_shift, shift_attention, shift_grid)
from lmd_batch.grounding.masks import (attention_mask, attention_point, average_attention, box_mask_only,  # noqa: E402
                                       centre_of_mass, gaussian_blur, mask_iou, peak_component, predict_sam,
                                       resize_masks, sam_mask, select_mask, selection_scores, smoothed_attention)
from lmd_batch.grounding.noise import shared_noise  # noqa: E402
from lmd_batch.grounding.per_box import generate_boxes  # noqa: E402
from lmd_batch.grounding.spec import (DEFAULT_OVERALL_NEGATIVE_PROMPT, DEFAULT_SO_NEGATIVE_PROMPT,  # noqa: E402
                                      layout_to_spec, number_to_words, overall_negative, per_box_negative,
                                      plural_phrase)
from lmd_batch.grounding.types import BoxLatents, GroundingSpec  # noqa: E402
from lmd_batch.layout.lmd_text import Box, Layout  # noqa: E402

TRANSFER = ["mid_block.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
            "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]


def cfg_(**kw):
    base = dict(size=128, steps=6, guidance_steps=3, frozen_step_ratio=0.5)
    base.update(kw)
    return DiffusionConfig(**base)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """tiny-sd, tiny-gligen and tiny-sam in a temporary model cache, via the production loaders."""
    old = os.environ.get("LMD_BATCH_MODELS")
    os.environ["LMD_BATCH_MODELS"] = str(tmp_path_factory.mktemp("per-box-models"))
    try:
        from lmd_batch.models.loaders import load_gligen_pipeline, load_sam, load_sd_pipeline

        torch.set_num_threads(1)
        yield dict(sd=load_sd_pipeline("tiny-sd"), gligen=load_gligen_pipeline("tiny-gligen"), sam=load_sam("tiny-sam"))
    finally:
        if old is None:
            os.environ.pop("LMD_BATCH_MODELS", None)
        else:
            os.environ["LMD_BATCH_MODELS"] = old


def layout(*boxes, bg="a realistic photo of a room", neg=""):
    return Layout([Box(c, *xywh) for c, xywh in boxes], bg, neg)


L1 = layout(("a red apple", (40, 60, 160, 140)), ("a cat", (280, 240, 180, 200)), ("a cat", (300, 20, 120, 100)))
L2 = layout(("a blue car", (20, 300, 300, 180)), ("a dog", (350, 100, 140, 160)), ("a xqzvbtrk lamp", (0, 0, 90, 300)),
            bg="a street")
L3 = layout(("a bird", (200, 30, 100, 80)), ("a tree", (10, 10, 200, 480)), bg="")


# ---------------------------------------------------------------------------------------------
# spec
# ---------------------------------------------------------------------------------------------

def test_spec_sorting_prompts_grouping_and_negatives():
    spec = layout_to_spec(L1)
    assert isinstance(spec, GroundingSpec) and spec.warnings == ()
    assert [b.caption for b in spec.boxes] == ["a cat", "a cat", "a red apple"]
    assert [b.box for b in spec.boxes] == [(280, 240, 180, 200), (300, 20, 120, 100), (40, 60, 160, 140)]
    assert [b.word for b in spec.boxes] == ["cat", "cat", "apple"]
    assert spec.per_box_prompts == ("a realistic photo of a room with a cat",) * 2 + (
        "a realistic photo of a room with a red apple",)
    assert spec.overall_phrases == ("two cats", "a red apple")
    assert spec.overall_phrase_boxes == ((0, 1), (2,))
    assert spec.overall_prompt == "a realistic photo of a room with two cats, a red apple"
    # empty background: the caption alone / the phrases alone
    s3 = layout_to_spec(L3)
    assert s3.per_box_prompts == ("a bird", "a tree") and s3.overall_prompt == "a bird, a tree"
    # negatives: the LLM's first, then the defaults
    assert per_box_negative(spec) == DEFAULT_SO_NEGATIVE_PROMPT
    neg = layout_to_spec(layout(("a cat", (0, 0, 10, 10)), neg="cartoon"))
    assert per_box_negative(neg) == "cartoon, " + DEFAULT_SO_NEGATIVE_PROMPT
    assert overall_negative(neg) == "cartoon, " + DEFAULT_OVERALL_NEGATIVE_PROMPT
    assert DEFAULT_OVERALL_NEGATIVE_PROMPT.split(", ") == DEFAULT_SO_NEGATIVE_PROMPT.split(", ")[:9]
    # diffusion.negative_prompt: llm -> the LLM's negative alone (empty when it has none); none -> nothing
    assert per_box_negative(neg, "llm") == overall_negative(neg, "llm") == "cartoon"
    assert per_box_negative(spec, "llm") == "" and per_box_negative(neg, "none") == overall_negative(neg, "none") == ""
    with pytest.raises(ValueError, match="negative prompt mode"):
        per_box_negative(neg, "off")
    # number words and plurals
    assert [number_to_words(n) for n in (2, 3, 12, 21, 40, 105)] == [
        "two", "three", "twelve", "twenty-one", "forty", "one hundred and five"]
    assert [plural_phrase(p) for p in ("a cat", "an apple", "a red box", "a puppy", "a cup of coffee", "a sheep",
                                       "the man", "a knife")] == [
        "cats", "apples", "red boxes", "puppies", "cups of coffee", "sheep", "men", "knives"]
    puppies = [("a puppy", (i * 50, 0, 40, 40)) for i in range(3)]
    grouped = layout_to_spec(layout(*puppies, ("a bench", (0, 300, 500, 100))))
    assert grouped.overall_phrases == ("a bench", "three puppies")
    assert grouped.overall_phrase_boxes == ((0,), (1, 2, 3))


def test_spec_edge_cases_zero_clip_cap_unknown_vocab():
    # zero boxes: a valid spec for plain generation
    empty = layout_to_spec(layout(bg="an empty beach"))
    assert empty.boxes == () and empty.per_box_prompts == () and empty.overall_phrases == ()
    assert empty.overall_prompt == "an empty beach" and empty.warnings == ()

    # off-canvas: clipped (noted), no area left: dropped (noted)
    s = layout_to_spec(layout(("a cat", (-50, 400, 200, 200)), ("a ghost", (600, 10, 50, 50)),
                              ("a flat", (10, 10, 0, 30))))
    assert [b.caption for b in s.boxes] == ["a cat"]
    assert s.boxes[0].box == (0, 400, 150, 112)
    assert any("clipped" in w and "'a cat'" in w for w in s.warnings)
    assert sum("dropped" in w for w in s.warnings) == 2

    # 50 boxes: capped to 16 (the first 16 of the layout), with a warning
    many = layout(*[(f"a thing{i:02d}", (i * 10, i * 10, 20, 20)) for i in range(50)])
    s = layout_to_spec(many, max_boxes=16)
    assert len(s.boxes) == 16 and "capped 50 boxes to 16" in s.warnings
    assert sorted(b.caption for b in s.boxes) == [f"a thing{i:02d}" for i in range(16)]

    # unknown vocabulary: still a spec (token matching happens later)
    s = layout_to_spec(layout(("a xqzvbtrk", (0, 0, 100, 100)), ("an ölçü-ß blob!", (100, 100, 50, 50))))
    assert [b.word for b in s.boxes] == ["xqzvbtrk", "blob"]
    assert s.overall_prompt == "a realistic photo of a room with a xqzvbtrk, an ölçü-ß blob!"

    # a layout on another canvas is rescaled to 512
    s = layout_to_spec(layout(("a cat", (100, 100, 200, 200))), canvas=1024)
    assert s.boxes[0].box == (50, 50, 100, 100)


# ---------------------------------------------------------------------------------------------
# per-box runs: LMD
# ---------------------------------------------------------------------------------------------

def _bytes(t):
    if isinstance(t, torch.Tensor):
        return t.contiguous().view(torch.uint8).numpy().tobytes()
    return np.asarray(t).tobytes()


def test_lmd_per_box_contract_shapes_and_determinism(models):
    cfg = cfg_()
    spec = layout_to_spec(L1)
    stats = {}
    out = generate_boxes(models["sd"], [(spec, "p-1", 0), (layout_to_spec(layout(bg="x")), "p-2", 0)], cfg, 7,
                         "lmd", sam=models["sam"], stats=stats)
    assert len(out) == 2 and out[1] == []
    boxes = out[0]
    assert [b.index for b in boxes] == [0, 1, 2] and [b.caption for b in boxes] == [b.caption for b in spec.boxes]
    f = int(cfg.steps * cfg.frozen_step_ratio)
    for bl, sb in zip(boxes, spec.boxes):
        assert isinstance(bl, BoxLatents) and bl.box == sb.box
        assert bl.latents.shape == (f + 1, 4, 16, 16) and bl.latents.dtype == torch.float16
        assert bl.latents.device.type == "cpu"
        assert bl.mask.shape == (16, 16) and bl.mask.dtype == torch.float32
        assert set(bl.mask.unique().tolist()) <= {0.0, 1.0} and bl.mask.sum() > 0
        assert list(bl.attn) == TRANSFER
        assert bl.attn[TRANSFER[0]].shape == (3, 8, 2, 2) and bl.attn[TRANSFER[1]].shape == (3, 8, 4, 4)
        assert all(a.dtype == torch.float16 for a in bl.attn.values())
        assert bl.image.shape == (128, 128, 3) and bl.image.dtype == np.uint8
        dy, dx = bl.shift
        assert isinstance(dy, int) and dy % 2 == 0 and dx % 2 == 0  # 1/8 of a 16-cell latent: 2 cells
        json.dumps(bl.info)
        assert bl.info["mask"]["mode"] == "sam" and bl.info["mask"]["prompt"] == "point"
        assert len(bl.info["energy"]) == cfg.steps and len(bl.info["guidance_energy"]) == 3
        # index 0 is the run's initial noise (centred box blend), shifted like everything else
        run_box = tuple(bl.info["run_box"])
        assert run_box == centred_box(sb.box)
        assert abs((run_box[1] + run_box[3]) - 0.8 * 512) < 1e-6 and abs(run_box[0] + run_box[2] / 2 - 256) < 1e-6
    noise = shared_noise(7, "p-1", 0, [tuple(b.info["run_box"]) for b in boxes], ratio=0.01,
                         latent_shape=(4, 16, 16))
    for i, bl in enumerate(boxes):
        assert torch.equal(bl.latents[0], shift_grid(noise.initial[i], *bl.shift).half())
    # passes: one CFG pass per step, plus every guidance iteration (4 per guided step here)
    assert stats["cfg_passes"] == cfg.steps and stats["chunks"] == 1 and stats["boxes"] == 3
    assert stats["guidance_passes"] == sum(len(x) for x in boxes[0].info["guidance_energy"])
    assert stats["unet_passes"] == stats["cfg_passes"] + stats["guidance_passes"] == boxes[0].info["unet_passes"]

    # the same seed gives the same bytes
    again = generate_boxes(models["sd"], [(spec, "p-1", 0)], cfg, 7, "lmd", sam=models["sam"])[0]
    for a, b in zip(boxes, again):
        assert _bytes(a.latents) == _bytes(b.latents) and _bytes(a.mask) == _bytes(b.mask)
        assert all(_bytes(a.attn[n]) == _bytes(b.attn[n]) for n in TRANSFER)
        assert _bytes(a.image) == _bytes(b.image) and a.shift == b.shift and a.info == b.info
    # another sample index: other noise
    other = generate_boxes(models["sd"], [(spec, "p-1", 1)], cfg, 7, "lmd", mask_mode="box")[0]
    assert not torch.equal(other[0].latents[0], boxes[0].latents[0])


def test_lmd_guidance_lowers_energy_and_raises_in_box_ratio(models):
    """Same seed, guided (3 steps) vs unguided: the energy and the in-box attention ratio of the
    phrase tokens on the *centred* box, measured on each step's CFG forward (after that step's
    guidance). The random tiny UNet's attention is nearly uniform and its gradients tiny, so the
    test uses loss_scale 200 (the reference's 5 moves a random model's maps by ~1e-3)."""
    spec = layout_to_spec(L1)
    common = dict(sam=None, mask_mode="box")
    guided = generate_boxes(models["sd"], [(spec, "p-1", 0)], cfg_(guidance_steps=3, loss_scale=200.0), 3, "lmd",
                            **common)[0]
    plain = generate_boxes(models["sd"], [(spec, "p-1", 0)], cfg_(guidance_steps=0, loss_scale=200.0), 3, "lmd",
                           **common)[0]
    for g, p in zip(guided, plain):
        assert p.info["guidance_energy"] == [] and len(g.info["guidance_energy"]) == 3
        assert torch.equal(g.latents[0], p.latents[0])  # same initial noise
        for step in range(3):
            assert g.info["energy"][step] < p.info["energy"][step]
            assert g.info["in_box_ratio"][step] > p.info["in_box_ratio"][step]
        # within step 0, each iteration lowered the energy
        trace = g.info["guidance_energy"][0]
        assert len(trace) == 4 and trace[-1] < trace[0]
        assert not torch.equal(g.latents[1], p.latents[1])
    assert plain[0].attn == {}  # nothing to transfer without guided steps


def test_batch_of_8_boxes_from_3_layouts_equals_single_runs(models):
    specs = [(layout_to_spec(L1), "p-1", 0), (layout_to_spec(L2), "p-2", 1), (layout_to_spec(L3), "p-3", 0)]
    cfg = cfg_()
    kw = dict(mask_mode="box", latent_dtype=torch.float32)
    s8, s1 = {}, {}
    batched = generate_boxes(models["sd"], specs, cfg, 11, "lmd", box_batch_size=8, stats=s8, **kw)
    single = generate_boxes(models["sd"], specs, cfg, 11, "lmd", box_batch_size=1, stats=s1, **kw)
    assert [len(x) for x in batched] == [3, 3, 2]
    assert s8["chunks"] == 1 and s1["chunks"] == 8
    assert s8["cfg_passes"] == cfg.steps and s1["cfg_passes"] == 8 * cfg.steps  # the saving
    assert s8["unet_passes"] < s1["unet_passes"]
    lamp = next(b for b in batched[1] if "xqzvbtrk" in b.caption)
    assert len(lamp.info["phrase_tokens"]) > 2  # an unknown word: several BPE pieces, all guided
    for bs, ss in zip(batched, single):
        for b, s in zip(bs, ss):
            assert b.latents.dtype == torch.float32 and b.shift == s.shift
            assert torch.allclose(b.latents, s.latents, atol=1e-4, rtol=0)
            assert (b.latents[-1] - b.latents[0]).abs().amax() > 0.01  # the tolerance is far below the change
            assert torch.equal(b.mask, s.mask)
            for n in TRANSFER:
                assert torch.allclose(b.attn[n].float(), s.attn[n].float(), atol=1e-3)
            assert np.abs(b.image.astype(int) - s.image.astype(int)).max() <= 1
            assert b.info["unet_passes"] == s8["unet_passes"] and s.info["batch_size"] == 1


# ---------------------------------------------------------------------------------------------
# per-box runs: LMD+ (GLIGEN)
# ---------------------------------------------------------------------------------------------

def test_lmd_plus_per_box_on_tiny_gligen_depends_on_box(models):
    from diffusers.models.attention import GatedSelfAttentionDense

    gp = models["gligen"]
    cfg = cfg_(fg_blending_ratio=0.0)  # identical initial noise wherever the box is: only GLIGEN sees it
    left = layout_to_spec(layout(("a cat", (0, 100, 200, 200))))
    right = layout_to_spec(layout(("a cat", (300, 100, 200, 200))))
    stats = {}
    a = generate_boxes(gp, [(left, "p", 0), (right, "p", 0)], cfg, 5, "lmd_plus", sam=models["sam"], stats=stats)
    la, ra = a[0][0], a[1][0]
    assert stats["guidance_passes"] == 0 and stats["cfg_passes"] == cfg.steps
    assert la.shift == (0, 0) and la.info["run_box"] == list(la.box) and "alignment" not in la.info
    assert la.latents.shape == (4, 4, 16, 16) and la.latents.dtype == torch.float16
    assert list(la.attn) == TRANSFER and la.attn[TRANSFER[1]].shape == (3, 8, 4, 4)
    assert la.info["mask"]["prompt"] == "box"
    assert la.info["mask"]["box_xyxy"] == [0.0, 25.0, 50.0, 75.0]  # the layout box in the 128 px image
    assert torch.equal(la.latents[0], ra.latents[0])
    assert (la.latents[-1].float() - ra.latents[-1].float()).abs().amax() > 5e-3  # the box position matters
    assert all(m.enabled for m in gp.unet.modules() if isinstance(m, GatedSelfAttentionDense))  # fuser restored
    # scheduled sampling: with beta = 0 the fuser is never on, and the box no longer matters
    # (up to fp32 differences between batch positions, ~1e-5)
    b = generate_boxes(gp, [(left, "p", 0), (right, "p", 0)], cfg_(fg_blending_ratio=0.0, gligen_beta=0.0), 5,
                       "lmd_plus", mask_mode="box", latent_dtype=torch.float32)
    assert torch.allclose(b[0][0].latents, b[1][0].latents, atol=1e-4, rtol=0)
    # an SD pipeline is refused for LMD+
    with pytest.raises(ValueError, match="GLIGEN"):
        generate_boxes(models["sd"], [(left, "p", 0)], cfg, 5, "lmd_plus", mask_mode="box")


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------

def test_selection_rule_on_hand_made_masks():
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[0, :6, :6] = True  # area 36
    m[1, :4, :4] = True  # area 16
    m[2, 6:, 6:] = True  # area 4
    coarse = torch.zeros(8, 8, dtype=torch.bool)
    coarse[:4, :4] = True
    # all confident: the largest that agrees with the coarse mask (IoU 16/36 = 0.44 >= 0.25)
    i, d = select_mask(m, [0.9, 0.95, 0.99], coarse)
    assert i == 0 and d["areas"] == [36, 16, 4] and d["scores"] == [36.0, 16.0, 4.0 - 36.0]
    assert d["coarse_iou"] == pytest.approx([16 / 36, 1.0, 0.0])
    # the largest is not confident: the next largest confident one
    i, d = select_mask(m, [0.8, 0.9, 0.99], coarse)
    assert i == 1 and d["scores"] == [0.0, 16.0, -32.0]
    # everything penalised twice: still the formula's argmax (largest wins among equals)
    i, d = select_mask(m, [0.1, 0.1, 0.1], torch.zeros(8, 8, dtype=torch.bool))
    assert d["scores"] == [36 - 72.0, 16 - 72.0, 4 - 72.0] and i == 0
    # coarse disagreement alone
    tiny_coarse = torch.zeros(8, 8, dtype=torch.bool)
    tiny_coarse[7, 7] = True
    i, _ = select_mask(m, [0.9, 0.9, 0.9], tiny_coarse)
    assert i == 2  # IoU(m2, coarse) = 1/4 >= 0.25, the others ~0
    assert selection_scores([10, 5], [0.9, 0.9], [0.1, 0.3]) == [0.0, 5.0]
    assert mask_iou(m, coarse).tolist() == pytest.approx([16 / 36, 1.0, 0.0])


def _rule(masks_small, preds, coarse):
    areas = [float(x.sum()) for x in masks_small]
    mx = max(areas)
    ious = []
    for x in masks_small:
        union = float((x | coarse).sum())
        ious.append(float((x & coarse).sum()) / union if union else 0.0)
    scores = [a - mx * (p < 0.85) - mx * (c < 0.25) for a, p, c in zip(areas, preds, ious)]
    return int(np.argmax(scores)), scores


def test_selection_rule_on_the_real_tiny_sam(models):
    sam = models["sam"]
    rng = np.random.default_rng(0)
    image = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    image[40:90, 30:100] = [220, 30, 30]

    # box prompt (LMD+): the layout box, in the image's pixels
    box = (120, 160, 280, 200)  # canvas 512 -> (30, 40, 100, 90) px
    res = sam_mask(sam, image, (16, 16), box=box)
    assert res.info["box_xyxy"] == [30.0, 40.0, 100.0, 90.0]
    masks, preds = predict_sam(sam, image, box_xyxy=(30.0, 40.0, 100.0, 90.0))
    assert masks.shape == (3, 128, 128) and masks.dtype == bool and preds.shape == (3,)
    small = resize_masks(masks, (16, 16))
    coarse = box_mask_only(box, (16, 16)).mask.bool()
    index, scores = _rule(small, preds.tolist(), coarse)
    assert res.info["index"] == index and res.info["scores"] == pytest.approx(scores)
    expect = small[index] if small[index].any() else coarse
    assert torch.equal(res.mask.bool(), expect) and res.mask.dtype == torch.float32

    # point prompt (LMD): the argmax of a smoothed 4x4 attention map, the cell's centre in pixels
    attn = torch.full((6, 8, 4, 4), 0.01)
    attn[2:, :, 1, 2] = 0.5  # the peak from step 2 on
    res = sam_mask(sam, image, (16, 16), attn=attn, start=2)
    assert res.info["point"] == [80.0, 48.0]  # column 2, row 1 of a 4x4 map over 128 px
    masks, preds = predict_sam(sam, image, point=(80.0, 48.0))
    small = resize_masks(masks, (16, 16))
    coarse = attention_mask(attn, (16, 16), start=2).mask.bool()
    index, scores = _rule(small, preds.tolist(), coarse)
    assert res.info["index"] == index and res.info["scores"] == pytest.approx(scores)
    assert torch.equal(res.coarse, coarse)
    # other thresholds change the pick exactly as the formula says
    for conf, ciou in ((0.0, 0.0), (-1.0, 1.1), (2.0, 0.0)):
        r = sam_mask(sam, image, (16, 16), attn=attn, start=2, confidence=conf, coarse_iou=ciou)
        areas = [float(x.sum()) for x in small]
        ious = mask_iou(small, coarse).tolist()
        sc = [a - max(areas) * (p < conf) - max(areas) * (c < ciou) for a, p, c in zip(areas, preds.tolist(), ious)]
        assert r.info["index"] == int(np.argmax(sc))


def test_attention_and_box_masks_and_smoothing():
    # Gaussian smoothing: mass-preserving (reflect borders), symmetric, a peak stays the peak
    x = torch.zeros(9, 9)
    x[4, 4] = 1.0
    g = gaussian_blur(x, 1.5)
    assert float(g.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(g, g.flip(0)) and torch.allclose(g, g.T) and int(g.argmax()) == 40
    k = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float64) / 1.5) ** 2)
    k = k / k.sum()
    assert float(g[4, 4]) == pytest.approx(float(k[6] ** 2), rel=1e-5)  # separable kernel, radius 6
    assert torch.equal(gaussian_blur(x, 0), x)

    # averaging from a start step and over heads
    maps = torch.zeros(5, 2, 4, 4)
    maps[:2, :, 0, 0] = 1.0  # early steps look elsewhere
    maps[2:, 0, 3, 3] = 1.0
    avg = average_attention(maps, start=2)
    assert avg[3, 3] == pytest.approx(0.5) and avg[0, 0] == 0
    assert torch.equal(average_attention(maps, start=99), maps.mean(dim=(0, 1)))
    norm = smoothed_attention(avg, sigma=0.0)
    assert norm.max() == 1 and norm.min() == 0
    assert attention_point(norm, (128, 128)) == (112.0, 112.0)

    # attention mask: the thresholded map, nearest-upsampled to latent resolution
    res = attention_mask(maps, (16, 16), start=2, sigma=0.0)
    assert res.mask.shape == (16, 16) and res.mask.dtype == torch.float32
    assert res.mask[12:, 12:].all() and res.mask.sum() == 16
    # with smoothing the blob grows but stays in the corner
    res = attention_mask(maps, (16, 16), start=2, sigma=1.5)
    assert res.mask[15, 15] == 1 and res.mask[0, 0] == 0 and res.mask.sum() > 16

    # two objects in one per-box run: the mask keeps the one under the attention peak (what a SAM
    # point prompt there would segment); single=False keeps every cell above the threshold
    two = torch.zeros(8, 8)
    two[1:3, 1:3] = 0.6   # a weaker blob, top left
    two[5:8, 5:8] = 1.0   # the peak, bottom right
    res = attention_mask(two, (16, 16), sigma=0.0)
    assert res.mask[10:, 10:].all() and res.mask.sum() == 36 and res.mask[:8, :8].sum() == 0
    assert res.info["dropped_cells"] == 4
    both = attention_mask(two, (16, 16), sigma=0.0, single=False)
    assert both.mask.sum() == 36 + 16 and both.info["dropped_cells"] == 0
    # the component follows 4-connectivity: a diagonal neighbour is another object
    diag = torch.zeros(4, 4, dtype=torch.bool)
    diag[0, 0] = diag[1, 1] = diag[1, 2] = True
    peak = torch.zeros(4, 4)
    peak[1, 2] = 1.0
    assert peak_component(diag, peak).tolist() == [[False] * 4, [False, True, True, False], [False] * 4, [False] * 4]
    peak[3, 3] = 2.0  # the peak outside the mask: nothing to choose, the mask stays whole
    assert torch.equal(peak_component(diag, peak), diag)

    # box mask: LMD's rounding at latent resolution
    b = box_mask_only((128, 0, 256, 512), (16, 16))
    assert b.mask.sum() == 8 * 16 and b.mask[:, 4:12].all() and b.info["cells"] == [4, 0, 12, 16]


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------

def test_alignment_quantisation_and_exact_movement():
    assert quantum_cells(16) == 2 and quantum_cells(64) == 8
    assert centred_box((10, 20, 200, 100)) == pytest.approx((156.0, 309.6, 200.0, 100.0))
    assert centred_box((0, 0, 100, 500))[1] == 0.0  # taller than 0.8 of the canvas: top at 0

    mask = torch.zeros(16, 16)
    mask[8:12, 6:10] = 1  # centre of mass (10, 8) in cells
    assert centre_of_mass(mask) == (10.0, 8.0)
    # target centre (3.0, 12.75) cells -> raw (-7, +4.75) -> quantum 2: (-8, +4)
    assert alignment_shift(mask, (392, 80, 32, 32)) == (-8, 4)
    # half a quantum rounds away from zero
    assert alignment_shift(mask, (256 - 16, 320 + 32 - 16, 32, 32)) == (2, 0)  # raw (+1, 0)
    assert alignment_shift(torch.zeros(16, 16), (0, 0, 10, 10)) == (0, 0)
    # on 64x64 latents the quantum is 8 cells (64 px of 512)
    big = torch.zeros(64, 64)
    big[40:48, 24:32] = 1
    dy, dx = alignment_shift(big, (300, 20, 64, 64))
    assert dy % 8 == 0 and dx % 8 == 0

    # exact movement, zero fill, content off the grid lost
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 16, 16)
    y = shift_grid(x, -8, 4)
    assert torch.equal(y[:, :8, 4:], x[:, 8:, :12]) and (y[:, 8:] == 0).all() and (y[:, :, :4] == 0).all()
    assert torch.equal(shift_grid(y, 8, -4)[:, 8:, :12], x[:, 8:, :12])
    assert (shift_grid(x, 16, 0) == 0).all() and torch.equal(shift_grid(x, 0, 0), x)

    # attention maps: the same canvas fraction at their own resolution (exact at 8 and 16 cells
    # for 64x64 latents; rounded at the tiny model's 2x2 / 4x4)
    assert scaled_shift(-8, 16, (64, 64), (16, 16)) == (-2, 4) and scaled_shift(-8, 16, (64, 64), (8, 8)) == (-1, 2)
    assert scaled_shift(-8, 4, (16, 16), (4, 4)) == (-2, 1) and scaled_shift(-8, 4, (16, 16), (2, 2)) == (-1, 1)
    a = torch.rand(3, 8, 4, 4)
    assert torch.equal(shift_attention(a, -8, 4, (16, 16)), shift_grid(a, -2, 1))

    # a whole BoxLatents: the mask lands on the box, latents/attention move with it
    lat = torch.randn(4, 4, 16, 16).half()
    attn = {TRANSFER[0]: torch.rand(3, 8, 2, 2).half(), TRANSFER[1]: torch.rand(3, 8, 4, 4).half()}
    box = (392, 80, 32, 32)
    bl = BoxLatents(index=0, caption="a cat", box=box, latents=lat, mask=mask, attn=attn, info={"seed": 1})
    al = align_box_latents(bl, run_box=(0, 0, 1, 1))
    assert al.shift == (-8, 4) and bl.shift == (0, 0)  # the input is not modified
    assert torch.equal(al.latents, shift_grid(lat, -8, 4)) and al.latents.dtype == torch.float16
    assert torch.equal(al.mask, shift_grid(mask, -8, 4)) and centre_of_mass(al.mask) == (2.0, 12.0)
    assert torch.equal(al.attn[TRANSFER[1]], shift_grid(attn[TRANSFER[1]], -2, 1))
    assert torch.equal(al.attn[TRANSFER[0]], shift_grid(attn[TRANSFER[0]], -1, 1))
    assert al.info["alignment"]["shift"] == [-8, 4] and al.info["seed"] == 1
