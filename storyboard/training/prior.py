"""Prior preservation's class pictures, as ordinary panel jobs the renderer and its cache know.

In: a ``TrainJob`` whose ``settings.prior`` is set. Out: ``class_jobs(job)``, one ``PanelJob``
per class picture (``prior.images`` of them): the prior's prompt (e.g. "a photo of a girl"),
the story's model without any LoRA, a square of the training resolution,
``CLASS_RENDER``'s steps, guidance and sampler, and a seed derived from the training's seed and
the picture's index. ``commands.train`` renders the missing ones into the panel cache (so a
second training, or another character with the same class, reuses them) and hands their cache
files to the trainer.

Every input of a class job is covered by the training key (``jobs.TrainJob.key_payload``): the
model, the prior's prompt and count, the seed, the resolution, and ``CLASS_RENDER`` itself. So
the pictures are a function of the key (on one device, like every render), and their bytes need
not be in it. Nothing else of the story (its defaults, style, templates) reaches them: editing a
panel setting never retrains a LoRA.
"""

from __future__ import annotations

from ..plan.compile import derive_seed
from ..plan.jobs import PanelJob, with_hash
from .jobs import CLASS_RENDER, TrainJob


def class_seed(seed: int, index: int) -> int:
    """The seed of class picture ``index`` (0-based) of a training with ``seed``."""
    return derive_seed(seed, f"class-picture-{index}")


def class_jobs(job: TrainJob) -> list[PanelJob]:
    """The class pictures ``job``'s prior preservation trains on (none without it)."""
    prior = job.settings.prior
    if prior is None:
        return []
    size = job.settings.resolution  # a multiple of 8 (the schema's rule), as panels are
    return [with_hash(PanelJob(
        panel=f"class-{i + 1}", index=i, prompt=prior.prompt,
        negative_prompt=CLASS_RENDER["negative"], seed=class_seed(job.settings.seed, i), seed_derived=True, width=size, height=size,
        steps=CLASS_RENDER["steps"], guidance=CLASS_RENDER["guidance"],
        scheduler=CLASS_RENDER["scheduler"], model=job.model, loras=(), characters=(),
        caption=prior.prompt)) for i in range(prior.images)]
