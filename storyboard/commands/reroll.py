"""`storyboard reroll`: candidates of one panel with other seeds, and a contact sheet.

In: a story, a panel id, seeds (``parse_seeds``: "100-107", "1,5,9"), ``RuntimeOptions``. Out:
a ``RerollReport`` and ``OUT/rerolls/<panel>/seed-<N>.png`` for each seed plus ``sheet.png``, a
numbered contact sheet. The story's pages are not touched; `storyboard pin` keeps the one you
like. ``reroll_keys`` tells `clean` which cache entries the candidates in a folder came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..options import RuntimeOptions
from ..output.cache import PanelCache, cache_key
from ..output.ownership import Outputs, page_mark
from ..output.place import materialize
from ..output.pnginfo import read_panel_png
from ..paths import atomic_write_bytes
from ..plan import with_hash
from ..story.records import RecordError
from .common import Event, hold, refuse_untrained, select, start, verified
from .rendering import PanelOutcome, render_into_cache

if TYPE_CHECKING:
    from ..engine.session import Session

REROLLS_DIR = "rerolls"
SHEET = "sheet.png"
MAX_REROLLS = 64


def parse_seeds(text: str) -> list[int]:
    """`100-107`, `1,5,9`, `1-3,7` -> seeds, in order, without repeats."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if not part.isascii():  # int() reads Arabic-Indic and other digits too
                raise ValueError
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                a, b = int(lo), int(hi)
                if b < a or b - a >= MAX_REROLLS:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UserError(f"--seeds: cannot read {part!r}; write a range like 100-107 "
                            f"(at most {MAX_REROLLS} seeds) or a list like 1,5,9") from None
    seeds = list(dict.fromkeys(seeds))
    if not seeds or len(seeds) > MAX_REROLLS or any(not 0 <= s < 2**64 for s in seeds):
        raise UserError(f"--seeds: give 1 to {MAX_REROLLS} seeds between 0 and 2**64-1")
    return seeds


@dataclass
class RerollReport:
    panel: str
    folder: Path
    candidates: list[tuple[int, PanelOutcome]]
    sheet: Path | None
    seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if any(o.status == "failed" for _, o in self.candidates) else 0


def reroll(story_path: str | Path, panel: str, seeds: list[int], out_dir=None, *,
           options: RuntimeOptions | None = None, on_event: Event | None = None,
           cache: PanelCache | None = None, model: str | None = None,
           session: Session | None = None) -> RerollReport:
    """Render candidates of one panel with other seeds, without touching the pages."""
    t0 = time.perf_counter()
    run = start(story_path, out_dir, options, on_event, cache, model)
    with hold(run, run.emit):  # the output folder alone, the cache shared
        cache, dtype = run.cache, run.options.dtype
        (base,) = select(run.jobs, [panel])
        refuse_untrained([base], run.story_path, "reroll")
        candidates = [with_hash(replace(base, seed=seed, seed_derived=False, hash=""))
                      for seed in seeds]
        folder = run.out / REROLLS_DIR / panel
        Outputs.read(run.out).claim(
            [str((folder / name).relative_to(run.out))
             for name in [*(f"seed-{job.seed}.png" for job in candidates), SHEET]])
        todo = [job for job in candidates
                if verified(cache, cache_key(job.hash, dtype), f"{panel} (seed {job.seed})",
                            run.emit) is None]
        rendered, _ = render_into_cache(todo, cache, run.options, run.emit, story=run.story_id,
                                        dtype_override=dtype, session=session)

        results = []
        images = []
        from PIL import Image

        for job in candidates:
            done = rendered.get(job.hash)
            outcome = PanelOutcome(job, done.status if done else "cached",
                                   done.seconds if done else 0.0, done.error if done else None)
            if outcome.status != "failed":
                outcome.path = materialize(cache.path(cache_key(job.hash, dtype)),
                                           folder / f"seed-{job.seed}.png", job, run.story_id)
                with Image.open(outcome.path) as im:
                    images.append((f"seed {job.seed}", im.convert("RGB")))
            results.append((job.seed, outcome))

        sheet = None
        if images:
            from ..output.pages import contact_sheet, page_png

            sheet = folder / SHEET
            atomic_write_bytes(sheet, page_png(contact_sheet(images),
                                               page_mark(run.story_id, 1, 1)))
        cache.set_roots(run.story_path, {cache_key(j.hash, dtype) for j in run.jobs}
                        | reroll_keys(run.out))
        return RerollReport(panel, folder, results, sheet, time.perf_counter() - t0)


def reroll_keys(out: Path) -> set[str]:
    """Cache keys of the reroll candidates present in ``out``: kept until their files go. A
    candidate rendered under `--dtype` names its entry in its record (``cache_key``); the
    others' entries are named by their job hash."""
    keys = set()
    folder = out / REROLLS_DIR
    for png in folder.glob("*/seed-*.png") if folder.is_dir() else []:
        try:
            _, record = read_panel_png(png)
        except (OSError, RecordError):
            continue  # not a candidate storyboard can use: it keeps no cache entry alive
        if record is not None:
            keys.add(record.cache_key or record.hash)
    return keys
