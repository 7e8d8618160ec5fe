"""The compiled unit: what one panel needs to be rendered, and its content hash.

In: resolved values (from ``plan.compile``, or read back from a panel PNG's record). Out:
frozen ``PanelJob`` / ``ModelRef`` / ``LoraRef`` records; ``with_hash`` gives a job its hash.

The hash (``PanelJob.hash``) covers exactly what changes pixels, listed in ``HASHED_FIELDS``:
- ``prompt``, ``negative_prompt`` — the final texts after templates;
- ``seed``, ``width``, ``height``, ``steps``, ``guidance``, ``scheduler`` (canonical name);
- ``model`` — source kind and reference (repo id + revision + variant; a local folder's
  absolute path; a single file's absolute path, size and modification time; a built-in model's
  name and recipe version), family and dtype as written;
- ``loras`` — each active LoRA's file sha256 and weight (order-free: adapters add up);
- ``JOB_HASH_VERSION``.
It leaves out panel id, caption, characters' display names, title and layout, so renaming a
panel or editing a caption re-uses the rendered image. Two panels with identical settings share
one render. Every example story's hashes are pinned by golden files (tests/golden/plans): a
change here that moves them invalidates every user's cache, and must bump ``JOB_HASH_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .. import constants as C

HASHED_FIELDS = ("prompt", "negative_prompt", "seed", "width", "height", "steps", "guidance",
                 "scheduler", "model", "loras")


@dataclass(frozen=True)
class ModelRef:
    """Which weights render a job. ``ref`` is a repo id, an absolute path or a built-in name."""

    kind: str  # "builtin" | "repo" | "folder" | "file"
    ref: str
    revision: str | None = None
    variant: str | None = None
    family: str | None = None  # None: detected from the model when it is loaded
    dtype: str = "auto"
    fingerprint: str | None = None  # built-in recipe version, or size+mtime of a single file
    config: str | None = None  # a single file's pipeline configs: repo id or absolute folder

    def hash_payload(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoraRef:
    character: str
    path: str
    sha256: str
    weight: float


@dataclass(frozen=True)
class PanelJob:
    """One panel, fully resolved: everything the renderer needs, nothing it has to look up."""

    panel: str
    index: int  # 0-based position in the story, for page order only
    prompt: str
    negative_prompt: str
    seed: int
    seed_derived: bool
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    model: ModelRef
    loras: tuple[LoraRef, ...]
    characters: tuple[str, ...]
    caption: str
    # Characters whose LoRA is still to be trained (`train:`): the job cannot render, or be
    # looked up in the cache, until it is compiled again with the trained file.
    awaiting: tuple[str, ...] = ()
    hash: str = field(default="")

    def hash_payload(self) -> dict[str, Any]:
        return {
            "v": C.JOB_HASH_VERSION,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance": float(self.guidance) + 0.0,  # -0.0 is 0.0
            "scheduler": self.scheduler,
            "model": self.model.hash_payload(),
            "loras": sorted([lora.sha256, float(lora.weight) + 0.0] for lora in self.loras),
        } | ({"awaiting": sorted(self.awaiting)} if self.awaiting else {})

    def to_dict(self) -> dict[str, Any]:
        """The job as `storyboard plan --json` prints it."""
        return {
            "panel": self.panel,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "seed_derived": self.seed_derived,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance": self.guidance,
            "scheduler": self.scheduler,
            "characters": list(self.characters),
            "loras": [asdict(lora) for lora in self.loras],
            "model": asdict(self.model),
            "caption": self.caption,
            "hash": self.hash,
        }


def job_hash(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def with_hash(job: PanelJob) -> PanelJob:
    """``job`` with its content hash filled in (computed, never taken from anywhere)."""
    return replace(job, hash=job_hash(job.hash_payload()))
