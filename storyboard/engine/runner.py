"""Run one batch through a pipeline: the only place the denoising loop is called.

In: a ``Batch`` (``plan.batches``), the model's state (adapters, schedulers, speed-ups) and a
progress callback. Out: one ``PanelResult`` per job: the 8-bit image, the sampler used, seconds
per panel; or the reason it failed. A batch that runs out of GPU memory is split in halves and
retried; a panel that fails alone is reported and the others go on.

Each panel gets its own ``torch.Generator`` on the CPU, seeded with the panel's seed, so the
same seed gives the same starting noise on any device and a panel does not depend on its batch
beyond float rounding (tests/engine/test_render.py measures the bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..plan.batches import Batch
from ..plan.jobs import PanelJob

if TYPE_CHECKING:
    from .session import ModelState

Event = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class PanelResult:
    """What rendering one panel gave."""

    job: PanelJob
    image: Any = None  # PIL.Image.Image when rendered
    status: str = "failed"  # rendered | failed
    seconds: float = 0.0  # the batch's time, per panel
    error: str | None = None
    sampler: str = ""  # the sampler actually used, as A1111 names it
    batch_size: int = 0


def run_batch(state: ModelState, batch: Batch, on_event: Event | None = None) -> list[PanelResult]:
    """Render a batch; on out-of-memory split it in halves and retry."""
    try:
        return _call(state, batch, on_event)
    except Exception as exc:  # noqa: BLE001 - only OOM is retried, the rest reported
        if not _is_oom(exc):
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            return [PanelResult(job, error=message, batch_size=len(batch.jobs))
                    for job in batch.jobs]
    # Out of memory: retried only now, outside the except block, whose traceback holds the
    # failed call's frames (its activations, its cached K/V) until the block is left.
    _free_memory()
    if len(batch.jobs) == 1:
        return [PanelResult(batch.jobs[0], error="out of GPU memory even alone; try "
                            "--offload, --vae-tiling or a smaller size", batch_size=1)]
    if on_event:
        on_event({"event": "oom_split", "panels": batch.panels})
    half = len(batch.jobs) // 2
    return (run_batch(state, Batch(batch.jobs[:half], batch.loras), on_event)
            + run_batch(state, Batch(batch.jobs[half:], batch.loras), on_event))


def _call(state: ModelState, batch: Batch, on_event: Event | None) -> list[PanelResult]:
    import torch

    first = batch.jobs[0]
    sampler = state.schedulers.use(first.scheduler, seed=first.seed)
    state.adapters.activate(state.adapters.named(batch.loras))
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in batch.jobs]
    kwargs: dict[str, Any] = {}
    pace = _Pace(state.model.device)
    if on_event or pace.on:
        def step_end(pipe, step, timestep, callback_kwargs):
            pace.step()
            if on_event:
                on_event({"event": "step", "panels": batch.panels, "step": step + 1,
                          "steps": first.steps})
            return callback_kwargs

        kwargs["callback_on_step_end"] = step_end
    cross_kv = state.speed.cross_kv if state.speed is not None else None
    t0 = time.perf_counter()
    try:
        # TorchScript's optimised execution off: Kolors' ChatGLM encoder applies its rotary
        # embedding through a scripted function, which the profiling executor runs one way on
        # its first call with each shape and fused on later ones, so a prompt's embedding (and
        # the panel's pixels) depended on what the process had encoded before (on an H200,
        # a build's first batch differed from the same batch rendered later). Unoptimised,
        # every call computes the same bits; only the text encoder runs scripted code.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            if cross_kv is not None:  # K/V from this call's text and weights
                cross_kv.reset()
            # Saved compiled code is matched to the model by a description of its layers,
            # which the artifacts' own guards do not check: described again for each call, so
            # no change to the model between batches can go unseen (28 ms for SDXL's UNet).
            for compiled in state.speed.compiled if state.speed is not None else ():
                compiled.invalidate()
            out = state.model.pipe(
                prompt=[j.prompt for j in batch.jobs],
                negative_prompt=[j.negative_prompt for j in batch.jobs],
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                width=first.width,
                height=first.height,
                generator=generators,
                output_type="pt",
                **kwargs,
            )
            images = to_pil(out.images)
    finally:
        if cross_kv is not None:  # its memory is free for the next batch
            cross_kv.reset()
    seconds = (time.perf_counter() - t0) / len(batch.jobs)
    return [PanelResult(job, image=image, status="rendered", seconds=seconds, sampler=sampler,
                        batch_size=len(batch.jobs))
            for job, image in zip(batch.jobs, images)]


class _Pace:
    """Keeps the render loop one denoising step ahead of the GPU, and no further.

    Without it the loop queues kernels until CUDA's launch queue is full and then waits inside
    a kernel launch, holding the interpreter lock: the PNG writer and the page composer, which
    need that lock, barely ran until the last batch was done, and a 40-panel build spent 9.6 s
    composing after its last panel (issue 17). Here each step's end is marked with a CUDA
    event, and at the end of the next step the loop waits for that mark with the lock released
    (``Event.synchronize``): the other threads run while the GPU works through a step that is
    already queued, so it never waits for them."""

    def __init__(self, device: str):
        import torch

        self.on = device.startswith("cuda") and torch.cuda.is_available()
        self.device = device
        self.previous = None

    def step(self) -> None:
        if not self.on:
            return
        import torch

        mark = torch.cuda.Event()
        mark.record(torch.cuda.current_stream(torch.device(self.device)))
        if self.previous is not None:
            self.previous.synchronize()
        self.previous = mark


def to_pil(images) -> list:
    """A pipeline's ``output_type="pt"`` images ([0, 1], N x 3 x H x W, on the device) as 8-bit
    PIL images. The same pixels as diffusers' ``output_type="pil"`` (float32 x 255, rounded half
    to even), but quantised where the images are: only 8-bit pixels cross to the CPU, instead of
    float32 ones that the CPU then scales and rounds (about 30 ms per 1024x1024 panel, with the
    GPU idle). One image at a time, so the float32 copy stays small (12 MB at 1024x1024)."""
    import torch
    from PIL import Image

    return [Image.fromarray((image.float() * 255).round().to(torch.uint8)
                            .permute(1, 2, 0).cpu().numpy()) for image in images]


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and "out of memory" in text


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
