"""`lmd-batch shapes ...`: the shapes world (a text-to-image model small enough to train on a CPU)."""

from __future__ import annotations

from pathlib import Path

import typer

shapes_app = typer.Typer(help="The shapes world: train a small SD-format model on rendered scenes of coloured shapes.",
                         no_args_is_help=True)


@shapes_app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", file_okay=False, help="Folder to write the diffusers pipeline into."),
    seed: int = typer.Option(0, "--seed", help="Seed of scenes, initialisation and noise (same seed, same weights)."),
    vae_steps: int = typer.Option(600, "--vae-steps", min=0, help="VAE training steps."),
    latents: int = typer.Option(16384, "--latents", min=1, help="Scenes pre-encoded for UNet training."),
    unet_steps: int = typer.Option(4500, "--unet-steps", min=0, help="Text encoder + UNet training steps."),
    batch: int = typer.Option(32, "--batch", min=1, help="Batch size of both phases."),
    size: int = typer.Option(64, "--size", min=32, help="Image size in pixels (64 on a CPU, 128 on a GPU)."),
    attn_weight: float = typer.Option(0.03, "--attn-weight", min=0.0,
                                      help="Weight of the attention-localisation loss (0 = plain training)."),
    attn_from_step: int = typer.Option(300, "--attn-from-step", min=0, help="UNet step the localisation loss starts at."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads."),
    fp32: bool = typer.Option(False, "--fp32", help="Save fp32 weights (default: fp16, half the size)."),
):
    """Train the shapes model from scratch: VAE (4x), then CLIP text encoder + UNet with the
    attention-localisation loss; saves a StableDiffusionPipeline folder plus training.json.

    The localisation loss is box supervision on the cross-attention during training (see
    lmd_batch/shapes/train.py): without it a model this small does not localise its attention,
    and LMD's guidance has nothing to grip.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lmd_batch.shapes.train import TrainConfig, train

    cfg = TrainConfig(size=size, seed=seed, vae_steps=vae_steps, latents=latents, unet_steps=unet_steps, batch=batch,
                      attn_weight=attn_weight, attn_from_step=attn_from_step, threads=threads, fp16=not fp32)
    with Progress(TextColumn("{task.description:<7}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn()) as bars:
        tasks: dict = {}

        def tick(phase, done, total, **losses):
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total, info="")
            info = "  ".join(f"{k} {v:.4f}" for k, v in losses.items())
            bars.update(tasks[phase], completed=done, info=info)

        metrics = train(cfg, out, log=bars.console.print, progress=tick)
    typer.echo(f"trained in {metrics['vae']['seconds'] + metrics['latents']['seconds'] + metrics['unet']['seconds']:.0f} s "
               f"-> {out} (load it anywhere a model is named, e.g. diffusion.model: {out})")


def register(app: typer.Typer) -> None:
    app.add_typer(shapes_app, name="shapes")
