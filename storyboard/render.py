"""Render compiled jobs into images with diffusers.

In: ``PanelJob``s (all naming the same model) and ``RuntimeOptions``. Out: one ``PanelResult``
per job, in job order: the image, or the reason it failed.

``render_jobs`` reads top to bottom:
1. load the model (``models.load_model``);
2. load every character LoRA the jobs use as a named adapter, and refuse the whole run, before
   any denoising, if one does not fit the model;
3. group jobs that can share a pipeline call (same size, steps, guidance, sampler and active
   adapters at the same weights) into batches;
4. apply the speed-ups that suit the device, the dtype and the amount of work: torch.compile
   only where the batches have enough panel-steps to pay it back (``models.speedups_for``);
5. render each batch, its LoRAs merged into the weights (``Renderer.activate``), with one
   ``torch.Generator`` per panel, seeded with the panel's seed, so a
   panel does not depend on its batch beyond float rounding (see tests/test_render.py for the
   measured bound); a batch that runs out of memory is split in halves and retried, and a panel
   that fails alone is reported and the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .compile import PanelJob
from .errors import UserError
from .models import (LoadedModel, RuntimeOptions, apply_speedups, load_model, speedups_for,
                     unfuse_qkv)
from .samplers import SAMPLERS

Event = Callable[[dict[str, Any]], None]

# What Renderer.merged holds while a merge is under way: equal to no real set of adapters.
_PARTIAL = (("", float("nan")),)
# Per-sample noise in these comes from a shared Brownian tree, not the per-panel generators, so
# their panels are rendered one at a time with the panel's seed as the tree's seed.
_SOLO_SCHEDULERS = {"DPMSolverSDEScheduler"}
_CLASS_TO_SAMPLER = {r.cls: r.name for r in SAMPLERS.values() if r.cls and not r.config}


class LoraError(UserError):
    """One or more character LoRAs cannot be used with the model."""


@dataclass
class PanelResult:
    job: PanelJob
    image: Any = None  # PIL.Image.Image when rendered
    status: str = "failed"  # rendered | failed
    seconds: float = 0.0
    error: str | None = None
    sampler: str = ""  # the sampler actually used, as A1111 names it
    batch_size: int = 0


@dataclass
class Batch:
    jobs: list[PanelJob]
    adapters: tuple[tuple[str, float], ...]

    @property
    def key(self) -> tuple:
        j = self.jobs[0]
        return (j.width, j.height, j.steps, j.guidance, j.scheduler, self.adapters)


@dataclass
class Renderer:
    """A loaded model with its adapters; renders batches of jobs. Kept on the model
    (``LoadedModel.renderer``), so adapters load once and the weights' state is known."""

    model: LoadedModel
    adapters: dict[tuple[str, str], str] = field(default_factory=dict)  # (char, path) -> name
    base_scheduler_config: Any = None
    merge: bool = True  # LoRAs merged into the weights per batch, rather than live adapters
    merged: tuple[tuple[str, float], ...] | None = None  # what the weights hold now
    _base: dict[int, Any] = field(default_factory=dict)  # id(layer) -> its base weight (CPU)

    # -- adapters -------------------------------------------------------------------------

    def load_adapters(self, jobs: list[PanelJob]) -> None:
        """Load each distinct (character, LoRA file) once, as a named adapter."""
        problems = []
        for job in jobs:
            for lora in job.loras:
                key = (lora.character, lora.path)
                if key in self.adapters:
                    continue
                if self.fp8:
                    raise LoraError("this model's UNet is already in FP8 (dtype fp8): load it "
                                    "again to render panels with other LoRAs")
                unfuse_qkv(self.model)
                name = lora.character if not any(k[0] == lora.character for k in self.adapters) \
                    else f"{lora.character}-{len(self.adapters)}"
                error = self._load_one(lora.path, name, lora.sha256)
                if error:
                    problems.append(f"character {lora.character!r}: LoRA {lora.path} {error}")
                else:
                    self.adapters[key] = name
        if problems:
            raise LoraError("cannot use these LoRAs with the model "
                            f"({self.model.family}, {self.model.ref.ref}):\n  "
                            + "\n  ".join(problems))

    def _prepared(self, path: str, sha256: str) -> str:
        """The LoRA as a diffusers-format file that loads cleanly into this model: converted
        once per source file and model family (DiffSynth checkpoints, kohya, PEFT, pickles all
        end up the same way), cached by the source's sha256."""
        from .loras import convert_lora
        from .tiny import cache_root

        target = cache_root() / "loras" / f"{sha256}-{self.model.family}.safetensors"
        if not target.is_file():
            unet = getattr(self.model.pipe.unet, "_orig_mod", self.model.pipe.unet)
            convert_lora(path, target, to="diffusers", family=self.model.family,
                         unet_config=unet.config)
        return str(target)

    def _load_one(self, path: str, name: str, sha256: str) -> str | None:
        """Load a LoRA; a message when it does not fit. Unexpected or missing keys are only
        logged by diffusers, and a missing one would leave random weights active, so both are
        treated as errors."""
        import warnings

        catcher = _LogCatcher()
        loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
        saved = [(lg, lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
        for logger in loggers:
            logger.handlers = [catcher]
            logger.setLevel(logging.WARNING)
            logger.propagate = False
        from .loras import LoraFormatError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peft's "multiple adapters" notice
                self.model.pipe.load_lora_weights(self._prepared(path, sha256),
                                                  adapter_name=name)
        except LoraFormatError as exc:
            return f"cannot be used: {exc.problem}"
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            first = str(exc).strip().splitlines()
            detail = first[0] if first else type(exc).__name__
            if "size mismatch" in str(exc):
                detail = ("has layers of a different size than the model (trained for another "
                          "model family?): " + _first_mismatch(str(exc)))
            return f"does not fit: {detail}"
        finally:
            for logger, level, handlers, propagate in saved:
                logger.handlers = handlers
                logger.setLevel(level)
                logger.propagate = propagate
        bad = [m for m in catcher.messages if "unexpected keys" in m or "missing keys" in m]
        if bad:
            self._drop(name)
            return "does not match the model: " + bad[0][:300]
        if self.merge and any(layer.use_dora.get(name) or getattr(layer, "lora_bias", {}).get(name)
                              for layer in self._lora_layers()):
            # Their deltas are not a plain weight sum, so they cannot be merged.
            self._drop(name)
            return "has DoRA or bias terms, which cannot be merged into the weights; render " \
                   "with --no-fuse to use it as a live adapter"
        return None

    def _drop(self, name: str) -> None:
        try:
            self.model.pipe.delete_adapters(name)
        except (ValueError, KeyError, AttributeError):
            pass

    def activate(self, adapters: tuple[tuple[str, float], ...]) -> None:
        """Make exactly ``adapters`` (name, weight) act on the model for the next batch."""
        pipe = self.model.pipe
        if not self.adapters:
            return
        if self.merge:
            self._merge(adapters)
            return
        if not adapters:
            # set_adapters([]) raises in diffusers 0.42; disabling restores the base exactly.
            pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in adapters], [w for _, w in adapters])

    def _merge(self, adapters: tuple[tuple[str, float], ...]) -> None:
        """Write ``adapters`` into the base weights, with the adapters themselves disabled.

        Merged, a LoRA costs nothing per step and the UNet compiles as if it had none
        (bench/levers3.py: 29.2 ms per panel-step, against 39.8 with the adapter live). peft's
        merge/unmerge round trip subtracts the delta again, which in fp16 leaves rounding residue
        that builds up batch after batch; so each touched layer is rebuilt from a saved copy of
        its base weight, and a panel never depends on which batches came before it.
        """
        layers = self._lora_layers()
        # Forward = base layer only, every time: a LoRA loaded since the last batch arrives
        # switched on. Layer by layer: the pipeline's disable_lora() skips a compiled UNet.
        for layer in layers:
            layer.enable_adapters(False)
        if adapters == self.merged:
            return
        if self.fp8:
            raise LoraError("this model's UNet is already in FP8 (dtype fp8) with other LoRAs "
                            "merged in: load it again to render panels with other LoRAs")
        import torch

        self.merged = _PARTIAL  # until every layer is written (an OOM may stop it half-way)
        weights = dict(adapters)
        with torch.no_grad():
            for layer in layers:
                mine = sorted(n for n in weights
                              if any(n in getattr(layer, attr, {})
                                     for attr in layer.adapter_layer_names))
                base = layer.get_base_layer().weight
                if id(layer) not in self._base:
                    if not mine:
                        continue
                    self._base[id(layer)] = base.detach().to("cpu", copy=True)
                # A copy even where device and dtype already match: the saved one stays as is.
                new = self._base[id(layer)].to(base.device, torch.float32, copy=True)
                for name in mine:
                    layer.set_scale(name, weights[name])
                    new += layer.get_delta_weight(name).float()
                base.copy_(new)
        self.merged = adapters

    @property
    def fp8(self) -> bool:
        return "fp8" in (self.model.speedups or [])

    def _lora_layers(self) -> list[Any]:
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for c in self.model.pipe.components.values() if isinstance(c, torch.nn.Module)
                for m in c.modules() if isinstance(m, BaseTunerLayer)]

    def adapters_for(self, job: PanelJob) -> tuple[tuple[str, float], ...]:
        return tuple(sorted((self.adapters[(l.character, l.path)], float(l.weight))
                            for l in job.loras))

    # -- schedulers -----------------------------------------------------------------------

    def use_scheduler(self, name: str, seed: int | None = None) -> str:
        """Install the scheduler ``name`` (built from the model's own config); return the
        sampler name as A1111 would print it."""
        import diffusers

        pipe = self.model.pipe
        if self.base_scheduler_config is None:
            self.base_scheduler_config = pipe.scheduler.config
        config = self.base_scheduler_config
        recipe = SAMPLERS[name]
        if recipe.cls is None:
            cls_name = config["_class_name"]
            scheduler = getattr(diffusers, cls_name).from_config(config)
            used = _CLASS_TO_SAMPLER.get(cls_name, cls_name)
        else:
            extra = dict(recipe.config)
            if recipe.cls in _SOLO_SCHEDULERS:
                extra["noise_sampler_seed"] = seed
            try:
                scheduler = getattr(diffusers, recipe.cls).from_config(config, **extra)
            except ImportError as exc:
                raise UserError(f"sampler {name!r} needs the {recipe.needs} package: "
                                f"pip install {recipe.needs}") from exc
            used = name
        pipe.scheduler = scheduler
        return used

    # -- rendering ------------------------------------------------------------------------

    def run_batch(self, batch: Batch, on_event: Event | None = None) -> list[PanelResult]:
        """Render a batch; on out-of-memory split it in halves and retry."""
        try:
            return self._call(batch, on_event)
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
            on_event({"event": "oom_split", "panels": [j.panel for j in batch.jobs]})
        half = len(batch.jobs) // 2
        return (self.run_batch(Batch(batch.jobs[:half], batch.adapters), on_event)
                + self.run_batch(Batch(batch.jobs[half:], batch.adapters), on_event))

    def _call(self, batch: Batch, on_event: Event | None) -> list[PanelResult]:
        import torch

        first = batch.jobs[0]
        sampler = self.use_scheduler(first.scheduler, seed=first.seed)
        self.activate(batch.adapters)
        # CPU generators: the same seed gives the same starting noise on any device.
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in batch.jobs]
        kwargs: dict[str, Any] = {}
        if on_event:
            def step_end(pipe, step, timestep, callback_kwargs):
                on_event({"event": "step", "panels": [j.panel for j in batch.jobs],
                          "step": step + 1, "steps": first.steps})
                return callback_kwargs

            kwargs["callback_on_step_end"] = step_end
        cross_kv = self.model.cross_kv
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                if cross_kv is not None:  # K/V from this call's text and weights
                    cross_kv.reset()
                out = self.model.pipe(
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
                images = _to_pil(out.images)
        finally:
            if cross_kv is not None:  # its memory is free for the next batch
                cross_kv.reset()
        seconds = (time.perf_counter() - t0) / len(batch.jobs)
        return [PanelResult(job, image=image, status="rendered", seconds=seconds,
                            sampler=sampler, batch_size=len(batch.jobs))
                for job, image in zip(batch.jobs, images)]


def plan_batches(renderer: Renderer, jobs: list[PanelJob], max_batch: int) -> list[Batch]:
    """Group compatible jobs (story order kept) into batches of at most ``max_batch``, split
    evenly (10 panels in batches of 8 become 5 + 5), so a compiled UNet meets few shapes."""
    groups: dict[tuple, Batch] = {}  # in first-seen order
    for job in jobs:
        single = Batch([job], renderer.adapters_for(job))
        key = single.key
        if SAMPLERS[job.scheduler].cls in _SOLO_SCHEDULERS:
            key = (*key, job.hash)  # a batch of its own
        if key in groups:
            groups[key].jobs.append(job)
        else:
            groups[key] = single
    batches = []
    for group in groups.values():
        members = group.jobs
        count = -(-len(members) // max_batch)
        start = 0
        for i in range(count):
            size = len(members) // count + (i < len(members) % count)
            batches.append(Batch(members[start:start + size], group.adapters))
            start += size
    return batches


def unet_work(batches: list[Batch]) -> dict[tuple, int]:
    """Panel-steps per batch shape the UNet will see (panels, size, and whether CFG doubles the
    batch): what decides whether compiling pays (``models.compile_pays``). A second-order
    sampler (Heun, DPM2, DPM++ SDE) calls the UNet twice per step, and counts twice."""
    import diffusers

    work: dict[tuple, int] = {}
    for batch in batches:
        j = batch.jobs[0]
        shape = (len(batch.jobs), j.width, j.height, j.guidance > 1)
        cls = SAMPLERS[j.scheduler].cls  # None: the model's own, first order in every family
        try:
            order = getattr(getattr(diffusers, cls), "order", 1) if cls else 1
        except ImportError:  # its package is missing: use_scheduler says so, for that panel
            order = 1
        work[shape] = work.get(shape, 0) + len(batch.jobs) * j.steps * order
    return work


def default_batch_size(device: str) -> int:
    """Panels per pipeline call: more where memory allows (the UNet sees twice as many with
    CFG); an out-of-memory batch is split and retried anyway."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return 8 if free > 48e9 else 4 if free > 20e9 else 2
    return 4 if device.startswith("mps") else 2


def render_jobs(jobs: list[PanelJob], options: RuntimeOptions | None = None, *,
                batch_size: int | None = None, on_event: Event | None = None,
                model: LoadedModel | None = None) -> Iterator[PanelResult]:
    """Render ``jobs``; yields results as batches finish (not necessarily in job order)."""
    if not jobs:
        return
    refs = {job.model for job in jobs}
    if len(refs) != 1:
        raise UserError("all jobs in one render must use the same model")
    emit = on_event or (lambda event: None)

    # 1. The model.
    t0 = time.perf_counter()
    if model is None:
        model = load_model(jobs[0].model, options)
    emit({"event": "model_loaded", "model": model.ref.ref, "family": model.family,
          "device": model.device, "dtype": model.dtype,
          "seconds": round(time.perf_counter() - t0, 3)})
    options = options or RuntimeOptions()
    if model.renderer is None:
        model.renderer = Renderer(model, merge=options.fuse and not options.offload)
    renderer = model.renderer

    # 2. Adapters, all checked before any denoising.
    renderer.load_adapters(jobs)

    # 3. Batches.
    batches = plan_batches(renderer, jobs, batch_size or default_batch_size(model.device))

    # 4. Speed-ups. FP8 weights cannot take a LoRA merge, so its one LoRA set goes in first.
    wanted = speedups_for(model, options, adapters=bool(renderer.adapters),
                          work=unet_work(batches))
    if "fp8" in wanted and renderer.adapters and renderer.merge:
        sets = sorted({b.adapters for b in batches})
        fixed = renderer.merged if renderer.fp8 else None  # already quantized with these
        if len(sets) > 1 or (fixed is not None and sets != [fixed]):
            def show(s: tuple) -> str:
                return ", ".join(f"{n} {w:g}" for n, w in s) or "none"

            before = f" as the render before on this model ({show(fixed)})" if fixed else ""
            raise LoraError(
                "dtype fp8 merges the LoRAs into the weights before quantizing them, so all "
                f"panels of one render must use the same LoRAs at the same weights{before}; "
                f"these use {len(sets)} sets: {'; '.join(map(show, sets))}. Render them "
                "separately (--only) or use fp16/bf16")
        renderer.activate(sets[0])
    applied = apply_speedups(model, wanted)
    if "fp8" in applied:
        renderer._base.clear()  # no merge can follow once the weights are FP8
    if applied:
        emit({"event": "speedups", "applied": applied})

    # 5. Render.
    for batch in batches:
        emit({"event": "batch_start", "panels": [j.panel for j in batch.jobs]})
        for result in renderer.run_batch(batch, on_event):
            yield result


def _to_pil(images) -> list:
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


def _first_mismatch(text: str) -> str:
    for line in text.splitlines():
        if "size mismatch" in line:
            return line.strip()[:300]
    return text[:300]


class _LogCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
