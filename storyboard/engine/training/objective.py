"""The denoising loss of one batch: DreamBooth's, with min-SNR weighting.

In: the UNet, the training noise scheduler (a ``DDPMScheduler`` built from the model's own
scheduler config: its betas, number of train timesteps and prediction type), a batch's
``UNetInputs``, the CPU ``torch.Generator`` that draws noise and timesteps, min-SNR's gamma (or
None) and the dtype the UNet computes in. Out: the batch's loss, a scalar float32 tensor.

Noise and timesteps are drawn on the CPU from the explicit generator and then moved to the
device, so a run is reproducible from the generator's state alone (and a resumed run draws what
an uninterrupted one would). Timesteps are uniform over the train timesteps. The target is the
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


def batch_loss(unet, scheduler, inputs: UNetInputs, generator, gamma: float | None,
               compute_dtype: Any):
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    latents = inputs.latents
    device = latents.device
    n = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    noisy = scheduler.add_noise(latents, noise.to(device), timesteps.to(device))
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        target = noise.to(device)
    elif prediction == "v_prediction":
        target = scheduler.get_velocity(latents, noise.to(device), timesteps.to(device))
    else:
        raise ValueError(f"cannot train a model that predicts {prediction!r}")

    added = None if inputs.added_cond is None else \
        {k: v.to(compute_dtype) for k, v in inputs.added_cond.items()}
    predicted = unet(noisy.to(compute_dtype), timesteps.to(device),
                     inputs.prompt_embeds.to(compute_dtype), added_cond_kwargs=added,
                     return_dict=False)[0]
    loss = F.mse_loss(predicted.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if gamma is not None:
        snr = compute_snr(scheduler, timesteps)
        weight = torch.minimum(snr, torch.full_like(snr, gamma))
        weight = weight / (snr if prediction == "epsilon" else snr + 1)
        loss = loss * weight.to(device)
    return loss.mean()
