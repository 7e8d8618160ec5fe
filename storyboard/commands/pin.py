"""`storyboard pin`: keep a seed. Writes it into the story, changing nothing else in the file.

In: a story path, a panel id, a seed. Out: a ``PinReport``: where the seed went, what it
replaced, and whether that panel is already rendered (then the next build only places it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..output.cache import PanelCache
from ..story.edit import PinResult, pin_seed
from .common import load_and_compile


@dataclass(frozen=True)
class PinReport:
    edit: PinResult
    cached: bool  # the panel with this seed is in the cache already


def pin(story: str | Path, panel: str, seed: int, *, cache: PanelCache | None = None) -> PinReport:
    edit = pin_seed(story, panel, seed)
    _, jobs = load_and_compile(story, look_up_trained=False)  # seeds only
    job = next(j for j in jobs if j.panel == panel)
    return PinReport(edit, (cache or PanelCache.default()).get(job.hash) is not None)
