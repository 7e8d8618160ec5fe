"""The compiled unit of training: what one character's LoRA needs to be trained, and its key.

In: resolved values (from ``training.compile``: the character's `train:` section, its dataset
scanned and checked, the family's defaults). Out: frozen ``TrainJob`` / ``TrainSettings`` /
``TrainImage`` records; ``with_key`` gives a job its key.

The key (``TrainJob.key``) covers exactly what changes the trained weights: every image's bytes
(sha256) and caption, in a stable order; every setting in ``TrainSettings``; the base model
(``ModelRef.hash_payload``: repo/revision/variant, a folder's path, a file's size and mtime, a
built-in's recipe); the family; ``TRAIN_RECIPE_VERSION``; with prior preservation, how the
class pictures are rendered (``CLASS_RENDER``: with the model, prompt, seed and resolution
already in it, everything a class picture's job hash covers, so the pictures' own bytes need
not be; ``training.prior``). It leaves out the character's id and
display name, so renaming a character reuses its LoRA. Bump ``TRAIN_RECIPE_VERSION`` whenever
the trainer changes what it computes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..plan.jobs import ModelRef
from ..samplers import DEFAULT

TRAIN_RECIPE_VERSION = 1
# How prior preservation's class pictures are rendered (``training.prior``): fixed here, not
# taken from the story's defaults, so that they depend only on what the key covers.
CLASS_RENDER: dict[str, Any] = {"steps": 30, "guidance": 5.0, "scheduler": DEFAULT,
                                "negative": ""}


@dataclass(frozen=True)
class TrainImage:
    """One reference picture, checked and captioned."""

    path: str  # absolute
    sha256: str  # of the file's bytes
    width: int  # after EXIF orientation
    height: int
    caption: str  # the .txt beside it, else token + class + description


@dataclass(frozen=True)
class PriorSpec:
    """Prior preservation: class pictures rendered by storyboard, and the weight of their loss."""

    images: int
    weight: float
    prompt: str  # the class prompt, e.g. "a photo of a girl"


@dataclass(frozen=True)
class TrainSettings:
    """Every setting that changes the weights (all resolved: no None left to a default)."""

    steps: int
    rank: int
    alpha: float
    learning_rate: float
    batch_size: int
    resolution: int  # the bucket area is resolution**2
    seed: int
    min_snr_gamma: float | None  # None: plain MSE
    train_text_encoder: bool
    prior: PriorSpec | None
    checkpoint_every: int  # steps; also when the contact sheet is drawn
    mixed_precision: str  # "no" | "fp16" | "bf16" (what the trainer computes in)
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" (bitsandbytes)


@dataclass(frozen=True)
class TrainJob:
    """One character's LoRA, fully resolved."""

    character: str  # id in the story
    token: str
    class_word: str
    family: str
    model: ModelRef
    images: tuple[TrainImage, ...]
    settings: TrainSettings
    weight: float  # the trained LoRA's weight in the character's panels
    key: str = field(default="")

    def key_payload(self) -> dict[str, Any]:
        return {
            "v": TRAIN_RECIPE_VERSION,
            "family": self.family,
            "model": self.model.hash_payload(),
            "images": sorted([image.sha256, image.caption] for image in self.images),
            "settings": asdict(self.settings),
            "token": self.token,
            "class": self.class_word,
            # Only with prior preservation, so the keys of trainings without it stay as they were.
            **({"class_render": CLASS_RENDER} if self.settings.prior is not None else {}),
        }


def with_key(job: TrainJob) -> TrainJob:
    """``job`` with its key filled in (computed, never taken from anywhere)."""
    blob = json.dumps(job.key_payload(), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return replace(job, key=hashlib.sha256(blob.encode("utf-8")).hexdigest())
