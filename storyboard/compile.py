"""Compile a validated story into fully resolved render jobs.

In: a ``Story`` from ``spec.load_story``. Out: one ``PanelJob`` per panel, in story order, with
its final prompt and negative prompt (templates applied), seed, size, steps, guidance, sampler,
model reference, LoRAs (with file sha256) and caption, plus a content hash.

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
one render.

Panels without a seed derive one from the story seed and their *id* (never their position), so
inserting or reordering panels leaves every other panel's seed alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import constants as C
from .errors import Diagnostics, Loc, Problem
from .samplers import canonical_sampler
from .spec import REPO_RE, CharacterSpec, PanelSpec, Story
from .templating import TemplateProblem, is_template, render

# The built-in templates. A writer overrides them under `templates:`; these are what a story
# gets otherwise, and `storyboard plan` shows their result.
DEFAULT_PROMPT_TEMPLATE = (
    '{{ [style.prefix, characters | map(attribute="phrase") | select | join(sep), prompt,'
    " style.suffix] | select | join(sep) }}"
)
DEFAULT_NEGATIVE_TEMPLATE = (
    "{{ [defaults.negative, style.negative,"
    ' characters | map(attribute="negative") | select | join(sep), panel.negative]'
    " | select | join(sep) }}"
)

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
            "guidance": float(self.guidance),
            "scheduler": self.scheduler,
            "model": self.model.hash_payload(),
            "loras": sorted([lora.sha256, float(lora.weight)] for lora in self.loras),
        }

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


def derive_seed(story_seed: int, panel_id: str) -> int:
    """A 32-bit seed from the story seed and a panel id; 32 bits so WebUI and ComfyUI take it."""
    digest = hashlib.sha256(f"storyboard-seed:{story_seed}:{panel_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def file_sha256(path: Path, _cache: dict[tuple, str] = {}) -> str:  # noqa: B006 - memo
    """sha256 of a file, memoised by (path, size, mtime) for the life of the process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _cache[key] = h.hexdigest()
    return _cache[key]


def compile_story(story: Story) -> list[PanelJob]:
    """Expand every panel into a ``PanelJob``. Raises ``StoryError`` listing template errors."""
    spec = story.spec
    diag = Diagnostics()
    model = _model_ref(story)
    cast = {cid: _character_view(cid, char, spec.style.separator)
            for cid, char in spec.characters.items()}
    base_context = {
        "title": spec.title,
        "vars": spec.vars,
        "style": spec.style.model_dump(),
        "defaults": {"negative": spec.defaults.negative},
        "cast": cast,
        "sep": spec.style.separator,
    }
    prompt_template = spec.templates.prompt or DEFAULT_PROMPT_TEMPLATE
    negative_template = spec.templates.negative or DEFAULT_NEGATIVE_TEMPLATE
    default_size = (C.BUILTIN_DEFAULT_SIZE if spec.model.builtin
                    else C.DEFAULT_SIZE[spec.model.resolved_family])
    lora_cache: dict[str, str] = {}

    jobs = []
    for index, panel in enumerate(spec.panels):
        loc: Loc = ("panels", index)
        present = [cast[cid] for cid in panel.characters]
        context = {**base_context, "characters": present}

        def text(value: str, where: Loc) -> str:
            if not is_template(value):
                return value
            return _render(value, context, where, story, diag)

        parts = ([panel.prompt] if isinstance(panel.prompt, str) else panel.prompt.parts())
        prompt_text = spec.style.separator.join(
            text(part, (*loc, "prompt")) for part in parts if part)
        negative_text = text(panel.negative, (*loc, "negative"))
        context["prompt"] = prompt_text
        context["panel"] = {
            "id": panel.id,
            "prompt": prompt_text,
            "negative": negative_text,
            "caption": panel.caption,
            "characters": list(panel.characters),
        }
        prompt = _render(prompt_template, context, ("templates", "prompt"), story, diag,
                         builtin=spec.templates.prompt is None)
        negative = _render(negative_template, context, ("templates", "negative"), story, diag,
                           builtin=spec.templates.negative is None)
        loras = tuple(
            LoraRef(cid, str(path), lora_cache.setdefault(str(path), file_sha256(path)), l.weight)
            for cid in panel.characters
            for l in spec.characters[cid].loras
            for path in [story.resolve(l.file)]
        )
        job = _job(panel, index, spec, prompt, negative, model, loras, default_size)
        jobs.append(job)
    diag.raise_if_errors()
    return jobs


