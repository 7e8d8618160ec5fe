"""Which panels share a pipeline call: pure batch planning.

In: ``PanelJob``s (all for one model) and a largest batch size. Out: ``Batch``es, in story
order: panels that can share one pipeline call (same size, steps, guidance, sampler, and the
same LoRAs at the same weights), split evenly (10 panels in batches of 8 become 5 + 5) so a
compiled UNet meets few shapes. A sampler whose noise is shared by a batch (``SamplerRecipe.
solo``) gets a batch per panel.

A function of the jobs alone, no model and no torch: `storyboard plan` shows the batches a
build will render, and the engine renders exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..samplers import SAMPLERS
from .jobs import PanelJob

# A batch's LoRAs: (character, file, weight) for each, sorted. The engine names the adapters.
LoraSet = tuple[tuple[str, str, float], ...]


def unique_jobs(jobs: list[PanelJob]) -> list[PanelJob]:
    """The first job of each hash, in order: panels with identical settings render once."""
    first: dict[str, PanelJob] = {}
    for job in jobs:
        first.setdefault(job.hash, job)
    return list(first.values())


def lora_set(job: PanelJob) -> LoraSet:
    return tuple(sorted((lora.character, lora.path, float(lora.weight)) for lora in job.loras))


@dataclass(frozen=True)
class Batch:
    """Panels rendered by one pipeline call."""

    jobs: tuple[PanelJob, ...]
    loras: LoraSet

    @property
    def key(self) -> tuple:
        """What panels of one batch must share."""
        j = self.jobs[0]
        return (j.width, j.height, j.steps, j.guidance, j.scheduler, self.loras)

    @property
    def panels(self) -> list[str]:
        return [job.panel for job in self.jobs]


def plan_batches(jobs: list[PanelJob], max_batch: int) -> list[Batch]:
    """Group compatible jobs (story order kept) into batches of at most ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    groups: dict[tuple, list[PanelJob]] = {}  # in first-seen order
    sets: dict[tuple, LoraSet] = {}
    for job in jobs:
        single = Batch((job,), lora_set(job))
        key = single.key
        if SAMPLERS[job.scheduler].solo:
            key = (*key, job.hash)  # a batch of its own
        groups.setdefault(key, []).append(job)
        sets[key] = single.loras
    batches = []
    for key, members in groups.items():
        count = -(-len(members) // max_batch)
        start = 0
        for i in range(count):
            size = len(members) // count + (i < len(members) % count)
            batches.append(Batch(tuple(members[start:start + size]), sets[key]))
            start += size
    return batches


# Free GPU memory above which a batch of 8 (or 4) panels fits at 1024x1024 with CFG: the UNet
# then sees 16 (or 8) samples. An out-of-memory batch is split and retried anyway.
_BATCH_BY_FREE_MEMORY = ((48e9, 8), (20e9, 4))


def default_batch_size(device: str, free_bytes: float | None = None) -> int:
    """Panels per pipeline call on ``device``: more where memory allows. ``free_bytes`` is the
    GPU's free memory (the engine measures it); None, as in `storyboard plan`, assumes a large
    GPU."""
    if device.startswith("cuda"):
        if free_bytes is None:
            return _BATCH_BY_FREE_MEMORY[0][1]
        return next((n for floor, n in _BATCH_BY_FREE_MEMORY if free_bytes > floor), 2)
    return 4 if device.startswith("mps") else 2
