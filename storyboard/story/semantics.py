"""What a schema cannot check: cross-references, the file system, warnings.

In: a story's plain data (read defensively: the schema pass may have failed on any part of it),
its ``SourceDoc`` and the folder relative paths start from. Out: problems added to a
``Diagnostics``: unknown or duplicate ids, unknown characters and samplers, missing LoRA, model
and font files (with did-you-mean hints from the folder), and warnings such as a character that
appears in no panel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ERROR, WARNING, Diagnostics, Loc, did_you_mean, show_value
from ..samplers import canonical_sampler, sampler_names
from .schema import (
    CHECKPOINT_SUFFIXES,
    FONT_SUFFIXES,
    ID_RE,
    LORA_SUFFIXES,
    REPO_RE,
    WINDOWS_RESERVED,
    model_shorthand,
)
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
                    error(("panels", i, "id"), f"duplicate panel id {pid!r} (first used on line "
                                               f"{first})", "every panel needs its own id")
                else:
                    error(("panels", i, "id"), f"panel id {pid!r} differs from {other!r} (line "
                                               f"{first}) only in case",
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
                    error(loc, f"unknown character {cid!r}", hint)
                elif cid in listed:
                    error(loc, f"character {cid!r} is listed twice")
                listed.add(cid)
                used.add(cid)

    for cid, char in characters.items():
        if not isinstance(cid, str) or not ID_RE.fullmatch(cid) \
                or cid.lower() in WINDOWS_RESERVED:
            error(("characters", str(cid)), f"invalid character id {show_value(cid)}: use 1-64 "
                  "letters, digits, '-' or '_', starting with a letter or digit",
                  "ids name LoRA adapters and files, so dots, slashes and spaces are not "
                  "allowed", key=True)
        elif cid not in used:
            warn(("characters", cid), f"character {cid!r} is defined but appears in no panel",
                 key=True)
        if not isinstance(char, dict):
            continue
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


def _check_file(fname: str, base_dir: Path, suffixes: tuple[str, ...], what: str, loc: Loc,
                error) -> None:
    path = base_dir / Path(fname).expanduser()
    if not fname.lower().endswith(suffixes):
        error(loc, f"{what} {fname!r} has an unsupported type",
              f"expected one of {', '.join(suffixes)}")
    elif path.exists() and not path.is_file():  # never opened: a FIFO would block
        error(loc, f"{what} {fname!r} is not a regular file (a folder, pipe or device)")
    elif not path.is_file():
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
    elif path.is_file():
        if not fname.lower().endswith(CHECKPOINT_SUFFIXES):
            error(loc, f"model file {fname!r} is not a .safetensors or .ckpt checkpoint")
    elif path.exists():  # never opened: a FIFO would block
        error(loc, f"model file {fname!r} is not a regular file (a pipe or device)")
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
