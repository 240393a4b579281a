"""Stage-2 core primitives (lmd_batch.grounding): tokens, layers, capture, energy, guidance, noise.

Real components throughout: the tiny SD pipeline is built into a temporary model cache and opened
through `load_sd_pipeline` (the production loader), with the real CLIP BPE tokenizer. Guidance and
capture run at the tiny pipeline's native 128 px (16x16 latents), a handful of iterations.
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from lmd_batch.grounding.attention import AttentionStore, CaptureProcessor, install_attention_capture  # noqa: E402
from lmd_batch.grounding.boxes import box_cells, box_mask  # noqa: E402
from lmd_batch.grounding.energy import (PhraseTarget, TransferTarget, box_energy, in_box_attention_ratio,  # noqa: E402
                                        lmd_energy, transfer_energy)
from lmd_batch.grounding.guidance import (LMD_MAX_ITERATIONS, UNetEnergy, alphabar, guide_latents,  # noqa: E402
                                          max_iterations)
from lmd_batch.grounding.layers import cross_attention_layers, layers_by_block, select_layers  # noqa: E402
from lmd_batch.grounding.noise import (background_seed, blend_box_noise, box_seed, default_blending_ratio,  # noqa: E402
                                       gaussian_noise, shared_noise)
from lmd_batch.grounding.tokens import match_phrase, match_phrases, phrase_token_indices, word_span  # noqa: E402

GUIDE = ["mid_block.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
         "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """The tiny SD pipeline, built into a temporary model cache, loaded by the production loader."""
    old = os.environ.get("LMD_BATCH_MODELS")
    os.environ["LMD_BATCH_MODELS"] = str(tmp_path_factory.mktemp("grounding-models"))
    try:
        from lmd_batch.models.loaders import load_sd_pipeline

        torch.set_num_threads(1)
        p = load_sd_pipeline("tiny-sd")
        p.unet.eval().requires_grad_(False)
        p.text_encoder.requires_grad_(False)
        yield p
    finally:
        if old is None:
            os.environ.pop("LMD_BATCH_MODELS", None)
        else:
            os.environ["LMD_BATCH_MODELS"] = old


def encode(pipe, prompts):
    ids = pipe.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def latents(n, seed=0, side=16):
    return torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------------

def test_phrase_tokens_verbatim_multi_piece_and_case(pipe):
    tok = pipe.tokenizer
    prompt = "A realistic scene with a red apple"
    ids = tok(prompt).input_ids
    idx = phrase_token_indices(tok, prompt, "a red apple")
    assert idx == [5, 6, 7]  # BOS, a, realistic, scene, with, | a, red, apple
    assert [ids[i] for i in idx] == tok("a red apple").input_ids[1:-1]
    # case does not matter (CLIP lowercases)
    assert phrase_token_indices(tok, prompt.upper(), "A Red Apple") == idx

    # a word the vocabulary splits into several BPE pieces: every piece, word token = last piece
    prompt = "a photo with a xqzvbtrk lamp, and a xqzvbtrk"
    pieces = tok.tokenize("xqzvbtrk")
    assert len(pieces) > 1
    m = match_phrase(tok, prompt, "a xqzvbtrk")
    ids = tok(prompt).input_ids
    assert len(m.tokens) == 1 + len(pieces) and m.how == "phrase"
    assert [ids[i] for i in m.tokens] == tok("a xqzvbtrk").input_ids[1:-1]
    assert m.word_token == m.tokens[-1]
    # the word token of "red apple" is apple; of a phrase ending in punctuation still the word
    assert match_phrase(tok, "a red apple.", "a red apple.").word_token == 3


def test_phrase_tokens_missing_repeated_and_truncated(pipe):
    tok = pipe.tokenizer
    prompt = "a kitchen with two apples and a green pear"
    # not verbatim: falls back to the last word's tokens
    m = match_phrase(tok, prompt, "a ripe pear")
    assert m.how == "last_word" and m.tokens == (9,) and m.word_token == 9
    # nothing matches: empty, the caller warns
    assert phrase_token_indices(tok, prompt, "a zebra") == []
    assert match_phrase(tok, prompt, "a zebra").how == "none"
    # no half-token matches: "at" is not found inside "cat"
    assert phrase_token_indices(tok, "a cat", "at") == []

    # repeated phrases: each after the previous match
    prompt = "a scene with a cat, a cat and a dog"
    ms = match_phrases(tok, prompt, ["a cat", "a cat", "a dog"])
    assert [m.tokens for m in ms] == [(4, 5), (7, 8), (10, 11)]
    # a phrase that only occurs before the previous match: its first occurrence, verbatim
    assert [m.tokens for m in match_phrases(tok, "a cat and a dog", ["a dog", "a cat"])] == [(4, 5), (1, 2)]
    # the single-phrase call takes the first occurrence
    assert phrase_token_indices(tok, prompt, "a cat") == [4, 5]

    # past the 77-token window: dropped (partially visible phrases keep their visible tokens)
    filler = " ".join(["cat"] * 74)
    long_prompt = f"{filler} a red apple"  # 74 + a(75) red(76) apple(77)
    assert phrase_token_indices(tok, long_prompt, "a red apple") == [75]
    assert match_phrase(tok, long_prompt, "a red apple").word_token is None
    assert phrase_token_indices(tok, f"{filler} {filler} a dog", "a dog") == []
    # the word-token span the renormalised energy uses: BOS, EOS and padding left out, truncated
    assert word_span(tok, "a cat and a dog") == (1, 6)
    assert word_span(tok, long_prompt) == (1, 76) and word_span(tok, "") == (1, 1)


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------

def test_layer_presets_on_tiny_and_sd15_topology(pipe):
    from diffusers import UNet2DConditionModel

    unet = pipe.unet
    assert select_layers(unet, "guidance") == GUIDE
    assert select_layers(unet, "mask") == ["down_blocks.2.attentions.0.transformer_blocks.0.attn2"]
    assert select_layers(unet, "transfer") == GUIDE
    groups = layers_by_block(unet)
    assert [len(groups[k]) for k in ("down", "mid", "up")] == [3, 1, 6]
    res = {l.name: l.resolution((16, 16)) for l in cross_attention_layers(unet)}
    assert res[GUIDE[0]] == (2, 2) and res[GUIDE[1]] == (4, 4)
    assert select_layers(unet, [("down", -1, -1, 0), GUIDE[0] + ".processor"]) == [
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2", GUIDE[0]]
    with pytest.raises(ValueError, match="no cross-attention layer"):
        select_layers(unet, [("up", 1, 2, 0)])
    with pytest.raises(ValueError, match="unknown layer preset"):
        select_layers(unet, "everything")

    # SD1.5's topology (2 attentions per down block, 3 per up block), narrow channels: LMD's names
    sd15 = UNet2DConditionModel(block_out_channels=(32, 32, 64, 64), layers_per_block=2, sample_size=64,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                attention_head_dim=8, norm_num_groups=32, cross_attention_dim=32)
    assert select_layers(sd15, "guidance") == [
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2"]
    assert select_layers(sd15, "mask") == ["down_blocks.2.attentions.1.transformer_blocks.0.attn2"]
    assert select_layers(sd15, [("down", 2, 1, 0)]) == select_layers(sd15, "mask")
    res = {l.name: l.resolution((64, 64)) for l in cross_attention_layers(sd15)}
    assert res["mid_block.attentions.0.transformer_blocks.0.attn2"] == (8, 8)
    assert res["up_blocks.1.attentions.2.transformer_blocks.0.attn2"] == (16, 16)
    assert res["down_blocks.2.attentions.1.transformer_blocks.0.attn2"] == (16, 16)
    assert res["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == (64, 64)
    assert len(select_layers(sd15, "per_box")) == 5


# ---------------------------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------------------------

def test_capture_records_cond_half_and_leaves_output_unchanged(pipe):
    unet = pipe.unet
    cond = encode(pipe, ["a scene with a red apple", "a scene with a blue car"])
    uncond = encode(pipe, ["", ""])
    z = latents(2, seed=1)
    t = torch.tensor(700)
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        with install_attention_capture(unet, "per_box") as handle:
            captured = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            record = handle.store.last()
            # the same conditional inputs alone, in a "cond"-layout scope: the same maps
            with handle.store.scoped(batch_layout="cond"):
                unet(z, t, encoder_hidden_states=cond)
                cond_only = handle.store.last()
            assert len(handle.store.records) == 1  # the scoped call left no record behind
            n_capturing = sum(isinstance(p, CaptureProcessor) for p in unet.attn_processors.values())
            with pytest.raises(ValueError, match="already installed"):
                install_attention_capture(unet, "guidance")
    assert n_capturing == 4
    assert torch.equal(plain, captured)  # bit-identical: the layers' own processors make the output
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}

    assert set(record) == set(select_layers(unet, "per_box"))
    mid = record[GUIDE[0]]
    assert mid.shape == (2, 8, 2, 2, 77) and mid.dtype == torch.float32
    assert record[GUIDE[1]].shape == (2, 8, 4, 4, 77)
    assert torch.allclose(mid.sum(-1), torch.ones(()), atol=1e-5)
    for name in record:
        assert torch.allclose(record[name], cond_only[name], atol=1e-6)
    assert not torch.allclose(record[GUIDE[1]][0], record[GUIDE[1]][1])  # the two prompts differ


def test_capture_token_selection_in_a_real_pipeline_run(pipe):
    store = AttentionStore(batch_layout="cfg", tokens=torch.tensor([[7], [6]]), device="cpu")
    with install_attention_capture(pipe.unet, "per_box", store):
        pipe(["a scene with a red apple", "a scene with a car"], num_inference_steps=3, guidance_scale=7.5,
             height=128, width=128, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert len(store.records) == 3  # one per denoising step (CFG batch of 4 -> 2 conditional samples)
    word = store.maps("down_blocks.2.attentions.0.transformer_blocks.0.attn2")
    assert [m.shape for m in word] == [(2, 8, 4, 4, 1)] * 3
    assert not word[0].requires_grad


# ---------------------------------------------------------------------------------------------
# energy
# ---------------------------------------------------------------------------------------------

def test_box_cells_follow_lmd_rounding():
    # corner and size rounded separately; half to even like Python's round()
    assert box_cells([0, 0, 256, 256], 16, 16) == (0, 0, 8, 8)
    assert box_cells([16, 48, 32, 32], 16, 16) == (0, 2, 1, 3)  # 0.5 -> 0, 1.5 -> 2, size 1 each
    assert box_cells([400, 0, 300, 512], 8, 8) == (6, 0, 8, 8)  # clipped
    assert box_mask([[0, 0, 128, 128], [384, 384, 128, 128]], 4, 4).sum() == 2


def _map(inside: bool, heads=2, side=4, token=3):
    """(1, heads, side, side, 77) probabilities: token `token` all inside the left half, or all outside."""
    a = torch.full((1, heads, side, side, 77), 0.0)
    cols = slice(0, side // 2) if inside else slice(side // 2, side)
    a[..., :, cols, token] = 1.0 / (side * side // 2)
    a[..., 0] = 1 - a[..., token]  # rows still sum to 1
    return a


def test_energy_values_and_direction():
    left = PhraseTarget(tokens=(3,), boxes=((0, 0, 256, 512),), word_token=3)
    inside, outside = _map(True), _map(False)
    e_in = box_energy([inside, inside], [[left]])
    e_out = box_energy([outside, outside], [[left]])
    # by hand: k_fg = floor(0.2*8) = 1, top value 1/8 -> fg = 2 heads * (1 - 1/8); bg = 0
    assert e_in.shape == (1,) and e_in.item() == pytest.approx(2 * (1 - 1 / 8))
    # outside: fg = 2 * 1; bg = 4 * 2 heads * 1/8
    assert e_out.item() == pytest.approx(2 + 4 * 2 / 8)
    assert e_in.item() < e_out.item()
    # batch: one energy per sample, each as if alone; a phrase without tokens is skipped
    both = box_energy([torch.cat([inside, outside])], [[left], [left, PhraseTarget((), ((0, 0, 1, 1),))]])
    assert torch.allclose(both, torch.cat([e_in, e_out]))
    # uniform attention scores in between
    uni = torch.full((1, 2, 4, 4, 77), 1 / 77)
    assert e_in.item() < box_energy([uni], [[left]]).item() < e_out.item()

    # energy_tokens "prompt": renormalised over the span, the same maps read as if the padding were not there
    parked = inside.clone()
    parked[..., 3] *= 0.05   # the object's token keeps 5% of its attention ...
    parked[..., 0] = 0.0
    parked[..., 10] = 1 - parked[..., 3] - 0.01  # ... the rest goes to a padding column
    parked[..., 2] = 0.01  # a word token of the prompt
    raw = box_energy([parked], [[left]]).item()
    spanned = PhraseTarget(tokens=(3,), boxes=left.boxes, word_token=3, span=(1, 5))
    ren = box_energy([parked], [[spanned]]).item()
    by_hand = parked[..., 1:5] / parked[..., 1:5].sum(-1, keepdim=True)
    assert ren == pytest.approx(box_energy([by_hand], [[PhraseTarget((2,), left.boxes)]]).item(), rel=1e-5)
    assert raw > 2 * (1 - 0.05 / 8) - 1e-6 and ren < raw  # raw: fg at its maximum; renormalised: not
    with pytest.raises(ValueError, match="span"):
        box_energy([parked], [[PhraseTarget(tokens=(6,), boxes=left.boxes, span=(1, 5))]])

    # attention transfer: zero against itself, positive against a different map, weighted by lambda
    box = (0, 0, 256, 512)
    same = TransferTarget(phrase=0, box=box, reference=(inside[0, ..., 3],))
    noise = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    other = TransferTarget(phrase=0, box=box, reference=(noise,))
    assert transfer_energy([inside], [[left]], [[same]]).item() == pytest.approx(0, abs=1e-6)
    d = transfer_energy([inside], [[left]], [[other]]).item()
    assert d > 0.1
    total = lmd_energy([inside], [[left]], [[other]], ref_ca_loss_weight=2.0)
    assert total.item() == pytest.approx(box_energy([inside], [[left]]).item() + 2.0 * d, rel=1e-6)


def test_in_box_attention_ratio():
    inside = _map(True)
    assert in_box_attention_ratio(inside, [3], (0, 0, 256, 512)) == pytest.approx(1.0)
    assert in_box_attention_ratio(inside, [3], (256, 0, 256, 512)) == pytest.approx(0.0)
    uniform = torch.full((2, 8, 16, 16, 77), 1 / 77)
    assert in_box_attention_ratio(uniform, [5, 6], (0, 0, 128, 256)) == pytest.approx(0.125)
    # several layers at different resolutions: masses summed
    layers = [torch.full((8, 4, 4, 77), 1 / 77), torch.full((8, 8, 8, 77), 1 / 77)]
    assert in_box_attention_ratio(layers, [1], (0, 0, 256, 256), size=512) == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------
# guidance
# ---------------------------------------------------------------------------------------------

PROMPTS = ["a scene with a red apple", "a scene with a blue car", "a scene with a cat", "a scene with a dog"]
PHRASES = ["a red apple", "a blue car", "a cat", "a dog"]
BOXES = [(0, 0, 256, 256), (256, 0, 256, 512), (0, 256, 512, 256), (128, 128, 256, 256)]


@pytest.fixture(scope="module")
def guided(pipe):
    """Energy setup for 4 independent per-box-like samples on the tiny UNet (128 px)."""
    unet = pipe.unet
    handle = install_attention_capture(unet, "guidance")
    phrases = [[PhraseTarget(tuple(phrase_token_indices(pipe.tokenizer, p, ph)), (b,))]
               for p, ph, b in zip(PROMPTS, PHRASES, BOXES)]
    assert all(p[0].tokens for p in phrases)
    t = pipe.scheduler.config.num_train_timesteps - 1
    yield dict(unet=unet, store=handle.store, cond=encode(pipe, PROMPTS), phrases=phrases, t=torch.tensor(t),
               alphabar=alphabar(pipe.scheduler, t))
    handle.restore()


def _energy_fn(g, **kw):
    return UNetEnergy(g["unet"], g["store"], GUIDE, g["t"], g["cond"], g["phrases"], **kw)


def test_energy_gradient_and_guidance_reduces_energy(guided):
    z = latents(4, seed=2)
    fn = _energy_fn(guided)
    zz = z.clone().requires_grad_(True)
    with torch.enable_grad():
        e = fn(zz, torch.arange(4))
        (grad,) = torch.autograd.grad(e.sum(), zz)
    assert torch.isfinite(grad).all() and (grad.abs().sum(dim=(1, 2, 3)) > 0).all()
    # early stop (the default) skips the end of the UNet and changes neither energy nor gradient
    zz2 = z.clone().requires_grad_(True)
    with torch.enable_grad():
        e2 = _energy_fn(guided, early_stop=False)(zz2, torch.arange(4))
        (grad2,) = torch.autograd.grad(e2.sum(), zz2)
    assert torch.allclose(e, e2) and torch.allclose(grad, grad2, atol=1e-9)

    result = guide_latents(z, fn, step_index=0, alphabar_t=guided["alphabar"], loss_scale=5.0, loss_threshold=5.0)
    assert len(result.trace) == 4 and result.iterations.tolist() == [4] * 4  # energies ~8.5 > 5: all 4 run
    assert torch.allclose(result.trace[0], e.detach())
    with torch.enable_grad():
        after = fn(result.latents.clone().requires_grad_(True), torch.arange(4)).detach()
    assert (after < result.trace[0]).all()  # every sample's energy went down
    assert (result.trace[-1] < result.trace[0]).all()
    assert torch.equal(result.energy, result.trace[-1])
    assert not result.latents.requires_grad and result.latents.shape == z.shape


def test_batch_guidance_equals_single_runs(guided):
    z = latents(4, seed=3)
    kw = dict(step_index=7, alphabar_t=guided["alphabar"], loss_scale=5.0, loss_threshold=5.0)
    batch = guide_latents(z, _energy_fn(guided), **kw)
    assert batch.iterations.tolist() == [3] * 4
    assert (batch.latents - z).abs().amax() > 0.05  # the updates are far above the tolerance
    for i in range(4):
        fn = _energy_fn(guided)
        single = guide_latents(z[i:i + 1], lambda x, idx, i=i: fn(x, idx + i), **kw)
        assert torch.allclose(single.latents[0], batch.latents[i], atol=1e-5, rtol=0)
        assert torch.equal(single.iterations[0], batch.iterations[i])
        assert torch.allclose(single.energy[0], batch.energy[i], atol=1e-5)


def test_batch_guidance_is_exactly_independent_in_fp64(pipe):
    """In fp64 the batch and the single runs agree to rounding: samples never interact."""
    from lmd_batch.models.loaders import load_sd_pipeline

    unet = load_sd_pipeline("tiny-sd").unet.double().eval().requires_grad_(False)  # a private copy
    with install_attention_capture(unet, "guidance") as handle:
        cond = encode(pipe, PROMPTS).double()
        phrases = [[PhraseTarget(tuple(phrase_token_indices(pipe.tokenizer, p, ph)), (b,))]
                   for p, ph, b in zip(PROMPTS, PHRASES, BOXES)]
        fn = UNetEnergy(unet, handle.store, GUIDE, torch.tensor(999), cond, phrases)
        z = latents(4, seed=5).double()
        kw = dict(step_index=0, alphabar_t=0.01, loss_scale=50.0)
        batch = guide_latents(z, fn, **kw)
        assert batch.latents.dtype == torch.float64 and (batch.latents - z).abs().amax() > 0.1
        for i in (0, 3):
            single = guide_latents(z[i:i + 1], lambda x, idx, i=i: fn(x, idx + i), **kw)
            assert torch.allclose(single.latents[0], batch.latents[i], atol=1e-12, rtol=0)


def test_guidance_schedule_threshold_and_carry_over(guided):
    assert len(LMD_MAX_ITERATIONS) == 30 and sum(LMD_MAX_ITERATIONS[:30]) + 0 * 20 == 65
    assert [max_iterations(i) for i in (0, 4, 5, 9, 10, 19, 20, 29, 30, 49)] == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert max_iterations(3, guidance_steps=2) == 0
    z = latents(4, seed=4)
    fn = _energy_fn(guided)
    # no guidance from guidance_steps on
    r = guide_latents(z, fn, step_index=30, alphabar_t=guided["alphabar"])
    assert r.trace == [] and torch.equal(r.latents, z)
    # carried energy below the threshold: nothing runs; above for some samples: only those run
    prev = torch.tensor([1.0, 100.0, 1.0, 100.0])
    r = guide_latents(z, fn, step_index=0, alphabar_t=guided["alphabar"], prev_energy=prev)
    assert r.iterations.tolist() == [0, 4, 0, 4]
    assert torch.equal(r.latents[0], z[0]) and torch.equal(r.latents[2], z[2])
    assert torch.isnan(r.trace[0][0]) and not torch.isnan(r.trace[0][1])
    # a threshold above the energy: the first iteration runs (energy starts at 10000), then stops
    r = guide_latents(z, fn, step_index=0, alphabar_t=guided["alphabar"], loss_threshold=50.0)
    assert r.iterations.tolist() == [1] * 4
    # nothing to guide (no phrase token found): energy 0, latents untouched
    empty = UNetEnergy(guided["unet"], guided["store"], GUIDE, guided["t"], guided["cond"],
                       [[PhraseTarget((), (BOXES[0],))]] * 4)
    r = guide_latents(z, empty, step_index=0, alphabar_t=guided["alphabar"])
    assert torch.equal(r.latents, z) and r.energy.tolist() == [0.0] * 4 and r.iterations.tolist() == [1] * 4


def test_unet_energy_with_attention_transfer(guided):
    z = latents(4, seed=6)
    phrases = [[PhraseTarget(p[0].tokens, p[0].boxes, word_token=p[0].tokens[-1])] for p in guided["phrases"]]
    plain = UNetEnergy(guided["unet"], guided["store"], GUIDE, guided["t"], guided["cond"], phrases)
    with torch.no_grad():
        maps = plain.maps(z, torch.arange(4))
    # references: the word-token maps of the same latents (distance 0) or of other latents (> 0)
    with torch.no_grad():
        other_maps = plain.maps(latents(4, seed=7), torch.arange(4))
    def refs(ms):
        return [[TransferTarget(0, BOXES[i], tuple(m[i, ..., phrases[i][0].word_token] for m in ms))] for i in range(4)]
    kw = dict(ref_ca_loss_weight=2.0)
    same = UNetEnergy(guided["unet"], guided["store"], GUIDE, guided["t"], guided["cond"], phrases, refs(maps), **kw)
    diff = UNetEnergy(guided["unet"], guided["store"], GUIDE, guided["t"], guided["cond"], phrases,
                      refs(other_maps), **kw)
    zz = z.clone().requires_grad_(True)
    with torch.enable_grad():
        e0, e1, e2 = plain(zz, torch.arange(4)), same(zz, torch.arange(4)), diff(zz, torch.arange(4))
        (grad,) = torch.autograd.grad(e2.sum(), zz)
    assert torch.allclose(e0, e1, atol=1e-5)
    assert (e2 > e0 + 1e-4).all() and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------

def test_noise_is_deterministic_and_blends_inside_boxes_only():
    a = shared_noise(7, "p-001", 0, BOXES[:2], ratio=0.01, latent_shape=(4, 16, 16))
    b = shared_noise(7, "p-001", 0, BOXES[:2], ratio=0.01, latent_shape=(4, 16, 16))
    for x, y in ((a.background, b.background), (a.foreground, b.foreground), (a.initial, b.initial)):
        assert x.numpy().tobytes() == y.numpy().tobytes()
    assert a.background.shape == (1, 4, 16, 16) and a.initial.shape == (2, 4, 16, 16)
    assert gaussian_noise(123, (2, 3)).numpy().tobytes() == gaussian_noise(123, (2, 3)).numpy().tobytes()
    assert gaussian_noise(123, (2, 3), dtype=torch.float64).dtype == torch.float64

    # seeds: per (job, prompt, sample, box); distinct from each other and from the background
    seeds = {a.seeds["background"], *a.seeds["boxes"]}
    assert len(seeds) == 3 and a.seeds["background"] == background_seed(7, "p-001", 0)
    assert a.seeds["boxes"][1] == box_seed(7, "p-001", 0, 1)
    other = shared_noise(7, "p-001", 1, BOXES[:2], ratio=0.01, latent_shape=(4, 16, 16))
    assert not torch.equal(other.background, a.background)

    # blending rule: bg * sqrt(1 - r) + fg * sqrt(r) inside the box, exactly bg outside
    r = 0.1
    c = shared_noise(7, "p-001", 0, [(0, 0, 256, 256)], ratio=r, latent_shape=(4, 16, 16))
    inside = c.initial[0, :, :8, :8]
    expect = c.background[0, :, :8, :8] * math.sqrt(1 - r) + c.foreground[0, :, :8, :8] * math.sqrt(r)
    assert torch.allclose(inside, expect, atol=1e-7)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[:8, :8] = False
    assert torch.equal(c.initial[0][:, outside], c.background[0][:, outside])
    assert torch.equal(blend_box_noise(c.background, c.foreground[:1], (0, 0, 256, 256), 0.0), c.background)
    assert default_blending_ratio("lmd") == 0.01 and default_blending_ratio("lmd_plus") == 0.1
    assert default_blending_ratio("lmd", 0.3) == 0.3
