"""The speed policy: which speed-ups a render gets, decided before any model is loaded.

In: the batches a render will run, the device and dtype it runs in, whether it uses LoRAs, and
the ``RuntimeOptions``. Out: ``Speedup``s in the order they are applied, and a ``RenderPlan``
(batches + speed-ups + batch size) that `storyboard plan` prints and the engine carries out.
Pure: no torch, no model. ``engine/speed/apply.py`` applies the list.

Measured on an H200 (docs/speed-experiments.md): channels_last and fused QKV projections alone
do not pay in eager mode (so they come only with torch.compile), but with torch.compile they
take an SDXL UNet step from 44 to 29 ms per panel in batches of 8; a UNet with a LoRA merged
into its weights compiles to the same speed (29.2 ms, against 39.8 ms with the adapter live and
eager). Fused projections replace the layers LoRA adapters attach to, so they are left out when
a render has LoRAs. Cross-attention K/V once per batch saves 0.8% (SDXL) to 1.9% (Kolors) of a
compiled step, and more eager. Coordinate-descent tuning takes a compiled step 2% lower, for
about 100 s more on a shape's first compile on a machine. Only on CUDA, where they were measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..options import RuntimeOptions
from ..samplers import SAMPLERS
from .batches import Batch, default_batch_size, lora_set, plan_batches
from .jobs import PanelJob


class Speedup(str, Enum):
    """A speed-up the engine can apply to a loaded model. The values are what manifests and
    events have always said."""

    CHANNELS_LAST = "channels_last"
    FUSED_QKV = "fused_qkv"
    FP8 = "fp8"  # a precision the story chose, listed because it changes the UNet like these
    TUNED_KERNELS = "tuned_kernels"
    TORCH_COMPILE = "torch.compile"
    VAE_COMPILE = "vae.compile"
    CROSS_KV = "cross_kv_once"

    def __str__(self) -> str:
        return self.value


# A compile paid only in later processes, and a first compile on a machine blocks the build for
# minutes (40 SDXL panels: 340.6 s against 103.4 s eager on an H200; issue 17). So "auto"
# compiles only batch shapes this machine has compiled before (their kernels are in the compile
# cache) and only when what it measured here says the render pays the warm compile back
# (``ShapeTimings``, kept by engine/speed/timings.py). Until a warm compile is measured here, its
# cost is taken as the H200's: a new `storyboard build` loading the saved artifacts of the UNet
# and the VAE decoder (engine/speed/artifacts.py) spent 5.5-7.4 s loading them, and its first
# compiled batch took 6.1 s longer than the later ones (bench/results/
# nvidia-h200-2026-12-02-e2e-round8.json; 12.1-12.4 s before artifacts, dynamo tracing again).
WARM_COMPILE_PRIOR_S = 7.5


@dataclass(frozen=True)
class ShapeTimings:
    """What this machine measured for one batch shape, in seconds per panel-step (a batch's
    seconds over its panels x steps x sampler order) and seconds of compiling."""

    eager: float | None = None
    compiled: float | None = None  # steady: a compiled batch after the shape's first
    warm_compile: float | None = None  # the extra seconds of a first batch, cache warm
    cold_compile: float | None = None  # the same, on a cache without this shape

    @property
    def compiled_here(self) -> bool:
        """Whether this machine's compile cache holds this shape's kernels."""
        return self.warm_compile is not None or self.cold_compile is not None


def panel_steps(batch: Batch) -> int:
    """The UNet's work in a batch: panels x steps, twice for a second-order sampler (Heun,
    DPM2, DPM++ SDE), which calls the UNet twice per step."""
    j = batch.jobs[0]
    return len(batch.jobs) * j.steps * SAMPLERS[j.scheduler].order


def unet_work(batches: list[Batch]) -> dict[tuple, int]:
    """Panel-steps per batch shape the UNet will see (panels, size, and whether CFG doubles the
    batch)."""
    work: dict[tuple, int] = {}
    for batch in batches:
        shape = batch_shape(batch)
        work[shape] = work.get(shape, 0) + panel_steps(batch)
    return work


def batch_shape(batch: Batch) -> tuple:
    """The shape a compiled UNet is specialised to: panels, width, height, and CFG or not."""
    j = batch.jobs[0]
    return (len(batch.jobs), j.width, j.height, j.guidance > 1)


def compile_pays(work: dict[tuple, int], measured: dict[tuple, ShapeTimings] | None) -> bool:
    """Whether compiling pays back in this render, by this machine's measurements: ``work``
    maps each batch shape the UNet will see to its panel-steps. Every shape must have been
    compiled here before, with its eager and compiled speeds measured, and the seconds saved
    must exceed the warm compiles' (measured, else ``WARM_COMPILE_PRIOR_S`` each)."""
    if not work or not measured:
        return False
    saving = cost = 0.0
    for shape, steps in work.items():
        t = measured.get(shape)
        if t is None or not t.compiled_here or t.eager is None or t.compiled is None:
            return False
        saving += steps * (t.eager - t.compiled)
        cost += t.warm_compile if t.warm_compile is not None else WARM_COMPILE_PRIOR_S
    return saving > cost


