"""Pictures from a training's own pipeline, the LoRA as it is now: for contact sheets.

In: the pipeline of a ``CheckpointView`` (the adapter live, the trainable modules in eval mode)
and ``PanelJob``s (prompt, negative prompt, seed, size, steps, guidance, sampler; their LoRAs
are not loaded: the picture shows what this training has learned, alone). Out: one 8-bit PIL
image per job, as ``runner`` makes them (the same noise from the same seed, the sampler built
from the model's own scheduler config by ``schedulers``).

The training must not notice a preview. Each picture's noise comes from its own CPU generator
seeded with the job's seed, as a panel's does; the trainer's generator is never touched; the
global RNGs are forked, so even a draw from them (none is known in diffusers' pipelines) is
undone; the pipeline's scheduler is put back (the trainer built its own noise scheduler from
its config before the first step); and no gradients are recorded. On the CPU, a training that
draws sheets ends with the same bytes as one that does not (tests/commands/test_train.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...plan.jobs import PanelJob


def render_previews(pipe: Any, jobs: Sequence[PanelJob]) -> list[Any]:
    """Render ``jobs`` one at a time with ``pipe`` as it is; the images, in order."""
    import torch

    from ..runner import to_pil
    from ..schedulers import Schedulers

    device = torch.device(pipe.device)
    forked = [device.index or 0] if device.type == "cuda" else []
    original = pipe.scheduler
    images = []
    try:
        # TorchScript unoptimised, as runner.py renders: the same bits on every call.
        with torch.random.fork_rng(devices=forked), torch.no_grad(), \
                torch.jit.optimized_execution(False):
            schedulers = Schedulers(pipe)  # built from the model's own scheduler, not a swap
            for job in jobs:
                schedulers.use(job.scheduler, seed=job.seed)
                out = pipe(prompt=job.prompt, negative_prompt=job.negative_prompt,
                           num_inference_steps=job.steps, guidance_scale=job.guidance,
                           width=job.width, height=job.height,
                           generator=torch.Generator("cpu").manual_seed(job.seed),
                           output_type="pt")
                images.extend(to_pil(out.images))
    finally:
        pipe.scheduler = original
    return images
