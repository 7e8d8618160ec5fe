"""Train one character's LoRA: a ``TrainJob`` in, LoRA files out.

In: a ``training.jobs.TrainJob`` (pictures, captions, settings, base model), the folder to work
and write in, the device and dtype, the class pictures for prior preservation (rendered by the
caller), and two callbacks: ``on_event`` (progress, plain dicts like the renderer's) and
``on_checkpoint`` (a ``CheckpointView`` every ``checkpoint_every`` steps and at the end: the
current weights as a state dict or a file, and the live pipeline, for a contact sheet). Out: a
``TrainResult`` (files, losses, steps, seconds, where it resumed from), ``lora.safetensors``
(diffusers) and ``lora-kohya.safetensors`` in the folder (``export``).

DreamBooth-style LoRA (diffusers' ``train_dreambooth_lora_sdxl.py`` recipe): PEFT LoRA on the
UNet's attention projections (``families.FAMILIES[family].lora_targets``), everything else
frozen unless ``train_text_encoder`` adds a LoRA to each CLIP text encoder's attention too (same
rank, alpha and learning rate; Kolors' ChatGLM always stays frozen); latents computed once, and
text embeddings once unless the encoders learn (``data``); aspect-ratio buckets
(``training.buckets``); min-SNR-weighted MSE (``objective``); AdamW (fused on CUDA; bitsandbytes'
8-bit AdamW on request); LoRA parameters in float32 (``cast_training_params``); autocast to
the ``mixed_precision`` dtype only where the frozen weights are in another dtype (with a
gradient scaler for fp16); gradient checkpointing when a GPU is short of memory; prior
preservation as ``mse(instance) + weight * mse(class)``.

Fast on a GPU (bench/train.py: full-size SDXL at 1024², batch 1, rank 16 on one H200: 0.11 s a
step, 1,000 steps in 120 s from loading to the files, ~5.8x diffusers' DreamBooth-LoRA loop at
less peak memory). A step is thousands of small kernels, and queueing them from Python took
~4x as long as the GPU took to run them, so: nothing waits for the GPU inside the loop (noise,
timesteps, time ids and SNR are made on the device; each step's loss is copied out
asynchronously and read a step or two later, ``steps.Losses``); the step is captured as a CUDA
graph per batch shape and replayed (``steps.GraphedStep``); and the VAE and frozen text encoders wait on
the CPU while the loop runs (their outputs were computed before it). A single process: accelerate's ``Accelerator`` keeps process-wide state (its
device and mixed precision cannot change once set) and places models itself, which does not fit
a library call with an explicit device in a long-lived process; torch's autocast and GradScaler
are what it would use here.

Reproducible and resumable: every random draw comes from explicit generators (the LoRA's
initialisation under ``torch.random.fork_rng`` seeded from the job, so the caller's global RNG is
untouched; noise and timesteps from a ``torch.Generator`` on the training device, a CPU one on
the CPU; the batch order is a function of seed and step). A checkpoint (``state``) saves the LoRA weights, the optimizer, the generator and
the step; a killed training called again with ``resume=True`` goes on from its last checkpoint
and, on the CPU, ends with the same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...families import FAMILIES
from ...options import RuntimeOptions
from ...training.jobs import TRAIN_RECIPE_VERSION, TrainJob
from ..loading import TORCH_DTYPES, load_model, resolve_device
from . import data, export, objective, state, steps

Event = Callable[[dict[str, Any]], None]
BETAS = (0.9, 0.999)  # diffusers' DreamBooth defaults
WEIGHT_DECAY = 1e-4
EPSILON = 1e-8
# Below this much free GPU memory once the model is loaded, the UNet recomputes activations in
# the backward pass instead of keeping them (a guess, to be measured on real GPUs).
CHECKPOINTING_BELOW = 16 * 2**30
OPTIMIZERS = ("adamw", "adamw8bit")
# CLIP's attention projections: what diffusers' DreamBooth scripts adapt in a text encoder.
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# What `compile` compiles, each module on its own (regional compilation): the UNet's repeated
# blocks, so one compiled graph serves every block of a width and compiling takes seconds, not
# the minutes a whole-UNet graph (forward and backward) takes.
COMPILED_BLOCKS = ("BasicTransformerBlock",)
# For bench/train.py's lever measurements only: autocast even where the frozen weights already
# are in the compute dtype; wait for each step's loss before queueing the next.
FORCE_AUTOCAST = False
SYNC_EVERY_STEP = False


@dataclass(frozen=True)
class TrainResult:
    lora_file: Path  # diffusers format
    kohya_file: Path  # kohya format (WebUI, ComfyUI)
    final_loss: float
    losses: tuple[float, ...]  # one per step, from step 1 (a resumed run's earlier ones too)
    steps: int
    seconds: float  # this call's
    resumed_from: int | None  # the step a checkpoint put it at, or None
    device: str
    dtype: str  # of the frozen weights

    @property
    def files(self) -> tuple[Path, Path]:
        return (self.lora_file, self.kohya_file)


@dataclass(frozen=True)
class CheckpointView:
    """The training at a checkpoint, for ``on_checkpoint``. ``pipeline`` is the training's own
    pipeline with the adapter live: render with it under ``torch.no_grad()`` and leave its
    state alone."""

    step: int
    steps: int
    loss: float
    pipeline: Any
    _modules: dict[str, Any]
    _facts: dict[str, str]

    def lora_state_dict(self) -> dict[str, Any]:
        """The current LoRA weights under diffusers' names (``unet.<module>.lora.down.weight``
        ...), as ``save_lora_weights`` packs them; lora_B unscaled (alpha in ``save_lora``'s
        metadata)."""
        return {f"{name}.{k}": v for name, module in self._modules.items()
                for k, v in export.lora_layers(module).items()}

    def save_lora(self, path: str | Path) -> Path:
        """The current weights as a diffusers-format file that storyboard renders with."""
        return export.save_diffusers(self.pipeline, self._modules, Path(path), self._facts)


def train_lora(job: TrainJob, out_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
               prior_images: Sequence[str | Path] = (), on_event: Event | None = None,
               on_checkpoint: Callable[[CheckpointView], None] | None = None,
               resume: bool = True, optimizer: str = "adamw",
               gradient_checkpointing: bool | None = None, cuda_graphs: bool | None = None,
               offload_frozen: bool | None = None, compile: bool = False,
               channels_last: bool = False) -> TrainResult:
    """Train ``job``'s LoRA in ``out_dir`` and write its files there.

    ``device``: "auto", "cpu", "cuda", "cuda:N". ``dtype``: the frozen weights' ("fp32",
    "fp16", "bf16"; "auto": fp32 on the CPU, else the job's ``mixed_precision`` or fp32 for
    "no"). ``prior_images``: the class pictures when ``settings.prior`` is set (captioned with
    its prompt). ``optimizer``: "adamw" or "adamw8bit" (CUDA, needs bitsandbytes).
    ``gradient_checkpointing``: None decides by free GPU memory. ``cuda_graphs``: each training
    step (forward, backward, clipping, AdamW) replayed as a CUDA graph, one per batch shape
    (``steps.GraphedStep``); None: on CUDA wherever it applies (bf16/fp32 without autocast, no gradient
    scaler, no 8-bit AdamW, no text encoder training, no gradient checkpointing), else off.
    ``offload_frozen``: the pipeline's modules the loop does not use (the VAE; the text encoders
    unless they train: their latents and embeddings are computed before it) wait on the CPU
    while it runs, back on the device for ``on_checkpoint``; None: on CUDA.
    ``compile``: torch.compile the UNet's repeated blocks (``COMPILED_BLOCKS``), eager steps
    only; off by default: on one H200 it saved ~0.1 s a step but took ~90 s to compile, which
    1,000 steps do not pay back (bench/train.py). ``channels_last``: the UNet's weights and
    input in channels-last layout; off by default (measured slower)."""
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, inject_adapter_in_model

    started = time.perf_counter()
    emit = on_event or (lambda event: None)
    settings = job.settings
    out = Path(out_dir)
    device = resolve_device(device)
    _check(job, prior_images, optimizer, device)

    # 1. Load the base model on the device, in the frozen weights' dtype.
    if dtype == "auto":
        dtype = "fp32" if device == "cpu" or settings.mixed_precision == "no" \
            else settings.mixed_precision
    emit({"event": "train_phase", "phase": "loading", "model": job.model.ref})
    model = load_model(job.model, RuntimeOptions(device=device, dtype=dtype, progress=False))
    if model.family != job.family:
        raise UserError(f"the job trains a {job.family} LoRA, but {job.model.ref} is a "
                        f"{model.family} model")
    pipe, weights = model.pipe, getattr(torch, TORCH_DTYPES[model.dtype])
    compute = {"no": weights, "fp16": torch.float16, "bf16": torch.bfloat16}[
        settings.mixed_precision]
    cuda = device.startswith("cuda")
    # Autocast only where the frozen weights are not in the compute dtype already. Where they
    # are, it only adds a cast of every fp32 LoRA weight at every call, and peft runs the LoRA
    # branch in the LoRA weights' own dtype (float32) and casts its output back.
    autocast = settings.mixed_precision != "no" and (weights != compute or FORCE_AUTOCAST)

    # 2. Freeze everything; then a fresh LoRA on the UNet's attention projections, initialised
    #    from the job's seed (peft draws from the global RNG: forked, so the caller's is kept).
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
            component.eval()
    unet = pipe.unet
    forked = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(settings.seed)
        unet.add_adapter(LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                                    init_lora_weights="gaussian",
                                    target_modules=list(FAMILIES[job.family].lora_targets)))
    cast_training_params(unet, dtype=torch.float32)
    modules = {"unet": unet}
    if settings.train_text_encoder:  # CLIP: a LoRA on its attention projections too
        for i, name in enumerate(FAMILIES[job.family].text_encoders, start=1):
            encoder = modules[name] = getattr(pipe, name)
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(settings.seed + i)
                # What transformers' add_adapter does, which (transformers 5) asks for a newer
                # peft than storyboard needs.
                inject_adapter_in_model(LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                                                   init_lora_weights="gaussian",
                                                   target_modules=list(TEXT_TARGETS)),
                                        encoder, export.ADAPTER)
            cast_training_params(encoder, dtype=torch.float32)
    _training(modules, True)
    if gradient_checkpointing is None:
        gradient_checkpointing = device.startswith("cuda") and \
            torch.cuda.mem_get_info(torch.device(device))[0] < CHECKPOINTING_BELOW
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    graphable = cuda and not autocast and settings.mixed_precision != "fp16" and \
        optimizer == "adamw" and not settings.train_text_encoder and not gradient_checkpointing
    if cuda_graphs and not graphable:
        raise UserError("CUDA graphs need a CUDA device, no autocast or fp16 scaler, AdamW, "
                        "frozen text encoders and no gradient checkpointing")
    cuda_graphs = graphable if cuda_graphs is None else cuda_graphs
    memory_format = torch.channels_last if channels_last else None
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile:
        for block in unet.modules():
            if type(block).__name__ in COMPILED_BLOCKS:
                block.compile()
    parameters = {f"{name}.{n}": p for name, module in modules.items()
                  for n, p in module.named_parameters() if p.requires_grad}

    # 3. Latents and text embeddings, once; the batch orders.
    emit({"event": "train_phase", "phase": "encoding", "pictures": len(job.images),
          "class_pictures": len(prior_images)})
    factor = data.vae_factor(pipe)
    live = settings.train_text_encoder  # embeddings change as the encoders learn
    instance = data.encode(pipe, data.plan_pictures(
        data.read_items(job.images), settings.resolution, factor), device, live)
    prior = None
    if settings.prior is not None:
        prior = data.encode(pipe, data.plan_pictures(
            data.measure(prior_images, settings.prior.prompt), settings.resolution, factor),
            device, live)
    orders = [instance.order(settings.batch_size, settings.seed, "instance")]
    if prior is not None:
        orders.append(prior.order(settings.batch_size, settings.seed, "prior"))
    # What the loop does not use leaves the GPU (SDXL's CLIPs 1.6 GB, Kolors' ChatGLM 12 GB).
    frozen = [c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)
              and name != "unet" and name not in modules] \
        if (cuda if offload_frozen is None else offload_frozen) else []
    _place(frozen, "cpu")

    # 4. Optimizer, gradient scaler and generator; then the last checkpoint, if any.
    trainable = state.Trainable(
        parameters=parameters,
        optimizer=_optimizer(list(parameters.values()), settings.learning_rate, device,
                             optimizer, capturable=cuda_graphs),
        # On a GPU, drawn there: a CPU draw would be copied over, waiting for the GPU each step.
        generator=torch.Generator(device if cuda else "cpu").manual_seed(settings.seed),
        scaler=torch.amp.GradScaler("cuda") if settings.mixed_precision == "fp16"
        and device.startswith("cuda") else None)
    losses: list[float] = []
    start, resumed_from = 0, None
    if resume:
        restored = state.load_checkpoint(out, job.key, trainable)
        if isinstance(restored, state.Restored):
            start = resumed_from = restored.step
            losses = list(restored.losses)
        elif restored != "no checkpoint":
            emit({"event": "warning", "message": f"{restored}; training from the start"})
    scheduler = objective.noise_scheduler(pipe)
    snr = objective.snr_table(scheduler, device) if settings.min_snr_gamma is not None else None
    facts = _facts(job)

    # 5. Train.
    emit({"event": "train_phase", "phase": "training", "steps": settings.steps,
          "resumed_from": resumed_from, "device": device, "dtype": model.dtype})
    loop_started = time.perf_counter()
    pending = steps.Losses(cuda and not SYNC_EVERY_STEP)

    def report(steps_losses: list[tuple[int, float]]) -> None:
        for done, value in steps_losses:
            losses.append(value)
            rate = (done - start) / max(time.perf_counter() - loop_started, 1e-9)
            emit({"event": "train_step", "step": done, "steps": settings.steps, "loss": value,
                  "steps_per_s": rate, "eta_s": (settings.steps - done) / rate})

    def step_loss(parts):
        """The step's loss from its (inputs, noise, timesteps) parts: instance, then prior."""
        total = None
        for i, (inputs, noise, timesteps) in enumerate(parts):
            part = objective.loss(unet, scheduler, inputs, noise, timesteps,
                                  settings.min_snr_gamma, compute, snr, memory_format)
            total = part if i == 0 else total + settings.prior.weight * part
        return total

    graphed = steps.GraphedStep(step_loss, trainable, emit) if cuda_graphs else None
    for step in range(start, settings.steps):
        if graphed is not None:
            parts = []
            for examples, order in zip((instance, prior), orders):
                inputs = examples.batch(order.batch(step))
                parts.append((inputs, *objective.draw(scheduler, inputs, trainable.generator)))
            loss = graphed.step(parts)
        else:
            with torch.autocast(torch.device(device).type, dtype=compute, enabled=autocast):
                loss = objective.batch_loss(
                    unet, scheduler, instance.batch(orders[0].batch(step)), trainable.generator,
                    settings.min_snr_gamma, compute, snr, memory_format)
                if prior is not None:
                    loss = loss + settings.prior.weight * objective.batch_loss(
                        unet, scheduler, prior.batch(orders[1].batch(step)),
                        trainable.generator, settings.min_snr_gamma, compute, snr,
                        memory_format)
            _step(loss, trainable)
        done = step + 1
        pending.push(done, loss)
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            report(pending.ready(wait=True))  # a checkpoint holds every loss so far
            if done < settings.steps:
                path = state.save_checkpoint(out, job.key, done, losses, trainable)
                emit({"event": "train_checkpoint", "step": done, "path": str(path)})
            if on_checkpoint is not None:
                _training(modules, False)
                _place(frozen, device)
                try:
                    with _eager(compile):  # renders: no compiling for their shapes
                        on_checkpoint(CheckpointView(done, settings.steps, losses[-1], pipe,
                                                     modules, facts))
                finally:
                    _training(modules, True)
                    if done < settings.steps:
                        _place(frozen, "cpu")
        else:
            report(pending.ready())

    if graphed is not None:
        graphed.close()

    # 6. The files; the checkpoint is not needed any more.
    emit({"event": "train_phase", "phase": "saving"})
    _training(modules, False)
    lora_file = export.save_diffusers(pipe, modules, out / export.LORA_FILE, facts)
    kohya_file = export.save_kohya(lora_file, out / export.KOHYA_FILE, job.family,
                                   unet.config, facts)
    state.remove_checkpoint(out)
    return TrainResult(lora_file=lora_file, kohya_file=kohya_file, final_loss=losses[-1],
                       losses=tuple(losses), steps=settings.steps,
                       seconds=time.perf_counter() - started, resumed_from=resumed_from,
                       device=device, dtype=model.dtype)


