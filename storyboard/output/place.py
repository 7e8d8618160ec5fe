"""Put a cached panel where a story's output wants it.

In: a cache entry, a destination (``OUT/panels/<id>.png``, a reroll candidate), the job and the
story it is for. Out: the destination file, written atomically: the cached bytes as they are
when the PNG's record already names this panel and story, else re-labelled (same pixels, a
record for this panel and story). A destination that already holds exactly this, undamaged, is
left alone.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import atomic_write_bytes
from ..plan.jobs import PanelJob
from ..story.records import PanelRecord
from .cache import entry_problem
from .pnginfo import read_panel_png, relabel


def materialize(source: Path, target: Path, job: PanelJob, story: str) -> Path:
    """Copy a cached PNG to ``target``, re-labelled for this story and panel if needed."""
    if target.is_file():
        # A damaged file (cut short by a kill or a full disk) is written again below.
        if entry_problem(target, target.stat(), job.hash) is None \
                and _names(read_panel_png(target)[1], job, story):
            return target
    if _names(read_panel_png(source)[1], job, story):
        data = source.read_bytes()
    else:
        data = relabel(source, job, story)
    atomic_write_bytes(target, data)
    return target


def _names(record: PanelRecord | None, job: PanelJob, story: str) -> bool:
    """Whether a (sound) panel PNG's record already says it is this panel of this story."""
    return record is not None and (record.hash, record.panel, record.story) == (
        job.hash, job.panel, story)
