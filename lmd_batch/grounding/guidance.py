"""Latent backward guidance (LMD-REFERENCE.md 2.3).

Before denoising step `index` (0-based) with `index < guidance_steps`, LMD repeats, while the
unscaled energy from the previous iteration is above `loss_threshold` and fewer than
max_iter[index] iterations ran:

    1. a conditional-only UNet forward with grad (no CFG batch), attention captured;
    2. loss = loss_scale * E(attention);
    3. z_t <- z_t - sqrt(1 - alphabar_t) * d loss / d z_t.

The step is the DDIM one, sqrt(1 - alphabar_t), whatever the scheduler class: the reference
switches to sigma_t^2 when a scheduler has `sigmas`, a pitfall we do not reproduce (LMD's default
scheduler is DDIM). The energy carries over from step to step and starts at 10000, so the first
iteration of step 0 always runs. Iterations per step follow the reference code, not the paper's
prose: 4 x5 steps, 3 x5, 2 x10, 1 x10 (30 steps); at most 65 guided passes in 50 steps.

Batches: `guide_latents` guides B independent latents together. Each sample keeps its own
energy, stopping rule and iteration count; an iteration evaluates only the samples still
active, and one backward of the summed energy gives every sample its own gradient (samples do
not interact in a UNet in eval mode). A batch therefore gives the same result as B single runs,
up to fp32 kernel differences between batch sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from lmd_batch.grounding.attention import AttentionStore, run_unet_capturing
from lmd_batch.grounding.energy import PhraseTarget, TransferTarget, lmd_energy

# max_iter per denoising step index (reference code, models/pipelines.py): 30 entries.
LMD_MAX_ITERATIONS: tuple[int, ...] = (4,) * 5 + (3,) * 5 + (2,) * 10 + (1,) * 10
INITIAL_ENERGY = 10000.0

# energy_fn(latents (n, C, h, w) requiring grad, sample indices (n,) into the batch) -> energies (n,)
EnergyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def max_iterations(step_index: int, guidance_steps: int = 30,
                   schedule: Sequence[int] = LMD_MAX_ITERATIONS) -> int:
    """Gradient iterations allowed before step `step_index`: 0 from `guidance_steps` on.

    For more guided steps than the schedule lists, its last entry (1) repeats.
    """
    if step_index < 0 or step_index >= guidance_steps or not schedule:
        return 0
    return int(schedule[step_index] if step_index < len(schedule) else schedule[-1])


def alphabar(scheduler, timestep) -> float:
    """alphabar_t (the scheduler's cumulative alpha product) at a training timestep."""
    t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
    return float(scheduler.alphas_cumprod[t])


def step_size(alphabar_t: float, loss_scale: float) -> float:
    """The effective step on d E / d z: loss_scale * sqrt(1 - alphabar_t)."""
    return loss_scale * math.sqrt(1.0 - alphabar_t)


@dataclass
class GuidanceResult:
    """latents:    the guided latents (detached), same shape/dtype/device as the input;
    energy:     per sample, the last unscaled energy computed (fp32, (B,)); pass it as
                `prev_energy` to the next step (the reference's carried-over loss);
    trace:      one (B,) fp32 tensor per iteration, NaN where a sample was not evaluated;
    iterations: per sample, how many updates were applied (long, (B,)).
    """

    latents: torch.Tensor
    energy: torch.Tensor
    trace: list[torch.Tensor] = field(default_factory=list)
    iterations: torch.Tensor | None = None


def guide_latents(latents: torch.Tensor, energy_fn: EnergyFn, *, step_index: int, alphabar_t: float,
                  loss_scale: float = 5.0, loss_threshold: float = 5.0, guidance_steps: int = 30,
                  prev_energy: torch.Tensor | None = None,
                  schedule: Sequence[int] = LMD_MAX_ITERATIONS) -> GuidanceResult:
    """Backward-guide a batch of latents before denoising step `step_index` (see module doc).

    energy_fn gets the active samples' latents (requiring grad) and their indices in the batch
    and returns their unscaled energies; it runs under torch.enable_grad() (pipelines call us
    under no_grad). Use `UNetEnergy` for LMD's energy. The UNet's own parameters need no grad:
    `unet.requires_grad_(False)` saves memory and time.
    """
    n = latents.shape[0]
    energy = (prev_energy.detach().float().clone().to(latents.device) if prev_energy is not None
              else torch.full((n,), INITIAL_ENERGY, device=latents.device))
    z = latents.detach().clone()
    iters = torch.zeros(n, dtype=torch.long, device=latents.device)
    trace: list[torch.Tensor] = []
    scale = math.sqrt(1.0 - alphabar_t)
    for _ in range(max_iterations(step_index, guidance_steps, schedule)):
        active = torch.nonzero(energy > loss_threshold).flatten()
        if active.numel() == 0:
            break
        with torch.enable_grad():
            za = z.index_select(0, active).requires_grad_(True)
            e = energy_fn(za, active)
            if e.shape != (active.numel(),):
                raise ValueError(f"energy_fn must return one energy per sample, shape {(active.numel(),)}; "
                                 f"got {tuple(e.shape)}")
            grad = None
            if e.requires_grad:  # an energy with nothing to guide (no phrase found) is a constant
                (grad,) = torch.autograd.grad((loss_scale * e).sum(), za, allow_unused=True)
        if grad is not None:
            z.index_copy_(0, active, (za.detach() - scale * grad).to(z.dtype))
        energy.index_copy_(0, active, e.detach().float())
        iters.index_add_(0, active, torch.ones_like(active))
        row = torch.full((n,), float("nan"), device=latents.device)
        row.index_copy_(0, active, e.detach().float())
        trace.append(row)
    return GuidanceResult(z, energy, trace, iters)


class UNetEnergy:
    """LMD's energy as an `EnergyFn`: a conditional-only UNet forward, capture, `lmd_energy`.

    unet, store:           a UNet with `install_attention_capture(unet, layers, store)` done;
    layers:                the energy layer names (e.g. select_layers(unet, "guidance")), in
                           the order of the transfer references;
    timestep:              the current timestep (scalar);
    encoder_hidden_states: (B, 77, D) conditional text embeddings of the whole batch;
    phrases:               per sample, its PhraseTargets; transfers: per sample, its
                           TransferTargets for this step (overall generation) or None;
    unet_kwargs:           callable(indices) -> extra UNet kwargs for those samples (GLIGEN's
                           cross_attention_kwargs of the conditional half, ...), or None;
    early_stop:            stop the UNet once the energy layers are recorded (saves the rest of
                           the up path; the energy and its gradient are unchanged).
    """

    def __init__(self, unet, store: AttentionStore, layers: Sequence[str], timestep,
                 encoder_hidden_states: torch.Tensor, phrases: Sequence[Sequence[PhraseTarget]],
                 transfers: Sequence[Sequence[TransferTarget]] | None = None, *, ref_ca_loss_weight: float = 2.0,
                 canvas=512, unet_kwargs: Callable[[torch.Tensor], dict] | None = None, early_stop: bool = True,
                 **box_kwargs):
        self.unet, self.store, self.layers = unet, store, list(layers)
        self.timestep = timestep
        self.encoder_hidden_states = encoder_hidden_states
        self.phrases, self.transfers = phrases, transfers
        self.ref_ca_loss_weight, self.canvas = ref_ca_loss_weight, canvas
        self.unet_kwargs, self.early_stop, self.box_kwargs = unet_kwargs, early_stop, box_kwargs

    def maps(self, latents: torch.Tensor, indices: torch.Tensor) -> list[torch.Tensor]:
        """The energy layers' maps for these samples, in the graph if grad is on."""
        ehs = self.encoder_hidden_states.index_select(0, indices.to(self.encoder_hidden_states.device))
        extra = self.unet_kwargs(indices) if self.unet_kwargs is not None else {}
        stop = self.layers if self.early_stop else None
        with self.store.scoped(batch_layout="cond", tokens=None, enabled=True, detach=False, max_records=1,
                               stop_after=stop):
            run_unet_capturing(self.unet, self.store, latents, self.timestep, encoder_hidden_states=ehs, **extra)
            record = self.store.last()
        missing = [n for n in self.layers if n not in record]
        if missing:
            raise RuntimeError(f"no attention captured at {missing}: install_attention_capture on these layers first")
        return [record[n] for n in self.layers]

    def __call__(self, latents: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        idx = indices.tolist()
        phrases = [self.phrases[i] for i in idx]
        transfers = [self.transfers[i] for i in idx] if self.transfers is not None else None
        return lmd_energy(self.maps(latents, indices), phrases, transfers, ref_ca_loss_weight=self.ref_ca_loss_weight,
                          canvas=self.canvas, **self.box_kwargs)