def _check(job: TrainJob, prior_images: Sequence[str | Path], optimizer: str,
           device: str) -> None:
    settings = job.settings
    if not job.key:
        raise ValueError("the job has no key (training.jobs.with_key gives it one)")
    if not job.images:
        raise ValueError("the job has no pictures")
    if settings.steps < 1 or settings.checkpoint_every < 1:
        raise ValueError("steps and checkpoint_every must be at least 1")
    if settings.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be no, fp16 or bf16, not "
                         f"{settings.mixed_precision!r}")
    if settings.prior is not None and not prior_images:
        raise ValueError("prior preservation is on, but no class pictures were given")
    if settings.prior is None and prior_images:
        raise ValueError("class pictures were given, but prior preservation is off")
    if settings.train_text_encoder and FAMILIES[job.family].tokenizer != "clip":
        raise UserError(f"a {job.family} model's text encoder is not CLIP and stays frozen; "
                        "set train_text_encoder: false")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}")
    if optimizer == "adamw8bit" and not device.startswith("cuda"):
        raise UserError(f"8-bit AdamW (bitsandbytes) needs a CUDA GPU, not {device}; use adamw")


def _eager(compiled: bool):
    """A context in which compiled modules run eagerly (torch.compiler.set_stance)."""
    import contextlib

    import torch

    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if compiled and stance is not None else contextlib.nullcontext()


