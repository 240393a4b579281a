"""`lmd-batch generate`: one layout file to one image, without a job or a run folder.

For trying a layout, a model or a method by hand, and for debugging the image stage: the same
code path (grounding.generate.generate_layout) with settings from the command line, and every
intermediate worth looking at written into one folder:

    OUT/image.png        the generated image
    OUT/box-NN.png       each box's own per-box image (LMD / LMD+; NN = box index, captions sorted)
    OUT/mask-NN.png      each box's mask (the frozen region), upscaled to the image size
    OUT/report.json      per box: caption, box, in-box attention ratio at each guided step and
                         at the end; warnings; timings; UNet passes; the settings used

Registered on the main app by cli.py (`register(app)`); kept in its own module so `--help` and
the other commands never import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lmd_batch.errors import UserError

METHODS = ("lmd", "lmd_plus", "sd", "gligen")
MASKS = ("sam", "attention", "box")

HELP = """Generate one image from a layout file (LMD, LMD+, or a baseline).

The layout is a JSON file {"objects": [{"caption": "a cat", "box": [x, y, w, h]}, ...],
"background": "...", "negative": "..."} with boxes on LMD's 512 x 512 canvas (top-left
origin), or a layout in LMD's text format (Objects: [('a cat', [x, y, w, h])] / Background
prompt: ... / Negative prompt: ...). It is repaired as stage 1 would (empty captions and
background-sized boxes dropped, boxes clamped), and every change is listed in report.json.

