"""The denoising loss of one batch: DreamBooth's, with min-SNR weighting.

In: the UNet, the training noise scheduler (a ``DDPMScheduler`` built from the model's own
scheduler config: its betas, number of train timesteps and prediction type), a batch's
``UNetInputs``, the ``torch.Generator`` that draws noise and timesteps, min-SNR's gamma (or
None), the dtype the UNet computes in and, optionally, ``snr_table``'s SNR of every timestep on
the training device. Out: the batch's loss, a scalar float32 tensor (left on the device: reading
it waits for the GPU).

Noise and timesteps are drawn on the generator's own device (the trainer's: a CPU generator on
the CPU, a CUDA one on a GPU) and then moved to the training device, so a run is reproducible
from the generator's state alone (and a resumed run draws what an uninterrupted one would). On
a GPU nothing here copies from the host: a host-to-device copy of pageable memory waits for the
GPU to finish everything queued, which kept the CPU from queueing the next step ahead of it.
Timesteps are uniform over the train timesteps. The target is the
noise (epsilon prediction) or the velocity (v-prediction), as the scheduler says. Min-SNR
(Hang et al. 2023) weights each example by ``min(SNR, gamma) / SNR`` (epsilon) or
``min(SNR, gamma) / (SNR + 1)`` (v), with diffusers' ``compute_snr``.
"""

from __future__ import annotations

from typing import Any

from .data import UNetInputs


def noise_scheduler(pipe):
    """The scheduler that adds noise in training, from the pipeline's scheduler config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def snr_table(scheduler, device: str):
    """diffusers' ``compute_snr`` of every train timestep, once, on ``device``: indexing it
    costs no copy from the host (``compute_snr`` moves the schedule to the device each call)."""
    import torch
    from diffusers.training_utils import compute_snr

    steps = torch.arange(scheduler.config.num_train_timesteps)
    return compute_snr(scheduler, steps).to(device)


def batch_loss(unet, scheduler, inputs: UNetInputs, generator, gamma: float | None,
               compute_dtype: Any, snr: Any = None, memory_format: Any = None):
    """``draw`` then ``loss``."""
    noise, timesteps = draw(scheduler, inputs, generator)
    return loss(unet, scheduler, inputs, noise, timesteps, gamma, compute_dtype, snr,
                memory_format)


def draw(scheduler, inputs: UNetInputs, generator):
    """The batch's noise (float32) and timesteps, on the training device: noise first."""
    import torch

    latents = inputs.latents
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32,
                        device=generator.device).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=generator.device).to(device)
    return noise, timesteps


def loss(unet, scheduler, inputs: UNetInputs, noise, timesteps, gamma: float | None,
         compute_dtype: Any, snr: Any = None, memory_format: Any = None):
    """The loss of a batch with its noise and timesteps drawn. Device work only, no host
    syncs: the trainer can capture it in a CUDA graph. ``memory_format``: the UNet input's
    (``torch.channels_last`` where the UNet's weights are), else as it comes."""
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    latents = inputs.latents
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        target = noise
    elif prediction == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"cannot train a model that predicts {prediction!r}")

    added = None if inputs.added_cond is None else \
        {k: v.to(compute_dtype) for k, v in inputs.added_cond.items()}
    sample = noisy.to(compute_dtype)
    if memory_format is not None:
        sample = sample.contiguous(memory_format=memory_format)
    predicted = unet(sample, timesteps, inputs.prompt_embeds.to(compute_dtype),
                     added_cond_kwargs=added, return_dict=False)[0]
    error = F.mse_loss(predicted.float(), target.float(), reduction="none")
    error = error.mean(dim=list(range(1, error.ndim)))
    if gamma is not None:
        snr = compute_snr(scheduler, timesteps) if snr is None else snr[timesteps]
        weight = torch.minimum(snr, torch.full_like(snr, gamma))
        weight = weight / (snr if prediction == "epsilon" else snr + 1)
        error = error * weight
    return error.mean()
