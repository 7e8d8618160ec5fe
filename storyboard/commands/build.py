"""`storyboard build`: story file in; panels, pages, a PDF and a manifest out. Like `make`.

In: a story path, an output folder, a selection, ``RuntimeOptions``. Out: a ``BuildReport``
(counts, per-panel status, the files written, what the engine did, the exit code) and, in the
output folder:
  panels/<panel-id>.png   each panel, with its generation parameters inside
  page-1.png, ...         the composed, captioned pages
  story.pdf               all pages, for print
  story.cbz               all pages, for comic readers
  manifest.json           what this run did (output/manifest.py)

``build`` reads top to bottom: load, validate and compile; select; train the characters' LoRAs
the selected panels wait for (`train:`; ``commands.train``); look up the cache; render what
is missing (the model is loaded only if something is); put the panels in place; compose the
pages; write the manifest. Every rendered panel goes into the cache the moment it exists, so an
interrupted build keeps its work and the next one resumes where it stopped.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..options import RuntimeOptions
from ..output.cache import PanelCache, cache_key
from ..output.cbz import CBZ
from ..output.geometry import page_count
from ..output.manifest import (
    MANIFEST, PDF, manifest_record, pages_key, previous_pages, write_manifest,
)
from ..output.ownership import Outputs, digests
from ..output.place import materialize
from ..paths import leftover_temporaries, remove_temporaries
from ..story import Story
from .common import Event, awaiting_training, hold, refuse_untrained, select, start, verified
from .rendering import PanelOutcome, render_into_cache
from .reroll import REROLLS_DIR, reroll_keys
from .train import train_first

if TYPE_CHECKING:
    from ..engine.session import RenderInfo, Session
    from ..plan import PanelJob

PANELS_DIR = "panels"


@dataclass
class BuildReport:
    """What a build did; owns the counts and the exit code."""

    story: Path
    out_dir: Path
    outcomes: list[PanelOutcome] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    render: RenderInfo | None = None  # what the engine did; None when nothing was rendered

    @property
    def model_loaded(self) -> bool:
        return self.render is not None

    @property
    def speedups(self) -> list[str]:
        return [str(s) for s in self.render.speedups] if self.render else []

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("rendered", "cached", "failed", "missing")
                 if self.count(s) or s in ("rendered", "cached")]
        return (f"{len(self.outcomes)} panels: {', '.join(parts)} in {self.seconds:.1f}s "
                f"-> {self.out_dir}")


def build(story_path: str | Path, out_dir: str | Path | None = None, *,
          only: Iterable[str] | None = None, force: bool = False,
          options: RuntimeOptions | None = None, pages: bool = True,
          on_event: Event | None = None, cache: PanelCache | None = None,
          model: str | None = None, session: Session | None = None,
          train: bool = True) -> BuildReport:
    t0 = time.perf_counter()
    # 1. Load, validate and compile: every problem is reported before any work starts.
    run = start(story_path, out_dir, options, on_event, cache, model)
    out, cache, emit, jobs = run.out, run.cache, run.emit, run.jobs
    # Held until the end: one build at a time in this output folder, and `clean` waits.
    with hold(run, emit):
        report = BuildReport(story=run.story_path, out_dir=out)

        # 2. Select; and refuse, before any work, to write over files storyboard did not write.
        selected = {job.panel for job in select(jobs, only)}
        # Held alone, the folder has no write under way: a temporary file is a killed run's.
        # Only in storyboard's own places: the folder may be someone's home directory.
        remove_temporaries([tmp for folder in (out, out / PANELS_DIR,
                                               *(out / REROLLS_DIR).glob("*/"))
                            for tmp in leftover_temporaries(folder)])
        outputs = Outputs.read(out)
        page_names = [f"page-{n}.png" for n in range(
            1, page_count(len(jobs), run.story.spec.layout) + 1)] + [PDF, CBZ] if pages else []
        outputs.claim([f"{PANELS_DIR}/{job.panel}.png" for job in jobs
                       if pages or job.panel in selected] + page_names + [MANIFEST])

        # 3. Train the LoRAs the selected panels wait for (`train:`), then compile them with
        #    the trained files; with `train=False` (--no-train), refuse instead.
        if awaiting_training(job for job in jobs if job.panel in selected):
            if not train:
                refuse_untrained([job for job in jobs if job.panel in selected],
                                 run.story_path, "a build with --no-train")
            run = train_first(run, selected, force=False)
            jobs = run.jobs

        # 4. Look up the cache; a damaged entry is reported and rendered again.
        keys = {job.panel: cache_key(job.hash, run.options.dtype) for job in jobs}
        sound = {job.panel: verified(cache, keys[job.panel], job.panel, emit) for job in jobs}
        todo = [job for job in jobs if job.panel in selected
                and (force or sound[job.panel] is None)]
        emit({"event": "plan", "panels": len(jobs), "selected": len(selected),
              "to_render": [job.panel for job in todo]})

        # 5. Render what is missing; the model is loaded only when something is. Meanwhile
        #    each page is composed as soon as its panels are in (``output.compose``), so the
        #    build ends soon after its last panel.
        chars = page_chars(run.story) if pages else ""
        index = {job.panel: job.index for job in jobs}
        panel_dir = out / PANELS_DIR
        placed: dict[str, Future] = {}  # panel id -> its copy in `panels/`, made as it lands
        with ExitStack() as stack:
            composer = stack.enter_context(page_composer(run.story, jobs, out, run.story_id,
                                                         chars)) if pages and todo else None
            if composer is not None:
                waiting = {job.panel for job in todo}
                for job in jobs:
                    if job.panel not in waiting and sound[job.panel] is not None:
                        composer.arrived(job.index, sound[job.panel])
            # Each copy is synced to disk: done on threads as panels land, not all after the
            # last one (40 SDXL panels waited seconds for it).
            placer = stack.enter_context(ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="storyboard-place"))

            def landed(job: PanelJob) -> None:
                if composer is not None:
                    composer.arrived(index[job.panel], cache.path(keys[job.panel]))
                if pages or job.panel in selected:
                    placed[job.panel] = placer.submit(
                        materialize, cache.path(keys[job.panel]),
                        panel_dir / f"{job.panel}.png", job, run.story_id)

            def progress(event: dict) -> None:
                if composer is not None and event["event"] == "model_loaded":
                    composer.begin()  # deferred until now: see PageComposer.begin
                emit(event)

            rendered, report.render = render_into_cache(
                todo, cache, run.options, progress, story=run.story_id,
                dtype_override=run.options.dtype, session=session, on_panel=landed)

            # 6. Put every available panel in place, in story order.
            for job in jobs:
                done = rendered.get(job.hash) if job.panel in selected else None
                if done is not None:
                    outcome = PanelOutcome(job, done.status, done.seconds, done.error)
                else:
                    status = "cached" if sound[job.panel] else "missing"
                    outcome = PanelOutcome(job, status)
                if outcome.status in ("rendered", "cached") and (pages or job.panel in selected):
                    outcome.path = placed[job.panel].result() if job.panel in placed else \
                        materialize(cache.path(keys[job.panel]), panel_dir / f"{job.panel}.png",
                                    job, run.story_id)
                report.outcomes.append(outcome)

            # 7. Compose pages (missing panels show as placeholders), unless nothing they show
            #    changed.
            key = pages_key(run.story, report.outcomes)
            if pages:
                t_pages = time.perf_counter()
                previous = previous_pages(out, key)
                if previous is not None:
                    report.files += previous
                elif composer is not None:
                    report.files += composer.finish(
                        lambda i: report.outcomes[i].path is not None)
                else:
                    report.files += compose_story_pages(run.story, report.outcomes, out,
                                                        run.story_id, chars)
                _remove_stale_pages(out, report.files, outputs)
                emit({"event": "pages", "files": [p.name for p in report.files],
                      "seconds": round(time.perf_counter() - t_pages, 3),
                      **({"parts": composer.timings} if composer and composer.timings else {})})

        # 8. Record: the manifest, and which cache entries this story now needs.
        report.seconds = time.perf_counter() - t0
        cache.set_roots(run.story_path, set(keys.values()) | reroll_keys(out))
        write_manifest(out, manifest_record(
            story=run.story, story_path=run.story_path, out_dir=out, outcomes=report.outcomes,
            files=report.files, seconds=report.seconds, model_loaded=report.model_loaded,
            speedups=report.speedups, options=run.options, pages_key=key if pages else None,
            digests=outputs.kept() | digests(
                out, [o.path for o in report.outcomes if o.path] + report.files)))
        report.files.append(out / MANIFEST)
        emit({"event": "done", "rendered": report.count("rendered"),
              "cached": report.count("cached"), "failed": report.count("failed"),
              "missing": report.count("missing"), "seconds": round(report.seconds, 2)})
        return report


def _remove_stale_pages(out: Path, pages: list[Path], outputs: Outputs) -> None:
    """A story that got shorter leaves no orphan pages behind; only storyboard's own go."""
    for stale in sorted(set(out.glob("page-*.png")) - set(pages)):
        if stale.stem.removeprefix("page-").isdigit() and outputs.owns(stale.name):
            stale.unlink(missing_ok=True)