def _place(modules: list[Any], device: str) -> None:
    if not modules:
        return
    import torch

    for module in modules:
        module.to(device)
    if device == "cpu":
        torch.cuda.empty_cache()


def _training(modules: dict[str, Any], on: bool) -> None:
    for module in modules.values():
        module.train(on)


def _optimizer(parameters: list[Any], lr: float, device: str, kind: str,
               capturable: bool = False):
    import torch

    cuda = device.startswith("cuda")
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("8-bit AdamW needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(parameters, lr=lr, betas=BETAS, eps=EPSILON,
                                   weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(parameters, lr=lr, betas=BETAS, eps=EPSILON,
                             weight_decay=WEIGHT_DECAY, fused=True if cuda else None,
                             capturable=capturable)


def _step(loss, trainable: state.Trainable) -> None:
    """Backward pass, gradient clipping and one optimizer step (through the scaler in fp16)."""
    import torch

    parameters = list(trainable.parameters.values())
    scaler = trainable.scaler
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, steps.MAX_GRAD_NORM)
        trainable.optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(trainable.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, steps.MAX_GRAD_NORM)
        scaler.step(trainable.optimizer)
        scaler.update()
    trainable.optimizer.zero_grad(set_to_none=True)


def _facts(job: TrainJob) -> dict[str, str]:
    """What the files' headers record about the training."""
    ref = job.model
    if ref.kind in ("builtin", "repo"):
        base = f"{ref.kind}:{ref.ref}" + (f"@{ref.revision}" if ref.revision else "")
    else:  # a local folder or file: its name, not the user's whole path
        base = f"{ref.kind}:{Path(ref.ref).name}"
    s = job.settings
    return {"storyboard.base_model": base, "storyboard.family": job.family,
            "storyboard.token": job.token, "storyboard.class": job.class_word,
            "storyboard.steps": str(s.steps), "storyboard.rank": str(s.rank),
            "storyboard.alpha": f"{s.alpha:g}", "storyboard.images": str(len(job.images)),
            "storyboard.dataset": job.key, "storyboard.recipe": str(TRAIN_RECIPE_VERSION)}
