"""What a schema cannot check: cross-references, the file system, warnings.

In: a story's plain data (read defensively: the schema pass may have failed on any part of it),
its ``SourceDoc`` and the folder relative paths start from. Out: problems added to a
``Diagnostics``: unknown or duplicate ids, unknown characters and samplers, missing LoRA, model
and font files and training-picture folders (with did-you-mean hints from the folder), a
trained character without a token, and warnings such as a character that appears in no panel.
The pictures themselves are checked later (``training.dataset``), once the story is valid.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import ERROR, WARNING, Diagnostics, Loc, did_you_mean
from ..paths import MISSING, file_problem
from ..samplers import canonical_sampler, sampler_names
from .fields import (
    BIDI_CONTROLS, CHECKPOINT_SUFFIXES, FONT_SUFFIXES, LORA_SUFFIXES, REPO_RE, char_name,
    id_problem, show_id,
)
from .schema import model_shorthand
from .source import SourceDoc


def check_semantics(data: dict, doc: SourceDoc, base_dir: Path, diag: Diagnostics, *,
                     check_files: bool) -> None:
    def error(loc: Loc, message: str, hint: str | None = None, key: bool = False) -> None:
        diag.add(doc.problem(loc, message, hint, key=key, severity=ERROR))

    def warn(loc: Loc, message: str, hint: str | None = None, key: bool = False) -> None:
        diag.add(doc.problem(loc, message, hint, key=key, severity=WARNING))

    characters = data.get("characters")
    characters = characters if isinstance(characters, dict) else {}
    panels = data.get("panels")
    panels = panels if isinstance(panels, list) else []

    # Scheduler names, wherever they appear.
    def check_scheduler(loc: Loc, name: Any) -> None:
        if isinstance(name, str) and canonical_sampler(name) is None:
            error(loc, f"unknown scheduler {name!r}", did_you_mean(name, sampler_names())
                  or "known: " + ", ".join(sampler_names()))

    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        check_scheduler(("defaults", "scheduler"), defaults.get("scheduler"))

    # Panels: unique ids, known characters.
    seen: dict[str, int] = {}  # lower-cased: macOS and Windows file names ignore case
    used: set[str] = set()
    for i, panel in enumerate(panels):
        if not isinstance(panel, dict):
            continue
        pid = panel.get("id")
        if isinstance(pid, str):
            if pid.lower() in seen:
                j = seen[pid.lower()]
                first = doc.pos(("panels", j, "id")).line
                other = panels[j]["id"]
                if other == pid:
                    error(("panels", i, "id"), f"duplicate panel id {show_id(pid)} (first used "
                                               f"on line {first})", "every panel needs its own id")
                else:
                    error(("panels", i, "id"), f"panel id {show_id(pid)} differs from "
                                               f"{show_id(other)} (line {first}) only in case",
                          "their files would overwrite each other on macOS and Windows")
            else:
                seen[pid.lower()] = i
        check_scheduler(("panels", i, "scheduler"), panel.get("scheduler"))
        present = panel.get("characters")
        present = [present] if isinstance(present, str) else present
        if isinstance(present, list):
            listed: set[str] = set()
            for j, cid in enumerate(present):
                if not isinstance(cid, str):
                    continue
                loc: Loc = ("panels", i, "characters") if isinstance(panel.get("characters"),
                                                                     str) else \
                    ("panels", i, "characters", j)
                if cid not in characters:
                    hint = did_you_mean(cid, characters) or (
                        f"defined characters: {', '.join(characters)}" if characters
                        else "define it under `characters:` first")
                    error(loc, f"unknown character {show_id(cid)}", hint)
                elif cid in listed:
                    error(loc, f"character {show_id(cid)} is listed twice")
                listed.add(cid)
                used.add(cid)

    # layout.span and layout.row_span name panels by id.
    layout = data.get("layout")
    for key in ("span", "row_span"):
        span = layout.get(key) if isinstance(layout, dict) else None
        if not isinstance(span, dict):
            continue
        ids = [p["id"] for p in panels if isinstance(p, dict) and isinstance(p.get("id"), str)]
        for pid in span:
            if isinstance(pid, str) and pid not in ids:
                error(("layout", key, pid), f"layout.{key} names no panel {show_id(pid)}",
                      did_you_mean(pid, ids) or f"panels: {', '.join(ids[:8])}", key=True)

    for cid, char in characters.items():
        problem = id_problem(cid, "character id") if isinstance(cid, str) else \
            (f"invalid character id {cid!r}: ids are text", "put quotes around it")
        if problem:
            error(("characters", str(cid)), *problem, key=True)
        elif cid not in used:
            warn(("characters", cid), f"character {cid!r} is defined but appears in no panel",
                 key=True)
        if not isinstance(char, dict):
            continue
        if char.get("train") is not None:
            _check_train(cid, char, base_dir, error, warn, check_files=check_files)
        loras = char.get("loras")
        if not isinstance(loras, list):
            continue
        for j, lora in enumerate(loras):
            entry = {"file": lora} if isinstance(lora, str) else lora
            if not isinstance(entry, dict):
                continue
            loc = ("characters", cid, "loras", j) if isinstance(lora, str) else \
                ("characters", cid, "loras", j, "file")
            weight = entry.get("weight")
            if isinstance(weight, (int, float)) and weight == 0:
                warn(("characters", cid, "loras", j, "weight"),
                     "LoRA weight 0 has no effect")
            fname = entry.get("file")
            if isinstance(fname, str) and check_files:
                _check_file(fname, base_dir, LORA_SUFFIXES, "LoRA file", loc, error)

    model = data.get("model")
    model = model_shorthand(model)
    if isinstance(model, dict) and check_files and isinstance(model.get("path"), str):
        loc = ("model", "path") if isinstance(data.get("model"), dict) else ("model",)
        check_model_path(model["path"], base_dir, loc, error)
    config = model.get("config") if isinstance(model, dict) else None
    if isinstance(config, str) and check_files and not REPO_RE.fullmatch(config):
        if not (base_dir / Path(config).expanduser() / "model_index.json").is_file():
            error(("model", "config"), f"config folder {config!r} is not a diffusers model "
                  "folder (no model_index.json)", "give a repo id like 'owner/name', or a "
                  "folder saved with save_pretrained")

    layout = data.get("layout")
    if isinstance(layout, dict) and isinstance(layout.get("font"), str) and check_files:
        _check_file(layout["font"], base_dir, FONT_SUFFIXES, "font file", ("layout", "font"),
                    error)

    # Bidirectional controls: an error in ids (the schema's, and above); in any other text a
    # warning, for the text may show differently from what the model gets.
    for loc, text in _texts(data):
        found = list(dict.fromkeys(_BIDI_RE.findall(text)))
        if found and not _names_an_id(loc):
            what = "bidirectional controls" if found[1:] else "a bidirectional control"
            warn(loc, f"contains {', '.join(map(char_name, found))}, {what}: the text may "
                      "show differently from what the model gets",
                 "remove it, unless this text is right-to-left and needs it; it is invisible "
                 "in most editors")


_BIDI_RE = re.compile("[" + "".join(sorted(BIDI_CONTROLS)) + "]")


def _texts(data: Any) -> Any:
    """(location, text) of every text value in the story, without recursion."""
    pending: list[tuple[Loc, Any]] = [((), data)]
    while pending:
        loc, value = pending.pop()
        if isinstance(value, str):
            yield loc, value
        elif isinstance(value, dict):
            pending.extend(((*loc, k), v) for k, v in value.items())
        elif isinstance(value, list):
            pending.extend(((*loc, i), v) for i, v in enumerate(value))


def _names_an_id(loc: Loc) -> bool:
    """Whether the text at ``loc`` is an id, or names one: checked as such elsewhere."""
    return loc[:1] == ("panels",) and len(loc) >= 3 and loc[2] in ("id", "characters")


def _check_train(cid: str, char: dict, base_dir: Path, error, warn, *,
                 check_files: bool) -> None:
    """A `train:` section: its pictures folder exists, and the character has what captions and
    prior preservation need (a token; a class)."""
    train = char["train"]
    here: Loc = ("characters", cid, "train")
    token, class_word = char.get("token"), char.get("class")
    if not (isinstance(token, str) and token.strip()):
        error(here, f"character {cid!r} is trained but has no `token`",
              "add e.g. `token: ohwx`: a rare word the LoRA learns as this character, and that "
              "its prompts and captions carry", key=True)
    if not (isinstance(class_word, str) and class_word.strip()):
        prior = train.get("prior_preservation") if isinstance(train, dict) else None
        if prior is True or isinstance(prior, dict):
            error((*here, "prior_preservation"), "prior preservation needs the character's "
                  "`class`", "its class pictures show a plain <class>, e.g. `class: girl`",
                  key=True)
        else:
            warn(here, f"character {cid!r} is trained without a `class`", "a class word (e.g. "
                 "`class: girl`) tells the model what kind of thing the token is", key=True)
    folder = train if isinstance(train, str) else train.get("images") \
        if isinstance(train, dict) else None
    if isinstance(train, dict):
        weight = train.get("weight")
        if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight == 0:
            warn((*here, "weight"), "LoRA weight 0 has no effect")
    if isinstance(folder, str) and check_files:
        loc: Loc = here if isinstance(train, str) else (*here, "images")
        check_images_folder(folder, base_dir, loc, error)


def check_images_folder(fname: str, base_dir: Path, loc: Loc, error) -> None:
    """A `train.images` folder: there, and a folder."""
    path = base_dir / Path(fname).expanduser()
    if path.is_dir():
        return
    if path.exists():
        error(loc, f"images {fname!r} is a file, not a folder",
              "give the folder the character's pictures are in")
        return
    hint = None
    if path.parent.is_dir():
        hint = did_you_mean(path.name, [p.name for p in path.parent.iterdir() if p.is_dir()])
    error(loc, f"images folder not found: {fname!r} (looked in {_shown(path.parent)})",
          hint or "paths are relative to the story file")


def _check_file(fname: str, base_dir: Path, suffixes: tuple[str, ...], what: str, loc: Loc,
                error) -> None:
    path = base_dir / Path(fname).expanduser()
    problem = file_problem(path)
    if not fname.lower().endswith(suffixes):
        error(loc, f"{what} {fname!r} has an unsupported type",
              f"expected one of {', '.join(suffixes)}")
    elif problem and problem != MISSING:
        error(loc, f"{what} {fname!r}: {problem}")
    elif problem:
        hint = None
        parent = path.parent
        if parent.is_dir():
            hint = did_you_mean(path.name, [p.name for p in parent.iterdir()
                                            if p.name.lower().endswith(suffixes)])
        error(loc, f"{what} not found: {fname!r} (looked in {_shown(parent)})",
              hint or "paths are relative to the story file")


def check_model_path(fname: str, base_dir: Path, loc: Loc, error) -> None:
    path = base_dir / Path(fname).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            error(loc, f"model folder {fname!r} has no model_index.json",
                  "point `path` at a diffusers folder (saved with save_pretrained) or a "
                  "single .safetensors checkpoint")
    elif (problem := file_problem(path)) is None:
        if not fname.lower().endswith(CHECKPOINT_SUFFIXES):
            error(loc, f"model file {fname!r} is not a .safetensors or .ckpt checkpoint")
    elif problem != MISSING:
        error(loc, f"model {fname!r}: {problem}")
    else:
        error(loc, f"model not found: {fname!r} (looked in {_shown(path.parent)})",
              "paths are relative to the story file; for a Hugging Face model use `repo:`")


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else (rel if rel != "." else "./")