def compose_story_pages(story: Story, outcomes: list[PanelOutcome], out: Path,
                        story_id: str, chars: str = "") -> list[Path]:
    """The story's pages from its panels' files (a placeholder where a panel is missing);
    ``chars``: the PDF fonts' characters (``page_chars``)."""
    from PIL import Image

    from ..output.compose import write_pages
    from ..output.pages import Cell, plan_pages

    cells = []
    for n, outcome in enumerate(outcomes, 1):
        image = None
        if outcome.path is not None:
            with Image.open(outcome.path) as im:
                image = im.convert("RGB")
        cells.append(Cell(outcome.job.panel, n, image, outcome.job.caption,
                          tuple(story.spec.panels[outcome.job.index].balloons)))
    return write_pages(plan_pages(cells, _layout(story), story.spec.title), out, story_id,
                       chars)


def page_chars(story: Story) -> str:
    """Every character the story's pages can show (``pdf.story_chars``)."""
    from ..output.pdf import story_chars

    spec = story.spec
    title = spec.layout.title if isinstance(spec.layout.title, str) else spec.title
    return story_chars([title or "", *(p.caption or "" for p in spec.panels),
                        *(p.id for p in spec.panels),
                        *(b.text for p in spec.panels for b in p.balloons)])


def page_composer(story: Story, jobs: list[PanelJob], out: Path, story_id: str,
                  chars: str):
    """A ``compose.PageComposer`` for ``story``'s pages (its panels' slots from their jobs),
    deferred: the build begins it once its model is loaded (``PageComposer.begin``)."""
    from ..output.compose import PageComposer, Slot

    slots = [Slot(job.panel, n, job.caption, tuple(story.spec.panels[job.index].balloons),
                  (job.width, job.height)) for n, job in enumerate(jobs, 1)]
    return PageComposer(slots, _layout(story), story.spec.title, story_id, out, chars,
                        defer=True)


def _layout(story: Story):
    layout = story.spec.layout
    if layout.font:  # relative to the story file, like every path in it
        layout = layout.model_copy(update={"font": str(story.resolve(layout.font))})
    return layout
