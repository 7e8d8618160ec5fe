"""What the trainer learns from, computed once: VAE latents and text embeddings.

In: the loaded pipeline (its VAE, tokenizers and text encoders), pictures with their captions,
the training resolution. Out: ``Examples`` (each picture resized into its aspect-ratio bucket
and encoded once by the VAE, with SDXL's size/crop conditioning; each distinct caption encoded
once by the pipeline's own ``encode_prompt``, so training sees exactly what rendering feeds the
UNet; or, when the text encoders train, at every batch) and ``Examples.batch``, the UNet inputs
of a batch of them.

Latents are the VAE posterior's mean (no sampling: nothing random happens before the first
step), scaled by the VAE's ``scaling_factor`` (less its ``shift_factor``, where one is set),
kept in float32 on the training device. A VAE that asks for it (``force_upcast``, as SDXL's
does: it overflows in fp16) encodes in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...training.buckets import BatchOrder, CropPlan, assign, bucket_sizes, bucket_step, crop_plan
from ...training.images import open_picture


@dataclass(frozen=True)
class Picture:
    """One training picture: its file, caption and how it fits its bucket."""

    path: str
    caption: str
    plan: CropPlan


@dataclass(frozen=True)
class UNetInputs:
    """A batch as the UNet takes it (all on the training device)."""

    latents: Any  # (batch, 4, h, w) float32
    prompt_embeds: Any  # (batch, tokens, width)
    added_cond: dict[str, Any] | None  # SDXL / Kolors: {"text_embeds", "time_ids"}; else None


@dataclass
class Examples:
    """Pictures with their latents and their captions' embeddings, computed once."""

    pictures: tuple[Picture, ...]
    latents: list[Any]
    embeddings: dict[str, tuple[Any, Any]]  # caption -> (prompt_embeds, pooled or None)
    time_ids: bool  # whether the UNet takes SDXL's added time ids
    live: Callable[[str], tuple[Any, Any]] | None = None  # encodes at every batch instead
    # Each picture's time ids, float32 on the device: made once, as a tensor made from a list at
    # every batch is a copy from the host, which waits for the GPU.
    ids: list[Any] | None = None

    def embedding(self, caption: str) -> tuple[Any, Any]:
        return self.live(caption) if self.live is not None else self.embeddings[caption]

    def order(self, batch_size: int, seed: int, name: str) -> BatchOrder:
        return BatchOrder(tuple(p.plan.bucket for p in self.pictures), batch_size, seed, name)

    def batch(self, indices: Sequence[int]) -> UNetInputs:
        import torch

        pictures = [self.pictures[i] for i in indices]
        latents = torch.stack([self.latents[i] for i in indices])
        embedded = {c: self.embedding(c) for c in dict.fromkeys(p.caption for p in pictures)}
        prompt = torch.cat([embedded[p.caption][0] for p in pictures])
        if not self.time_ids:
            return UNetInputs(latents, prompt, None)
        pooled = torch.cat([embedded[p.caption][1] for p in pictures])
        if self.ids is None:
            self.ids = [torch.tensor(p.plan.time_ids, dtype=torch.float32, device=pooled.device)
                        for p in self.pictures]
        ids = torch.stack([self.ids[i] for i in indices]).to(pooled.dtype)
        return UNetInputs(latents, prompt, {"text_embeds": pooled, "time_ids": ids})


def plan_pictures(items: Sequence[tuple[str, str, int, int]], resolution: int,
                  vae_factor: int) -> tuple[Picture, ...]:
    """(path, caption, width, height) -> pictures, each assigned to its bucket."""
    buckets = bucket_sizes(resolution, bucket_step(resolution, vae_factor))
    return tuple(Picture(path, caption, crop_plan(w, h, assign(w, h, buckets)))
                 for path, caption, w, h in items)


def pixels(picture: Picture):
    """The picture at its bucket's size, as the VAE takes it: (3, h, w) in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    plan = picture.plan
    with open_picture(picture.path) as im:
        if (im.height, im.width) != plan.original_size:
            raise UserError(f"{picture.path} is {im.width}x{im.height}, but was "
                            f"{plan.original_size[1]}x{plan.original_size[0]} when the dataset "
                            "was checked: check it again")
        im = im.resize(plan.resized, Image.Resampling.LANCZOS)
        im = im.crop((plan.left, plan.top, plan.left + plan.bucket.width,
                      plan.top + plan.bucket.height))
        array = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def encode(pipe, pictures: Sequence[Picture], device: str, live_text: bool = False) -> Examples:
    """VAE latents of every picture and text embeddings of every distinct caption (with
    ``live_text``, none: they are computed at every batch, through text encoders that learn)."""
    import torch

    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = []
    with torch.no_grad():
        if upcast:
            vae.to(torch.float32)
        try:
            for picture in pictures:
                x = pixels(picture).unsqueeze(0).to(device, vae.dtype)
                mean = vae.encode(x).latent_dist.mean
                latents.append(((mean.float() - shift) * scale)[0])
        finally:
            if upcast:
                vae.to(dtype)
        embeddings = {} if live_text else {c: caption_embedding(pipe, c, device)
                                           for c in sorted({p.caption for p in pictures})}
    time_ids = getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"
    live = (lambda caption: caption_embedding(pipe, caption, device)) if live_text else None
    return Examples(tuple(pictures), latents, embeddings, time_ids, live)


def caption_embedding(pipe, caption: str, device: str) -> tuple[Any, Any]:
    """(prompt_embeds, pooled_prompt_embeds or None) of one caption, through the pipeline's own
    ``encode_prompt`` (SDXL: both CLIP encoders; Kolors: ChatGLM; SD1.5: one CLIP)."""
    import torch

    # As rendering encodes (engine/runner.py): TorchScript's optimised execution off, so a
    # caption's embedding does not depend on what was encoded before it.
    with torch.jit.optimized_execution(False):
        out = pipe.encode_prompt(caption, device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
    if len(out) == 4:  # prompt, negative, pooled, negative pooled
        return out[0], out[2]
    return out[0], None


def vae_factor(pipe) -> int:
    """Image pixels per latent pixel."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def read_items(images: Sequence[Any]) -> list[tuple[str, str, int, int]]:
    """``TrainImage``s as (path, caption, width, height)."""
    return [(str(Path(i.path)), i.caption, i.width, i.height) for i in images]


def measure(paths: Sequence[str | Path], caption: str) -> list[tuple[str, str, int, int]]:
    """Pictures given by path alone (class pictures), all with one caption, as
    (path, caption, width, height); sizes as ``open_picture`` reads them (upright)."""
    items = []
    for path in paths:
        with open_picture(path) as im:
            items.append((str(Path(path)), caption, im.width, im.height))
    return items
