"""Contact sheets of a training: the character's panels drawn with its LoRA as it is now.

In: the story (its compiled panel jobs), a ``TrainJob``, the output folder, and, during the
training, the trainer's ``CheckpointView``s. Out: ``OUT/training/<character>/step-000250.png``
(``training.store.checkpoint_name``) at every checkpoint and at the last step: the story's
panels that include the character (the first ``MAX_SHEET_PANELS`` in story order; a picture of
"<token> <class>" when it is in none), rendered with the training's live pipeline
(``engine.training.preview``), labelled with their panel ids on a contact sheet that carries
storyboard's mark; a ``train_sheet`` event with each sheet's path.

Nothing of the user's is lost: every sheet name is claimed (``output.ownership.Outputs``) before
any training starts, and a name someone fills during the hours a training takes is checked
again before its sheet is written (skipped with a warning, not overwritten). The sheets live in
their own folder, which no build writes or sweeps, so a training does not hold the output
folder's lock. Sheets of another training of the character (another key, or all of them with
``--force``) are removed when it starts, so a folder never mixes two trainings; only files
storyboard wrote. A sheet that cannot be drawn (the GPU short of memory for a panel, say) is a
warning: it never costs the training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..output.ownership import PAGE_MARK, Outputs
from ..output.pnginfo import png_text
from ..paths import atomic_write_bytes
from ..plan.jobs import PanelJob, with_hash
from ..story.records import RecordError
from ..training.jobs import CLASS_RENDER, TrainJob
from ..training.store import checkpoint_name
from .common import Event

SHEETS_DIR = "training"
# Panels per sheet: enough to see the character in several settings, few enough that drawing
# a sheet costs seconds, not minutes, of a training's time.
MAX_SHEET_PANELS = 8


@dataclass(frozen=True)
class Sheets:
    """One training's contact sheets: where they go and what they show."""

    out: Path  # the story's output folder
    story: str  # the story's absolute path, as marks name it
    job: TrainJob
    panels: tuple[PanelJob, ...]

    @property
    def folder(self) -> Path:
        return self.out / SHEETS_DIR / self.job.character

    def steps(self) -> list[int]:
        """The steps the trainer calls back at: every ``checkpoint_every`` and the last."""
        s = self.job.settings
        return sorted({*range(s.checkpoint_every, s.steps + 1, s.checkpoint_every), s.steps})

    def name(self, step: int) -> str:
        """A sheet's name relative to the output folder."""
        return f"{SHEETS_DIR}/{self.job.character}/{checkpoint_name(step)}.png"

    def names(self) -> list[str]:
        return [self.name(step) for step in self.steps()]


def plan_sheets(out: Path, story: str, job: TrainJob, panels: list[PanelJob]) -> Sheets:
    """The sheets of ``job``'s training, showing its character's panels among ``panels``."""
    mine = [p for p in panels if job.character in p.characters][:MAX_SHEET_PANELS]
    if not mine:  # in no panel yet: the character alone, as its captions name it
        prompt = " ".join(t for t in (job.token, job.class_word) if t)
        size = job.settings.resolution
        mine = [with_hash(PanelJob(
            panel=prompt, index=0, prompt=prompt, negative_prompt="", seed=job.settings.seed,
            seed_derived=False, width=size, height=size, steps=CLASS_RENDER["steps"],
            guidance=CLASS_RENDER["guidance"], scheduler=CLASS_RENDER["scheduler"],
            model=job.model, loras=(), characters=(job.character,), caption=prompt))]
    return Sheets(out, story, job, tuple(mine))


def claim(sheets: list[Sheets], force: bool) -> None:
    """Refuse, before any training, to write over a file storyboard did not write; then
    remove the sheets of other trainings of these characters (module docstring)."""
    if not sheets:
        return
    outputs = Outputs.read(sheets[0].out)
    outputs.claim([name for s in sheets for name in s.names()])
    for s in sheets:
        for path in sorted(s.folder.glob("step-*.png")) if s.folder.is_dir() else []:
            name = f"{SHEETS_DIR}/{s.job.character}/{path.name}"
            if (force or _training_key(path) != s.job.key) and outputs.owns(name):
                path.unlink(missing_ok=True)


def drawer(sheets: Sheets, emit: Event):
    """The trainer's ``on_checkpoint``: draws and writes the sheet of each checkpoint."""

    def draw(view) -> None:
        name = sheets.name(view.step)
        path = sheets.out / name
        try:
            from ..engine.training.preview import render_previews
            from ..output.pages import contact_sheet, page_png

            images = render_previews(view.pipeline, sheets.panels)
            if not Outputs.read(sheets.out).owns(name):  # someone's file arrived meanwhile
                emit({"event": "warning", "message": f"{path}: storyboard did not write this "
                      f"file, so the contact sheet of step {view.step} was not drawn over it"})
                return
            mark = json.dumps({"story": sheets.story, "character": sheets.job.character,
                               "training": sheets.job.key, "step": view.step,
                               "steps": view.steps}, ensure_ascii=False, sort_keys=True)
            atomic_write_bytes(path, page_png(contact_sheet(
                [(p.panel, im) for p, im in zip(sheets.panels, images)]), mark))
        except Exception as exc:  # noqa: BLE001 - a sheet is a view on the training, never its end
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            emit({"event": "warning", "message": f"the contact sheet of "
                  f"{sheets.job.character} at step {view.step} was not drawn: "
                  f"{type(exc).__name__}: {first}"})
            return
        emit({"event": "train_sheet", "character": sheets.job.character, "step": view.step,
              "path": str(path)})

    return draw


def _training_key(path: Path) -> str | None:
    """The training key a sheet's mark names, or None (not a sheet's mark, or unreadable)."""
    try:
        mark = json.loads(png_text(path, keys=(PAGE_MARK,)).get(PAGE_MARK, ""))
    except (OSError, RecordError, ValueError):
        return None
    return mark.get("training") if isinstance(mark, dict) else None
