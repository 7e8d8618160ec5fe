"""Render compiled jobs with diffusers, keeping models loaded between renders.

In: ``PanelJob``s (all naming one model) and ``RuntimeOptions``. Out: a ``PreparedRender``
whose ``info`` says what the engine did before rendering (device, dtype, the speed-ups in
effect, load time) and whose ``results()`` yields one ``PanelResult`` per job as batches finish;
or ``Session.render``'s ``RenderResult`` with all of it at once. Progress events (``on_event``)
only report progress; every fact comes back in these return values.

``Session.prepare`` reads top to bottom:
1. the model: loaded (``loading.load_model``), or kept from an earlier render in this session;
2. every character LoRA the jobs use, loaded as a named adapter; the whole render is refused,
   before any denoising, if one does not fit the model (``adapters``);
3. the plan: batches and speed-ups from the jobs alone (``plan.speed.plan_render``), with the
   device, dtype and free memory known now, and what this machine measured rendering before
   (``speed.timings``: whether compiling pays); each finished batch adds to that;
4. the speed-ups, applied once per loaded model at its first render (``speed.apply``); FP8
   weights cannot take a LoRA merge, so the render's one LoRA set goes in first.
Then ``results()`` renders each batch (``runner.run_batch``).

A ``Session`` owns one ``ModelState`` per loaded model: the frozen ``LoadedModel`` and the small
objects whose state changes as it renders (adapters and merged weights, the scheduler, applied
speed-ups). A live preview or a multi-GPU worker keeps one session for its whole life.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError
from ..options import RuntimeOptions
from ..plan.jobs import ModelRef, PanelJob
from ..plan.speed import RenderPlan, Speedup, plan_render, show_lora_set
from .adapters import Adapters, LoraError
from .environment import prepare as prepare_environment
from .loading import LoadedModel, load_model
from .runner import PanelResult, run_batch
from .schedulers import Schedulers
from .speed.apply import AppliedSpeedups, apply_speedups, unfuse_qkv
from .speed.timings import Timings

Event = Callable[[dict[str, Any]], None]


@dataclass
class ModelState:
    """A loaded model and the state that changes as it renders."""

    model: LoadedModel
    adapters: Adapters
    schedulers: Schedulers
    speed: AppliedSpeedups | None = None  # None until its first render decides
    _timings: dict = field(default_factory=dict)  # (loras, tune) -> Timings | None

    def timings(self, loras: bool, tune: bool | None) -> Timings | None:
        """This model's timings on this machine for renders with or without LoRAs and tuning
        (one object per kind for the model's life: it knows which shapes it compiled)."""
        key = (loras, tune is not False)
        if key not in self._timings:
            self._timings[key] = Timings.for_model(self.model, loras=loras, tune=tune)
        return self._timings[key]


@dataclass(frozen=True)
class RenderInfo:
    """What the engine did before rendering."""

    model: str  # the model's reference, as the story gave it
    family: str
    device: str
    dtype: str
    speedups: tuple[Speedup, ...]  # in effect on the model
    load_seconds: float  # 0.0 for a model kept from an earlier render
    plan: RenderPlan


@dataclass(frozen=True)
class RenderResult:
    info: RenderInfo
    panels: tuple[PanelResult, ...]
    seconds: float


@dataclass
class PreparedRender:
    state: ModelState
    info: RenderInfo
    timings: Timings | None = None  # where this machine's batch timings are kept

    def results(self, on_event: Event | None = None) -> Iterator[PanelResult]:
        """Render the planned batches; yields results as batches finish (story order within
        a batch, batches in plan order)."""
        emit = on_event or (lambda event: None)
        compiled = Speedup.TORCH_COMPILE in self.info.speedups
        for batch in self.info.plan.batches:
            emit({"event": "batch_start", "panels": batch.panels})
            t0 = time.perf_counter()
            results = run_batch(self.state, batch, on_event)
            built = False  # a compiled artifact built in this batch: a cold compile's seconds
            for method in self.state.speed.compiled if self.state.speed else ():
                for outcome in method.new_outcomes():
                    built = built or outcome.how == "built"
                    emit({"event": "compiled", **{k: v for k, v in asdict(outcome).items()
                                                  if v is not None}})
            # Only a whole batch that rendered as planned measures its shape's speed.
            if self.timings is not None and all(
                    r.status == "rendered" and r.batch_size == len(batch.jobs) for r in results):
                self.timings.batch_done(batch, time.perf_counter() - t0, compiled=compiled,
                                        built=built)
            yield from results


class Session:
    """Models kept loaded between renders in one process. ``backend`` is torch.compile's
    ("inductor"; tests trace with "aot_eager" on the CPU)."""

    def __init__(self, *, backend: str = "inductor") -> None:
        self.backend = backend
        self._states: dict[tuple, ModelState] = {}
        self._adopted: ModelState | None = None

    def adopt(self, model: LoadedModel, options: RuntimeOptions | None = None) -> ModelState:
        """Render every job of this session with ``model``, loaded elsewhere (benchmarks,
        tests), whatever model the jobs name. Adopting the same model again keeps its state."""
        if self._adopted is None or self._adopted.model is not model:
            self._adopted = _new_state(model, options or RuntimeOptions())
        return self._adopted

    def state(self, ref: ModelRef, options: RuntimeOptions) -> tuple[ModelState, float]:
        """The loaded model ``ref`` names under ``options`` (loading it if needed), and the
        seconds loading took."""
        if self._adopted is not None:
            return self._adopted, 0.0
        key = _model_key(ref, options)
        if key in self._states:
            return self._states[key], 0.0
        t0 = time.perf_counter()
        state = _new_state(load_model(ref, options), options)
        self._states[key] = state
        return state, time.perf_counter() - t0

    def prepare(self, jobs: list[PanelJob], options: RuntimeOptions | None = None, *,
                on_event: Event | None = None) -> PreparedRender:
        if not jobs:
            raise ValueError("nothing to render")
        if len({job.model for job in jobs}) != 1:  # one pipeline per render
            raise UserError("all jobs in one render must use the same model")
        options = options or RuntimeOptions()
        emit = on_event or (lambda event: None)
        prepare_environment()  # also for a model loaded elsewhere (adopt): compile caches

        # 1. The model.
        state, seconds = self.state(jobs[0].model, options)
        model = state.model
        emit({"event": "model_loaded", "model": model.ref.ref, "family": model.family,
              "device": model.device, "dtype": model.dtype, "seconds": round(seconds, 3),
              **({"warmup": {"seconds": model.warmup.seconds, "error": model.warmup.error}}
                 if seconds and model.warmup is not None else {}),
              **({"prefetch": {"seconds": model.prefetch.seconds, "bytes": model.prefetch.bytes,
                               "built": list(model.prefetch.built),
                               "skipped": model.prefetch.skipped}}
                 if seconds and model.prefetch is not None else {})})

        # 2. Adapters, all checked before any denoising.
        state.adapters.load(jobs)

        # 3. The plan, with what only the loaded model knows: device, dtype, free memory, and
        #    what this machine measured rendering with it (whether compiling pays).
        timings = state.timings(any(job.loras for job in jobs), options.tune)
        plan = plan_render(jobs, options, device=model.device, dtype=model.dtype,
                           free_bytes=_free_bytes(model.device),
                           measured=timings.measured() if timings else None)

        # 4. Speed-ups. FP8 weights cannot take a LoRA merge, so its one LoRA set goes in first.
        adapters = state.adapters
        if Speedup.FP8 in plan.speedups and adapters.names and adapters.merge:
            if plan.refusal:
                raise LoraError(plan.refusal)
            (first,) = {batch.loras for batch in plan.batches}
            named = adapters.named(first)
            if adapters.frozen and named != adapters.merged:
                merged = ", ".join(f"{n} {w:g}" for n, w in adapters.merged or ()) or "none"
                raise LoraError(
                    "dtype fp8 merges the LoRAs into the weights before quantizing them, so a "
                    "model's LoRAs are fixed once its UNet is in FP8: these panels use "
                    f"{show_lora_set(first)}, not the same as the render before on this model "
                    f"({merged}). Render them with the model loaded again (another process or "
                    "session), or use fp16/bf16")
            adapters.activate(named)
        if state.speed is None:
            # Recorded before applying: a speed-up that fails part-way leaves what did apply
            # (fused QKV, say, which a later LoRA must undo; FP8, after which no LoRA may be
            # merged) on the record.
            state.speed = AppliedSpeedups()
            try:
                apply_speedups(model, plan.speedups, backend=self.backend, into=state.speed)
            finally:
                if Speedup.FP8 in state.speed:
                    adapters.freeze()
        applied = tuple(state.speed.applied)
        if applied:
            emit({"event": "speedups", "applied": [str(s) for s in applied]})
        info = RenderInfo(model.ref.ref, model.family, model.device, model.dtype, applied,
                          round(seconds, 3), plan)
        return PreparedRender(state, info, timings)

    def render(self, jobs: list[PanelJob], options: RuntimeOptions | None = None, *,
               on_event: Event | None = None) -> RenderResult:
        """Prepare and render ``jobs``; every result at once."""
        t0 = time.perf_counter()
        prepared = self.prepare(jobs, options, on_event=on_event)
        panels = tuple(prepared.results(on_event))
        return RenderResult(prepared.info, panels, time.perf_counter() - t0)

    def close(self) -> None:
        """Let go of every model (their memory is freed when nothing else holds them)."""
        self._states.clear()
        self._adopted = None


def _model_key(ref: ModelRef, options: RuntimeOptions) -> tuple:
    # What loading depends on (a different device, dtype or placement is another model), and
    # fuse, which fixes whether its LoRAs are merged or live.
    return (ref, options.device, options.dtype, options.offload, options.vae_tiling, options.fuse)


def _new_state(model: LoadedModel, options: RuntimeOptions) -> ModelState:
    state = ModelState(model, Adapters(model, merge=options.fuse and not options.offload),
                       Schedulers(model.pipe))

    def unfuse() -> None:  # adapters attach to to_q/to_k/to_v: undo fused projections first
        if state.speed is not None:
            unfuse_qkv(model, state.speed)

    state.adapters.before_load = unfuse
    return state


def _free_bytes(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return float(free)


def render_jobs(jobs: list[PanelJob], options: RuntimeOptions | None = None, *,
                on_event: Event | None = None,
                session: Session | None = None) -> Iterator[PanelResult]:
    """Render ``jobs`` in ``session`` (a new one by default); yields results as batches finish.
    For callers that want only the images; ``Session.prepare`` also says what was done."""
    if not jobs:
        return
    prepared = (session or Session()).prepare(jobs, options, on_event=on_event)
    yield from prepared.results(on_event)


__all__ = ["Session", "ModelState", "PreparedRender", "RenderInfo", "RenderResult",
           "PanelResult", "render_jobs", "LoraError"]
