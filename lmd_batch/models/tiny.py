"""Tiny, randomly initialised models built from configs, saved in their native formats.

They have the production architectures' structure (SD1.x-shaped UNet with cross-attention at
three resolutions plus mid, x8 VAE, CLIP text encoder over the real 49,408-token CLIP vocabulary,
GLIGEN gated attention, SAM, OWL-ViT) at a size that runs in milliseconds on a CPU, so tests and
the demo go through exactly the loading code that opens real weights. Facts and pitfalls behind
the configs: ENV-TINY-MODELS.md. Each builder seeds torch, so the same versions give the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT_DIM = 32  # text hidden size == cross_attention_dim (GLIGEN feeds the pooled output to its position net)


def _seed(seed: int = 0):
    """Seed torch and quiet the libraries' progress bars and deprecation chatter while building."""
    import diffusers.utils.logging as dlog
    import torch
    import transformers.utils.logging as tlog

    for log in (dlog, tlog):
        log.disable_progress_bar()
        log.set_verbosity_error()
    torch.manual_seed(seed)


def _text_encoder(tok, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, projection_dim=TEXT_DIM, hidden_act=act))


def _unet(**extra):
    from diffusers import UNet2DConditionModel

    cfg = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, sample_size=16,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
               attention_head_dim=8, norm_num_groups=32, cross_attention_dim=TEXT_DIM, in_channels=4, out_channels=4)
    cfg.update(extra)
    return UNet2DConditionModel(**cfg)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=1,
                         norm_num_groups=8, sample_size=128)


def _ddim(**extra):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, **extra)


def build_tiny_sd(out: Path, vocab: Path) -> None:
    """SD1.x-shaped pipeline (default size 128 px: sample_size 16 x VAE factor 8)."""
    from diffusers import StableDiffusionPipeline

    from lmd_batch.models.clip_vocab import clip_tokenizer

    _seed(0)
    tok = clip_tokenizer(vocab)
    StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(tok), tokenizer=tok, unet=_unet(),
                            scheduler=_ddim(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out)


def build_tiny_sd2(out: Path, vocab: Path) -> None:
    """SD2.x-shaped pipeline: v-prediction, linear projections, per-level head dims, gelu text encoder."""
    from diffusers import StableDiffusionPipeline

    from lmd_batch.models.clip_vocab import clip_tokenizer

    _seed(0)
    tok = clip_tokenizer(vocab, pad_token="!")
    unet = _unet(use_linear_projection=True, attention_head_dim=(2, 4, 8, 8))
    StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(tok, act="gelu"), tokenizer=tok, unet=unet,
                            scheduler=_ddim(prediction_type="v_prediction"), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(out)


def build_tiny_gligen(out: Path, vocab: Path) -> None:
    """GLIGEN (gated self-attention). Its gates start at 0 in diffusers, which would make the boxes
    do nothing; we set them to 1 so that a random tiny GLIGEN reacts to box positions."""
    import torch
    from diffusers import StableDiffusionGLIGENPipeline

    from lmd_batch.models.clip_vocab import clip_tokenizer

    _seed(0)
    tok = clip_tokenizer(vocab)
    unet = _unet(attention_type="gated")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("alpha_attn") or name.endswith("alpha_dense"):
                p.fill_(1.0)
    StableDiffusionGLIGENPipeline(vae=_vae(), text_encoder=_text_encoder(tok), tokenizer=tok, unet=unet,
                                  scheduler=_ddim(), safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False).save_pretrained(out)


TINY_SAM_CONFIG = dict(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=32,
                       window_size=4, global_attn_indexes=[1], prompt_dim=32, decoder_depth=2, decoder_mlp_dim=64)
SAM_CONFIG_FILE = "lmd_sam.json"
SAM_WEIGHTS_FILE = "sam.pth"


def sam_from_config(cfg: dict):
    """Build a segment-anything `Sam` of any size from our JSON config (its own builders fix 1024 px)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size, patch, dim = cfg["img_size"], cfg["patch_size"], cfg["prompt_dim"]
    grid = size // patch
    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=cfg["embed_dim"], depth=cfg["depth"],
                                      num_heads=cfg["num_heads"], mlp_ratio=4, out_chans=cfg["out_chans"],
                                      qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      use_rel_pos=True, window_size=cfg["window_size"],
                                      global_attn_indexes=cfg["global_attn_indexes"]),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(size, size),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=cfg["decoder_depth"], embedding_dim=dim,
                                                               mlp_dim=cfg["decoder_mlp_dim"], num_heads=2),
                                 transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def build_tiny_sam(out: Path, vocab: Path) -> None:
    """Tiny SAM: a state_dict (torch.save, loadable with weights_only=True) plus our config JSON."""
    import torch

    _seed(0)
    out.mkdir(parents=True, exist_ok=True)
    model = sam_from_config(TINY_SAM_CONFIG)
    torch.save(model.state_dict(), out / SAM_WEIGHTS_FILE)
    (out / SAM_CONFIG_FILE).write_text(json.dumps(dict(TINY_SAM_CONFIG, arch="lmd-batch-sam"), indent=1))


def build_tiny_owlvit(out: Path, vocab: Path) -> None:
    """Tiny OWL-ViT detector + processor (128 px, patch 16, 16-token queries)."""
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    from lmd_batch.models.clip_vocab import clip_tokenizer

    _seed(0)
    tok = clip_tokenizer(vocab, model_max_length=16, pad_token="!")
    cfg = OwlViTConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=128, patch_size=16),
        projection_dim=32)
    OwlViTForObjectDetection(cfg).save_pretrained(out)
    proc = OwlViTProcessor(OwlViTImageProcessor(size={"height": 128, "width": 128},
                                                crop_size={"height": 128, "width": 128}), tok)
    proc.save_pretrained(out)