def choose_speedups(*, device: str, dtype: str, options: RuntimeOptions, loras: bool,
                    work: dict[tuple, int],
                    measured: dict[tuple, ShapeTimings] | None = None) -> tuple[Speedup, ...]:
    """The speed-ups for a render on ``device`` in ``dtype``, in the order they are applied.
    ``--no-fuse`` / ``--no-compile`` / ``--no-tune`` and the story's ``render:`` section turn
    them off; ``compile="auto"`` compiles only a render whose ``work`` pays a compile back by
    what this machine ``measured`` (``compile_pays``)."""
    fast = device.startswith("cuda") and options.fuse
    if options.compile == "auto":
        # FP8 was measured compiled only: its quantisation kernels need the compiler's fusion.
        wanted = dtype == "fp8" or compile_pays(work, measured)
    else:
        wanted = bool(options.compile)
    # Offloading moves weights in and out of the GPU around every call: not measured with
    # torch.compile, and live adapters there must stay reachable for set_adapters.
    compiled = fast and wanted and not options.offload
    out: list[Speedup] = []
    if compiled:
        # Eager, channels_last made a step 7% slower (36.3 to 38.8 ms per panel at 8 panels)
        # and fused projections gained nothing: both pay only through the compiler.
        out.append(Speedup.CHANNELS_LAST)
        if not loras:
            out.append(Speedup.FUSED_QKV)
    if dtype == "fp8":
        out.append(Speedup.FP8)
    if compiled:
        # Tuning was not measured with FP8, whose own inductor settings (torchao's) that
        # include it did not finish compiling in 5 minutes.
        if options.tune is not False and dtype != "fp8":
            out.append(Speedup.TUNED_KERNELS)
        out += [Speedup.TORCH_COMPILE, Speedup.VAE_COMPILE]
    # Its cache is filled by calling the UNet's layers directly, which offloading's hooks on
    # the UNet as a whole would not see.
    if fast and not options.offload:
        out.append(Speedup.CROSS_KV)
    return tuple(out)


@dataclass(frozen=True)
class RenderPlan:
    """What a render will do, before it does it: batches in order, the speed-ups, and why a
    render cannot run as asked (``refusal``), all from the jobs and options alone."""

    batches: tuple[Batch, ...]
    batch_size: int
    device: str
    dtype: str
    speedups: tuple[Speedup, ...]
    refusal: str | None = None  # a reason the engine refuses the render, before any denoising

    @property
    def compiles(self) -> bool:
        return Speedup.TORCH_COMPILE in self.speedups

    def batch_of(self, job: PanelJob) -> int | None:
        """The 0-based batch that renders ``job`` (a panel with the same settings as another
        renders with it, once), or None when it is not rendered."""
        return next((n for n, b in enumerate(self.batches)
                     if any(j.hash == job.hash for j in b.jobs)), None)


def plan_render(jobs: list[PanelJob], options: RuntimeOptions, *, device: str, dtype: str,
                free_bytes: float | None = None,
                measured: dict[tuple, ShapeTimings] | None = None) -> RenderPlan:
    """Plan rendering ``jobs`` on ``device`` in ``dtype`` (both resolved: "cuda", "fp16").
    ``free_bytes``: the GPU's free memory, for the default batch size (None: a large GPU). A
    build passes each distinct job once (``batches.unique_jobs``): panels with the same settings
    render once. ``measured``: this machine's timings per batch shape, for ``compile="auto"``
    (None: nothing measured, so "auto" does not compile)."""
    size = options.batch_size or default_batch_size(device, free_bytes)
    batches = plan_batches(jobs, size)
    loras = any(job.loras for job in jobs)
    speedups = choose_speedups(device=device, dtype=dtype, options=options, loras=loras,
                               work=unet_work(batches), measured=measured)
    refusal = None
    sets = sorted({lora_set(job) for job in jobs})
    if Speedup.FP8 in speedups and loras and options.fuse and not options.offload \
            and len(sets) > 1:
        refusal = (
            "dtype fp8 merges the LoRAs into the weights before quantizing them, so all panels "
            f"of one render must use the same LoRAs at the same weights; these use {len(sets)} "
            f"sets: {'; '.join(map(show_lora_set, sets))}. Render them separately (--only) or "
            "use fp16/bf16")
    return RenderPlan(tuple(batches), size, device, dtype, speedups, refusal)


def show_lora_set(loras: tuple) -> str:
    """A LoRA set for messages: "mira 0.8, bolt 1"."""
    return ", ".join(f"{character} {weight:g}" for character, _, weight in loras) or "none"
