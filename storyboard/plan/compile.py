"""Compile a validated story into fully resolved render jobs.

In: a ``Story`` from ``story.load_story``. Out: one ``PanelJob`` (``plan.jobs``) per panel, in
story order, with its final prompt and negative prompt (templates applied), seed, size, steps,
guidance, sampler, model reference, LoRAs (with file sha256; a character's trained LoRA
among them once it is trained, else the job is ``awaiting`` it) and caption, plus a content
hash; or a ``StoryError`` listing every template problem.

Panels without a seed derive one from the story seed and their *id* (never their position), so
inserting or reordering panels leaves every other panel's seed alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import constants as C
from .. import weightfiles
from ..errors import Diagnostics, Loc, Problem
from ..families import BUILTINS, FAMILIES, family_of_checkpoint_keys, family_of_pipeline
from ..samplers import canonical_sampler
from ..story import Story
from ..story.schema import REPO_RE, CharacterSpec, PanelSpec
from .jobs import LoraRef, ModelRef, PanelJob, with_hash
from .templating import Budget, TemplateProblem, is_template, render

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


def compile_story(story: Story, trained: Mapping[str, LoraRef] | None = None) -> list[PanelJob]:
    """Expand every panel into a ``PanelJob``. Raises ``StoryError`` listing template errors.

    ``trained``: the finished LoRA of each character with `train:` (``training.store``), by
    id; it joins the character's own `loras` in its panels. A panel of a character with
    `train:` missing from it is compiled ``awaiting`` that training (not renderable yet)."""
    spec = story.spec
    diag = Diagnostics()
    model = model_ref(story)
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
    default_size = default_panel_size(spec.model.builtin, spec.model.resolved_family)
    lora_cache: dict[str, str] = {}
    trained = {cid: lora for cid, lora in (trained or {}).items()
               if cid in spec.characters and spec.characters[cid].train is not None}
    budget = Budget()  # for all the story's templates together

    jobs = []
    for index, panel in enumerate(spec.panels):
        if budget.exhausted:
            break  # reported once, where it ran out
        loc: Loc = ("panels", index)
        present = [cast[cid] for cid in panel.characters]
        context = {**base_context, "characters": present}

        def text(value: str, where: Loc) -> str:
            if not is_template(value):
                return value
            return _render(value, context, where, story, diag, budget)

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
        prompt = _render(prompt_template, context, ("templates", "prompt"), story, diag, budget,
                         builtin=spec.templates.prompt is None)
        negative = _render(negative_template, context, ("templates", "negative"), story, diag,
                           budget, builtin=spec.templates.negative is None)
        loras = tuple(
            LoraRef(cid, str(path), lora_cache.setdefault(str(path), file_sha256(path)), l.weight)
            for cid in panel.characters
            for l in spec.characters[cid].loras
            for path in [story.resolve(l.file)]
        )
        awaiting = tuple(cid for cid in panel.characters
                         if spec.characters[cid].train is not None and cid not in trained)
        loras += tuple(trained[cid] for cid in panel.characters if cid in trained)
        job = _job(panel, index, spec, prompt, negative, model, loras, default_size, awaiting)
        jobs.append(job)
    diag.raise_if_errors()
    return jobs


def _job(panel: PanelSpec, index: int, spec, prompt: str, negative: str, model: ModelRef,
         loras: tuple[LoraRef, ...], default_size: int, awaiting: tuple[str, ...]) -> PanelJob:
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
        awaiting=awaiting,
    )
    return with_hash(job)


def _render(source: str, context: dict, loc: Loc, story: Story, diag: Diagnostics,
            budget: Budget, *, builtin: bool = False) -> str:
    if budget.exhausted:
        return ""
    try:
        result = render(source, context, budget)
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


def model_ref(story: Story) -> ModelRef:
    m = story.spec.model
    family = m.resolved_family
    if m.builtin:
        return ModelRef("builtin", m.builtin, family=family, dtype=m.dtype,
                        fingerprint=f"recipe-{BUILTINS[m.builtin].recipe}")
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
    """Tensor names of a .safetensors file, from its checked JSON header alone (no tensors
    read); None when it is not a sound safetensors file (``weightfiles`` says why)."""
    try:
        header = weightfiles.check(path) if path.suffix.lower() == ".safetensors" else None
    except weightfiles.WeightFileError:
        return None
    return [k for k in header if k != "__metadata__"] if header is not None else None


def checkpoint_family(path: Path) -> str | None:
    """A .safetensors checkpoint's family, from its tensor names (``families``' markers); None
    when none matches (or not safetensors)."""
    keys = checkpoint_keys(path) if path.suffix.lower() == ".safetensors" else None
    return family_of_checkpoint_keys(keys) if keys else None


def known_family(ref: ModelRef) -> str | None:
    """The family of ``ref`` as far as it is known before loading: the story's `family`, a
    built-in's, a local folder's or checkpoint's (``model_ref`` read them), or a repo's
    model_index.json when the Hugging Face cache already has it (nothing is downloaded)."""
    if ref.family:
        return ref.family
    if ref.kind == "builtin":
        return BUILTINS[ref.ref].family
    if ref.kind != "repo":
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(ref.ref, "model_index.json", revision=ref.revision)
    return _family_from_index(Path(hit).parent) if isinstance(hit, str) else None


def _family_from_index(folder: Path) -> str | None:
    try:
        index = json.loads((folder / "model_index.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return family_of_pipeline(index.get("_class_name")) if isinstance(index, dict) else None


__all__ = ["compile_story", "derive_seed", "model_ref", "known_family", "checkpoint_family",
           "checkpoint_keys", "file_sha256", "default_panel_size"]


def default_panel_size(builtin: str | None, family: str | None) -> int:
    """Pixels a panel gets when the story sets no size: the model's native size (a family's
    own; 1024 while the family is still unknown, as for most models), small for built-ins."""
    if builtin:
        return BUILTINS[builtin].native_size
    return FAMILIES[family].native_size if family else 1024