Methods: lmd (per-box generation with attention guidance, SAM masks, composition, guided
overall generation), lmd_plus (the same with GLIGEN), sd (plain Stable Diffusion with the
layout's negative prompt), gligen (GLIGEN alone). All start from the same noise for the same
--seed/--prompt-id/--sample, so their images can be compared.

Writes into --out: image.png, box-NN.png and mask-NN.png per box, report.json.
"""
# typer renders help with rich markup, where "[x, y, w, h]" would read as a style tag
HELP = HELP.replace("[", "\\[")


def _read_layout(path: Path, max_boxes: int):
    """Parse and repair the layout file: (layout, format, notes); one-line UserError otherwise."""
    from lmd_batch.layout.completion import parse_completion
    from lmd_batch.layout.lmd_text import LayoutParseError
    from lmd_batch.layout.repair import LayoutRejected, repair_layout, validate_layout

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"layout file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"layout file {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise UserError(f"layout file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read layout file {path}: {exc.strerror or exc}") from None
    try:
        raw, fmt = parse_completion(text)
    except LayoutParseError as exc:
        raise UserError(f"{path} is not a layout: {exc.reason}") from None
    layout, notes = repair_layout(raw, max_boxes=max_boxes)
    try:
        validate_layout(layout, len(raw.boxes))
    except LayoutRejected as exc:
        raise UserError(f"{path}: nothing to draw ({exc})") from None
    return layout, fmt, notes


def _write_png(path: Path, array) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")


def _mask_image(mask, size: int):
    """A {0, 1} latent-resolution mask as a (size, size) uint8 image (nearest upscaling)."""
    import numpy as np
    import torch

    m = (torch.as_tensor(mask).float() > 0.5).numpy().astype(np.uint8) * 255
    reps = max(1, size // m.shape[0]), max(1, size // m.shape[1])
    return np.kron(m, np.ones(reps, dtype=np.uint8))


def write_outputs(out: Path, result, extra: dict) -> dict:
    """Write image.png, box-NN.png, mask-NN.png and report.json (`extra` + the result's report,
    warnings concatenated) into `out`; returns the report written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_png(out / "image.png", result.image)
        size = int(result.image.shape[0])
        files = ["image.png"]
        for b in result.boxes:
            if b.image is not None:
                name = f"box-{b.index:02d}.png"
                _write_png(out / name, b.image)
                files.append(name)
            name = f"mask-{b.index:02d}.png"
            _write_png(out / name, _mask_image(b.mask, size))
            files.append(name)
        report = {**extra, **result.report, "files": files + ["report.json"]}
        report["warnings"] = list(extra.get("warnings", [])) + list(result.report.get("warnings", []))
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
    return report


def generate(
    layout: Path = typer.Option(..., "--layout", help="Layout file: our JSON shape or LMD's text format.",
                                show_default=False),
    out: Path = typer.Option(..., "--out", help="Output folder (created if missing).", show_default=False),
    method: str = typer.Option("lmd", "--method", help="lmd | lmd_plus | sd | gligen."),
    model: str = typer.Option("tiny-sd", "--model",
                              help="SD model for lmd and sd: built-in name, Hugging Face id, folder or fsspec URL."),
    gligen_model: str = typer.Option("tiny-gligen", "--gligen-model", help="GLIGEN model for lmd_plus and gligen."),
    sam_model: str = typer.Option("tiny-sam", "--sam-model", help="SAM model for the per-box masks."),
    mask: str = typer.Option("sam", "--mask", help="Per-box mask: sam | attention | box."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps (LMD: 50)."),
    size: int = typer.Option(512, "--size", help="Image side in pixels, a multiple of 64 (LMD: 512; "
                                                  "the tiny built-in models are fast at 128)."),
    seed: int = typer.Option(0, "--seed", help="Job seed; every noise derives from (seed, prompt id, sample)."),
    prompt_id: str = typer.Option("generate", "--prompt-id",
                                  help="Prompt id for seeding (use a batch run's id to reproduce its image)."),
    sample: int = typer.Option(0, "--sample", help="Sample index for seeding."),
    prompt: Optional[str] = typer.Option(None, "--prompt",
                                         help="The user's original prompt: the sd/gligen baselines use it instead "
                                              "of the synthetic overall prompt (LMD's protocol)."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", help="Classifier-free guidance scale."),
    guidance_steps: Optional[int] = typer.Option(
        None, "--guidance-steps", help="Steps with attention guidance; default 60% of --steps (LMD: 30 of 50)."),
    frozen_ratio: float = typer.Option(0.5, "--frozen-ratio",
                                       help="Share of the steps with the foreground frozen to the per-box latents."),
    max_boxes: int = typer.Option(16, "--max-boxes", help="Boxes kept from the layout (the rest are dropped, noted)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)."),
) -> None:
    try:
        _generate(layout, out, method, model, gligen_model, sam_model, mask, steps, size, seed, prompt_id, sample,
                  prompt, guidance_scale, guidance_steps, frozen_ratio, max_boxes, device)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code)


def _generate(layout_path, out, method, model, gligen_model, sam_model, mask, steps, size, seed, prompt_id, sample,
              prompt, guidance_scale, guidance_steps, frozen_ratio, max_boxes, device) -> None:
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if mask not in MASKS:
        raise UserError(f"--mask must be one of {', '.join(MASKS)}, not {mask!r}")
    if max_boxes < 1:
        raise UserError("--max-boxes must be at least 1")
    layout, fmt, notes = _read_layout(Path(layout_path), max_boxes)

    from pydantic import ValidationError

    from lmd_batch.config import DiffusionConfig, validation_problems

    if guidance_steps is None:
        guidance_steps = round(0.6 * steps)
    try:
        cfg = DiffusionConfig(method=method, model=model, gligen_model=gligen_model, sam_model=sam_model, mask=mask,
                              steps=steps, size=size, guidance_scale=guidance_scale, guidance_steps=guidance_steps,
                              frozen_step_ratio=frozen_ratio)
    except ValidationError as exc:
        raise UserError(f"invalid setting: {'; '.join(validation_problems(exc))}") from None

    from lmd_batch.errors import require

    require("torch", "diffusion")
    require("diffusers", "diffusion")
    from lmd_batch.grounding.generate import generate_layout

    result = generate_layout(layout, method, model=model, gligen_model=gligen_model, sam_model=sam_model, cfg=cfg,
                             job_seed=seed, prompt_id=prompt_id, sample=sample, prompt=prompt, max_boxes=max_boxes,
                             device=device)
    extra = {
        "layout": {"file": str(layout_path), "format": fmt, "repairs": notes,
                   "objects": [{"caption": b.caption, "box": b.as_list()} for b in layout.boxes],
                   "background": layout.background, "negative": layout.negative},
        "settings": {"method": method, "model": model, "gligen_model": gligen_model, "sam_model": sam_model,
                     "mask": mask, "steps": steps, "size": size, "seed": seed, "prompt_id": prompt_id,
                     "sample": sample, "guidance_scale": guidance_scale, "guidance_steps": guidance_steps,
                     "frozen_step_ratio": frozen_ratio, "original_prompt": prompt},
        "warnings": notes,
    }
    report = write_outputs(Path(out), result, extra)
    ratios = [b["in_box_ratio"]["final"] for b in report.get("boxes", [])]
    shown = ", ".join("-" if r is None else f"{r:.3f}" for r in ratios) or "no boxes"
    typer.echo(f"wrote {out}/image.png ({method}, {size} px, {steps} steps; in-box attention at the end: {shown}; "
               f"{report['unet_passes']['total']} UNet passes; {report['timings']['total_s']:.1f} s)")
    for w in report["warnings"]:
        typer.echo(f"note: {w}")


def register(app: typer.Typer) -> None:
    """Add `generate` to a typer app (cli.py: `from lmd_batch.cli_generate import register; register(app)`)."""
    app.command("generate", help=HELP, no_args_is_help=True)(generate)
