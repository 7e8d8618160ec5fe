"""`storyboard render --from-png`: render again the job a storyboard panel PNG records.

In: a PNG written by storyboard, an optional output folder, ``RuntimeOptions``. Out: a
``RerenderReport`` and the panel rendered again (``NAME.rerender.png`` beside the PNG, or
``OUT/panels/<id>.png``), through the same cache as a build. The record is input like a story:
its job is rebuilt and its hash computed, never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..options import RuntimeOptions
from ..output.cache import PanelCache, cache_key
from ..output.ownership import Outputs
from ..output.place import materialize
from ..output.pnginfo import job_from_record, read_panel_png
from ..plan import PanelJob
from .common import Event
from .rendering import PanelOutcome, render_into_cache

if TYPE_CHECKING:
    from ..engine.session import Session


@dataclass
class RerenderReport:
    outcome: PanelOutcome
    target: Path | None

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome.status == "rendered" else 1


def job_from_png(path: Path) -> tuple[PanelJob, str | None]:
    """The job a panel PNG records, and the story it names."""
    try:
        _, record = read_panel_png(path)  # validated like a story's panel (story/records.py)
    except OSError as exc:
        raise UserError(f"{path}: not a readable PNG ({exc.strerror or exc})") from None
    if record is None:
        raise UserError(f"{path} was not made by storyboard (no storyboard record in it)")
    job = job_from_record(record)
    if job.hash != record.hash or job.hash != record.job.hash:
        raise UserError(f"{path}: its storyboard record does not match its hash (edited by "
                        "hand, or made by an incompatible storyboard version)")
    for lora in job.loras:
        if not Path(lora.path).is_file():
            raise UserError(f"{path} needs LoRA {lora.path}, which is not there any more")
    return job, record.story


def rerender(png: str | Path, out: str | Path | None = None, *,
             options: RuntimeOptions | None = None, on_event: Event | None = None,
             cache: PanelCache | None = None, session: Session | None = None) -> RerenderReport:
    png = Path(png)
    options = options or RuntimeOptions()
    emit = on_event or (lambda event: None)
    job, origin = job_from_png(png)
    target = Path(out) / "panels" / f"{job.panel}.png" if out else png.with_suffix(
        ".rerender.png")
    Outputs.read(target.parent).claim([target.name])  # never over a file that is not ours
    cache = cache or PanelCache.default()
    emit({"event": "plan", "panels": 1, "selected": 1, "to_render": [job.panel]})
    done, _ = render_into_cache([job], cache, options, emit, story=origin,
                                dtype_override=options.dtype, session=session)
    outcome = done[job.hash]
    if outcome.status != "rendered":
        return RerenderReport(outcome, None)
    outcome.path = materialize(cache.path(cache_key(job.hash, options.dtype)), target, job,
                               origin or "")
    return RerenderReport(outcome, outcome.path)