def _job(panel: PanelSpec, index: int, spec, prompt: str, negative: str, model: ModelRef,
         loras: tuple[LoraRef, ...], default_size: int) -> PanelJob:
    d = spec.defaults
    seed = panel.seed if panel.seed is not None else derive_seed(d.seed, panel.id)
    job = PanelJob(
        panel=panel.id,
        index=index,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        seed_derived=panel.seed is None,
        width=panel.width or d.width or default_size,
        height=panel.height or d.height or default_size,
        steps=panel.steps or d.steps,
        guidance=panel.guidance if panel.guidance is not None else d.guidance,
        scheduler=canonical_sampler(panel.scheduler or d.scheduler) or d.scheduler,
        model=model,
        loras=loras,
        characters=tuple(panel.characters),
        caption=panel.caption,
    )
    return _with_hash(job)


def _with_hash(job: PanelJob) -> PanelJob:
    object.__setattr__(job, "hash", job_hash(job.hash_payload()))
    return job


def _render(source: str, context: dict, loc: Loc, story: Story, diag: Diagnostics, *,
            builtin: bool = False) -> str:
    try:
        result = render(source, context)
    except TemplateProblem as exc:
        where = "built-in template" if builtin else None
        pos = story.doc.pos(loc)
        line = pos.line
        # Block scalars (`|`) start their text on the next line; plain ones on the key's line.
        if exc.line is not None and not builtin:
            line = pos.line + exc.line - (0 if tuple(loc) in story.doc.block_scalars else 1)
        message = exc.message if not where else f"{where}: {exc.message}"
        diag.add(Problem(story.name, line, pos.col if line == pos.line else None, loc,
                         message, exc.hint))
        return ""
    if len(result) > C.MAX_TEXT_CHARS:
        diag.add(story.doc.problem(loc, "rendered text is too long"))
    return " ".join(result.split()) if "\n" in result else result.strip()


def _character_view(cid: str, char: CharacterSpec, sep: str) -> dict[str, Any]:
    trigger = " ".join(t for t in (char.token, char.class_word) if t)
    return {
        "id": cid,
        "name": char.name or cid,
        "token": char.token or "",
        "class": char.class_word or "",
        "class_word": char.class_word or "",
        "description": char.description,
        "negative": char.negative,
        "trigger": trigger,
        "phrase": sep.join(t for t in (trigger, char.description) if t),
    }


def _model_ref(story: Story) -> ModelRef:
    m = story.spec.model
    family = m.resolved_family
    if m.builtin:
        return ModelRef("builtin", m.builtin, family=family, dtype=m.dtype,
                        fingerprint=f"recipe-{C.BUILTIN_MODELS[m.builtin][1]}")
    if m.repo:
        return ModelRef("repo", m.repo, revision=m.revision or "main", variant=m.variant,
                        family=family, dtype=m.dtype)
    path = story.resolve(m.path or "")
    if path.is_dir():
        family = family or _family_from_index(path)
        return ModelRef("folder", str(path), variant=m.variant, family=family, dtype=m.dtype)
    st = path.stat() if path.exists() else None
    if family is None and st is not None:
        family = checkpoint_family(path)
    # Hashing a multi-GB checkpoint on every `plan` would be slow; size+mtime stand in for it.
    fingerprint = f"{st.st_size}-{st.st_mtime_ns}" if st else None
    config = m.config
    if config and not REPO_RE.fullmatch(config):
        config = str(story.resolve(config))
    return ModelRef("file", str(path), family=family, dtype=m.dtype, fingerprint=fingerprint,
                    config=config)


def checkpoint_keys(path: Path) -> list[str] | None:
    """Tensor names of a .safetensors file, from its JSON header alone (no tensors read)."""
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 100_000_000:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return None
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else None


def checkpoint_family(path: Path) -> str | None:
    """SDXL checkpoints carry a second text encoder under `conditioner.embedders.1`; SD1.5
    ones a single one under `cond_stage_model`. None when neither (or not safetensors)."""
    keys = checkpoint_keys(path) if path.suffix.lower() == ".safetensors" else None
    if not keys:
        return None
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd15"
    return None


_PIPELINE_FAMILIES = {
    "StableDiffusionXLPipeline": "sdxl",
    "KolorsPipeline": "kolors",
    "StableDiffusionPipeline": "sd15",
}


def _family_from_index(folder: Path) -> str | None:
    try:
        index = json.loads((folder / "model_index.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return _PIPELINE_FAMILIES.get(index.get("_class_name")) if isinstance(index, dict) else None


__all__ = ["PanelJob", "ModelRef", "LoraRef", "compile_story", "derive_seed", "job_hash",
           "HASHED_FIELDS"]
