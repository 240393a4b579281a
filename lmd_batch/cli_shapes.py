"""`lmd-batch shapes ...`: the shapes world (a text-to-image model small enough to train on a CPU)."""

from __future__ import annotations

from pathlib import Path

import typer

from lmd_batch.shapes.train import TrainConfig

_DEFAULTS = TrainConfig()  # train.py imports torch only inside its functions

shapes_app = typer.Typer(help="The shapes world: train a small SD-format model on rendered scenes of coloured shapes.",
                         no_args_is_help=True)


@shapes_app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", file_okay=False, help="Folder to write the diffusers pipeline into."),
    seed: int = typer.Option(0, "--seed", help="Seed of scenes, initialisation and noise (same seed, same weights)."),
    vae_steps: int = typer.Option(_DEFAULTS.vae_steps, "--vae-steps", min=0, help="VAE training steps."),
    vae_batch: int = typer.Option(_DEFAULTS.vae_batch, "--vae-batch", min=1, help="VAE batch size."),
    latents: int = typer.Option(_DEFAULTS.latents, "--latents", min=1, help="Scenes pre-encoded for UNet training."),
    unet_steps: int = typer.Option(_DEFAULTS.unet_steps, "--unet-steps", min=0,
                                   help="Text encoder + UNet training steps."),
    batch: int = typer.Option(_DEFAULTS.batch, "--batch", min=1, help="Batch size of the UNet phase."),
    size: int = typer.Option(64, "--size", min=32, help="Image size in pixels (64 on a CPU, 128 on a GPU)."),
    attn_weight: float = typer.Option(0.03, "--attn-weight", min=0.0,
                                      help="Weight of the attention-localisation loss (0 = plain training)."),
    attn_from_step: int = typer.Option(300, "--attn-from-step", min=0, help="UNet step the localisation loss starts at."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads."),
    fp32: bool = typer.Option(False, "--fp32", help="Save fp32 weights (default: fp16, half the size)."),
    device: str = typer.Option("cpu", "--device", help="torch device to train on ('cpu', 'cuda', 'cuda:1'); "
                               "random draws stay on CPU generators, so only the arithmetic changes."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes rendering training scenes ahead (same "
                                "scenes, same weights; use the spare cores when training on a GPU)."),
    checkpoint_every: int = typer.Option(_DEFAULTS.checkpoint_every, "--checkpoint-every", min=0,
                                         help="Steps between checkpoints in OUT/.checkpoint (0: none); rerunning "
                                         "the same command resumes from the last one, to the same weights."),
):
    """Train the shapes model from scratch: VAE (4x), then CLIP text encoder + UNet with the
    attention-localisation loss; saves a StableDiffusionPipeline folder plus training.json.

    The localisation loss is box supervision on the cross-attention during training (see
    lmd_batch/shapes/train.py): without it a model this small does not localise its attention,
    and LMD's guidance has nothing to grip.

    Interrupted? Run the same command again: it resumes from the last checkpoint in OUT and ends
    with the same weights as an uninterrupted run.
    """
    from lmd_batch.errors import UserError
    from lmd_batch.shapes.train import train

    cfg = TrainConfig(size=size, seed=seed, vae_steps=vae_steps, vae_batch=vae_batch, latents=latents, unet_steps=unet_steps, batch=batch,
                      attn_weight=attn_weight, attn_from_step=attn_from_step, threads=threads, fp16=not fp32,
                      device=device, workers=workers, checkpoint_every=checkpoint_every)
    try:
        with _bars() as (bars, tick):
            metrics = train(cfg, out, log=bars.console.print, progress=tick)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(f"trained in {metrics['vae']['seconds'] + metrics['latents']['seconds'] + metrics['unet']['seconds']:.0f} s "
               f"-> {out} (load it anywhere a model is named, e.g. diffusion.model: {out})")


@shapes_app.command("train-gligen")
def train_gligen_cmd(
    out: Path = typer.Option(..., "--out", file_okay=False, help="Folder to write the GLIGEN pipeline into."),
    base: str = typer.Option("shapes-sd", "--base", help="Trained shapes pipeline to ground (built-in, folder or URL)."),
    seed: int = typer.Option(0, "--seed", help="Seed of scenes, initialisation and noise."),
    steps: int = typer.Option(600, "--steps", min=0, help="Training steps of the grounding layers."),
    scenes: int = typer.Option(8192, "--scenes", min=1, help="Scenes pre-encoded for training."),
    batch: int = typer.Option(32, "--batch", min=1, help="Batch size."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads."),
    fp32: bool = typer.Option(False, "--fp32", help="Save fp32 weights (default: fp16)."),
):
    """Add GLIGEN's gated self-attention and position net to a trained shapes model and train only
    those on the renderer's boxes (the base stays frozen); saves a StableDiffusionGLIGENPipeline
    folder for LMD+ and the GLIGEN baseline (diffusion.gligen_model)."""
    from lmd_batch.errors import UserError
    from lmd_batch.shapes.gligen import GligenConfig, train_gligen

    cfg = GligenConfig(seed=seed, steps=steps, scenes=scenes, batch=batch, threads=threads, fp16=not fp32)
    try:
        with _bars() as (bars, tick):
            metrics = train_gligen(base, out, cfg, log=bars.console.print, progress=tick)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(f"trained in {metrics['data']['seconds'] + metrics['train']['seconds']:.0f} s -> {out} "
               f"(use it as diffusion.gligen_model: {out})")


@shapes_app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Argument("shapes-sd", help="SD-format shapes model: built-in name, folder or URL."),
    seeds: int = typer.Option(4, "--seeds", min=1, help="Seeds per single-object prompt (24 kinds x 2 forms each)."),
    vae_scenes: int = typer.Option(200, "--vae-scenes", min=1, help="Rendered scenes for the VAE measure."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="torch device to generate on ('cpu', 'cuda')."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
):
    """Measure a trained shapes model on its own (no LMD): VAE reconstructions, plain generation of
    every colour x shape, and two-object prompts, all judged by the shapes detector and seeded, so
    two training runs can be compared (`accuracy`: single objects with the asked colour and shape)."""
    import json

    from lmd_batch.errors import UserError
    from lmd_batch.shapes.quality import QualitySettings, model_quality

    try:
        q = model_quality(model, QualitySettings(vae_scenes=vae_scenes, seeds=seeds), threads=threads,
                          device=device)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        typer.echo(json.dumps(q, indent=1))
        return
    v, s, p = q["vae"], q["single"], q["pairs"]
    typer.echo(f"{model}: single-object accuracy {s['accuracy']:.1f}% (colour and shape; "
               f"'on' form {s['on']['accuracy']:.1f}%, 'with' form {s['with']['accuracy']:.1f}%; "
               f"{s['on']['images'] + s['with']['images']} images)")
    typer.echo(f"  colour found {s['on']['colour']:.1f}% / {s['with']['colour']:.1f}%, exactly one object "
               f"{s['on']['exactly_one']:.1f}% / {s['with']['exactly_one']:.1f}% ('on' / 'with')")
    typer.echo("  by shape: " + ", ".join(f"{k} {v:.0f}%" for k, v in s["shape_accuracy"].items()))
    typer.echo("  colour by colour: " + ", ".join(f"{k} {v:.0f}%" for k, v in s["colour_found"].items()))
    typer.echo(f"  two objects both found: {p['both_found']:.1f}% of {p['images']} images")
    typer.echo(f"  VAE reconstructions of {v['scenes']} scenes: MSE {v['mse']:.4f}, detector precision "
               f"{v['precision']:.1f}%, recall {v['recall']:.1f}%  ({q['seconds']:.0f} s)")


class _bars:
    """Progress bars on a terminal; one log line per 100 steps otherwise (cluster logs, nohup)."""

    def __enter__(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bars = Progress(TextColumn("{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.bars.__enter__()
        tasks: dict = {}
        infos: dict = {}
        console = self.bars.console

        def tick(phase, done, total, **losses):
            if phase not in tasks:
                tasks[phase] = self.bars.add_task(phase, total=total, info="")
            info = "  ".join(f"{k} {v:.4f}" for k, v in losses.items()) or infos.get(phase, "")
            infos[phase] = info  # training reports its losses every few steps only
            self.bars.update(tasks[phase], completed=done, info=info)
            if not console.is_terminal and (done % 100 == 0 or done == total):
                print(f"{phase} {done}/{total} {info}", flush=True)

        return self.bars, tick

    def __exit__(self, *exc):
        return self.bars.__exit__(*exc)


def register(app: typer.Typer) -> None:
    app.add_typer(shapes_app, name="shapes")
