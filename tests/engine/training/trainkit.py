"""Helpers for the trainer's tests: pictures, jobs, held-out denoising, renders of a story."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from storyboard.families import BUILTINS
from storyboard.options import RuntimeOptions
from storyboard.paths import sha256_of
from storyboard.plan.jobs import ModelRef
from storyboard.training.jobs import PriorSpec, TrainImage, TrainJob, TrainSettings, with_key

RED = (230, 20, 20)
QUIET = RuntimeOptions(device="cpu", progress=False)


def pictures(folder: Path, sizes, colour=RED, caption="ohwx girl", stem="red") -> list[TrainImage]:
    """Solid-colour PNGs of ``sizes`` (width, height) in ``folder``, as TrainImages."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"{stem}{i}.png"
        Image.new("RGB", (w, h), colour).save(path)
        out.append(TrainImage(str(path), sha256_of(path), w, h, caption))
    return out


def settings(**changes) -> TrainSettings:
    base = TrainSettings(steps=60, rank=4, alpha=8.0, learning_rate=1e-2, batch_size=1,
                         resolution=64, seed=1, min_snr_gamma=5.0, train_text_encoder=False,
                         prior=None, checkpoint_every=20, mixed_precision="no")
    return replace(base, **changes)


def builtin(model: str) -> ModelRef:
    return ModelRef("builtin", model, family=BUILTINS[model].family,
                    fingerprint=f"recipe-{BUILTINS[model].recipe}")


def job(images, model: str | ModelRef = "tiny-sdxl", **changes) -> TrainJob:
    ref = builtin(model) if isinstance(model, str) else model
    family = ref.family
    return with_key(TrainJob(character="ohwx", token="ohwx", class_word="girl", family=family,
                             model=ref, images=tuple(images), settings=settings(**changes),
                             weight=1.0))


def prior(prompt="a girl", weight=1.0, images=2) -> PriorSpec:
    return PriorSpec(images=images, weight=weight, prompt=prompt)


def held_out_loss(pipe, images, seed=1234, draws=8) -> float:
    """The training objective (plain MSE, no min-SNR) on ``images``, with noise and timesteps
    from a generator the training never used: how well the UNet as it is now denoises them."""
    import torch

    from storyboard.engine.training import data, objective

    examples = data.encode(pipe, data.plan_pictures(data.read_items(images), 64,
                                                    data.vae_factor(pipe)), "cpu")
    scheduler = objective.noise_scheduler(pipe)
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        losses = [objective.batch_loss(pipe.unet, scheduler, examples.batch([i] * draws),
                                       generator, None, torch.float32)
                  for i in range(len(images))]
    return float(torch.stack(losses).mean())


def held_out_with_loras(story_path: Path, model: str | ModelRef,
                        images) -> tuple[float, dict[str, float]]:
    """``held_out_loss`` of the base model, and with each character's LoRA of the story at
    ``story_path`` (loaded through storyboard's own adapters, live), by panel id."""
    from storyboard.engine.adapters import Adapters
    from storyboard.engine.loading import load_model
    from storyboard.plan import compile_story
    from storyboard.plan.batches import lora_set
    from storyboard.story import load_story

    jobs = {j.panel: j for j in compile_story(load_story(story_path))}
    loaded = load_model(builtin(model) if isinstance(model, str) else model, QUIET)
    adapters = Adapters(loaded, merge=False)
    adapters.load(list(jobs.values()))
    adapters.activate(())  # loaded adapters arrive switched on
    base = held_out_loss(loaded.pipe, images)
    trained = {}
    for pid, panel in jobs.items():
        if panel.loras:
            adapters.activate(adapters.named(lora_set(panel)))
            trained[pid] = held_out_loss(loaded.pipe, images)
    adapters.activate(())
    assert held_out_loss(loaded.pipe, images) == base  # the base, untouched
    return base, trained


def story(folder: Path, model: str, loras: dict[str, str], prompt="ohwx girl", seed=5) -> Path:
    """A story with one panel without LoRA ("base") and one per entry of ``loras``
    (panel id -> LoRA file), all of ``prompt`` with one seed."""
    characters = "".join(f"  {pid}: {{loras: [{{file: {file}, weight: 1.0}}]}}\n"
                         for pid, file in loras.items())
    panels = f"  - {{id: base, prompt: {prompt}, seed: {seed}}}\n" + "".join(
        f"  - {{id: {pid}, characters: [{pid}], prompt: {prompt}, seed: {seed}}}\n"
        for pid in loras)
    path = folder / "story.yaml"
    path.write_text(f"version: 1\nmodel: {model}\ndefaults: {{steps: 4, width: 64, height: 64}}"
                    f"\ncharacters:\n{characters}panels:\n{panels}", encoding="utf-8")
    return path


def render(path: Path) -> dict[str, np.ndarray]:
    """Every panel of the story at ``path``, through storyboard's own render path."""
    from storyboard.engine.session import render_jobs
    from storyboard.plan import compile_story
    from storyboard.story import load_story

    results = {r.job.panel: r for r in render_jobs(compile_story(load_story(path)), QUIET)}
    assert all(r.status == "rendered" for r in results.values()), \
        {k: r.error for k, r in results.items()}
    return {k: np.asarray(r.image).astype(np.int16) for k, r in results.items()}


def shuffled(lora: Path, path: Path) -> Path:
    """``lora`` with each lora_B's entries permuted (a fixed generator): the control."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    generator = torch.Generator("cpu").manual_seed(0)
    with safe_open(str(lora), "pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    for key, value in tensors.items():
        if "lora_B" in key:
            flat = value.flatten()
            tensors[key] = flat[torch.randperm(flat.numel(), generator=generator)] \
                .view_as(value).contiguous()
    save_file(tensors, str(path), metadata=metadata)
    return path
