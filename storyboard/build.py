"""`storyboard build`: story file in; panels, pages, a PDF and a manifest out. Like `make`.

In: a story path, an output folder, a selection, runtime options. Out: a ``BuildReport`` (counts,
per-panel status, the files written, the exit code) and, in the output folder:
  panels/<panel-id>.png   each panel, with its generation parameters inside
  page-1.png, ...         the composed, captioned pages
  story.pdf               all pages
  manifest.json           what this run did (MANIFEST_SCHEMA_VERSION)

``build`` reads top to bottom: load and validate, compile, select, look up the cache, render what
is missing (the model is loaded only if something is), put the panels in place, compose the
pages, write the manifest. Every rendered panel goes into the cache the moment it exists, so an
interrupted build keeps its work and the next one resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .cache import PanelCache, cache_key
from .compile import PanelJob, _with_hash, compile_story
from .errors import UserError, did_you_mean
from .fsutil import atomic_write_bytes, atomic_write_text
from .spec import Story, load_story
from .tokens import prompt_warnings

MANIFEST = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
PANELS_DIR = "panels"
REROLLS_DIR = "rerolls"
MAX_REROLLS = 64
MAX_PENDING_WRITES = 16  # rendered panels waiting for the PNG writer (about 3 MB each at 1024²)

Event = Callable[[dict[str, Any]], None]


@dataclass
class PanelOutcome:
    job: PanelJob
    status: str  # rendered | cached | failed | missing (not selected and never rendered)
    seconds: float = 0.0
    error: str | None = None
    path: Path | None = None


@dataclass
class BuildReport:
    story: Path
    out_dir: Path
    outcomes: list[PanelOutcome] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    model_loaded: bool = False
    speedups: list[str] = field(default_factory=list)  # what the renderer applied, if it ran

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


def default_out_dir(story: Path) -> Path:
    """`story.yaml` builds into `story.out/` beside it."""
    return story.with_name(story.stem + ".out")


def load_and_compile(path: Path, model: str | None = None) -> tuple[Story, list[PanelJob]]:
    """Load, validate and compile; ``model`` replaces the story's model (e.g. `tiny-kolors`
    to try a story offline), validated like the story's own."""
    story = load_story(path)
    if model:
        story.spec = story.spec.model_copy(update={"model": _model_override(model, story)})
    jobs = compile_story(story)
    story.warnings = sorted(story.warnings + prompt_warnings(story, jobs),
                            key=lambda p: (p.line or 0, p.col or 0))
    return story, jobs


def _model_override(model: str, story: Story):
    from pydantic import ValidationError

    from .spec import ModelSpec, _check_model_path, _model_shorthand

    try:
        spec = ModelSpec.model_validate(_model_shorthand(model))
    except ValidationError as exc:
        raise UserError(f"--model {model!r}: {exc.errors()[0]['msg']}") from None
    if spec.path:
        problems: list[str] = []
        _check_model_path(spec.path, Path.cwd(), (), lambda loc, msg, hint=None: problems.append(
            msg + (f" ({hint})" if hint else "")))
        if problems:
            raise UserError(f"--model: {problems[0]}")
        spec = spec.model_copy(update={"path": str(Path(spec.path).resolve())})
    return spec


def select(jobs: list[PanelJob], only: Iterable[str] | None) -> list[PanelJob]:
    if not only:
        return jobs
    wanted = list(dict.fromkeys(only))
    known = {job.panel for job in jobs}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise UserError(f"no panel named {', '.join(map(repr, unknown))} in this story; "
                        + (hint or f"panels: {', '.join(j.panel for j in jobs)}"))
    return [job for job in jobs if job.panel in wanted]


@dataclass
class _Run:
    """What every command that renders from a story starts with."""

    story_path: Path
    out: Path
    cache: PanelCache
    dtype_override: str | None
    emit: Event
    story: Story
    jobs: list[PanelJob]
    options: object


def _start(story_path: str | Path, out_dir, options, on_event: Event | None,
           cache: PanelCache | None, model: str | None) -> _Run:
    """Load, validate and compile (every problem reported before any work starts), and report
    the story's warnings."""
    emit = on_event or (lambda event: None)
    story_path = Path(story_path)
    story, jobs = load_and_compile(story_path, model)
    for warning in story.warnings:
        emit({"event": "warning", "message": warning.format()})
    return _Run(story_path, Path(out_dir) if out_dir else default_out_dir(story_path),
                cache or PanelCache.default(), getattr(options, "dtype", None), emit, story, jobs,
                _with_story_render(options, story))


def _with_story_render(options, story: Story):
    """The story's `render:` settings, under the command line's: `--no-fuse` switches fusing
    off; `--compile` / `--no-compile` and `--tune` / `--no-tune`, where given, replace the
    story's value."""
    from .models import RuntimeOptions

    render = story.spec.render
    options = options or RuntimeOptions()
    return replace(options, fuse=options.fuse and render.fuse,
                   compile=render.compile if options.compile == "auto" else options.compile,
                   tune=render.tune if options.tune is None else options.tune)


def build(story_path: str | Path, out_dir: str | Path | None = None, *,
          only: Iterable[str] | None = None, force: bool = False, options=None,
          batch_size: int | None = None, pages: bool = True, on_event: Event | None = None,
          cache: PanelCache | None = None, model: str | None = None) -> BuildReport:
    t0 = time.perf_counter()
    # 1. Load, validate and compile: every problem is reported before any work starts.
    run = _start(story_path, out_dir, options, on_event, cache, model)
    story_path, out, cache, emit = run.story_path, run.out, run.cache, run.emit
    story, jobs, dtype_override, options = run.story, run.jobs, run.dtype_override, run.options
    batch_size = batch_size or story.spec.render.batch_size
    report = BuildReport(story=story_path, out_dir=out)

    # 2. Select.
    selected = {job.panel for job in select(jobs, only)}

    # 3. Look up the cache.
    keys = {job.panel: cache_key(job.hash, dtype_override) for job in jobs}
    todo = [job for job in jobs if job.panel in selected
            and (force or cache.get(keys[job.panel]) is None)]
    emit({"event": "plan", "panels": len(jobs), "selected": len(selected),
          "to_render": [job.panel for job in todo]})

    # 4. Render what is missing; the model is loaded only when something is.
    def watch(event: dict) -> None:
        if event["event"] == "speedups":
            report.speedups = list(event["applied"])
        emit(event)

    rendered = render_into_cache(todo, cache, options, batch_size, watch,
                                 story=str(story_path.resolve()), dtype_override=dtype_override)
    report.model_loaded = bool(todo)

    # 5. Put every available panel in place, in story order.
    panel_dir = out / PANELS_DIR
    for job in jobs:
        done = rendered.get(job.hash) if job.panel in selected else None
        if done is not None:
            outcome = PanelOutcome(job, done.status, done.seconds, done.error)
        else:
            status = "cached" if cache.get(keys[job.panel]) else "missing"
            outcome = PanelOutcome(job, status)
        if outcome.status in ("rendered", "cached") and (pages or job.panel in selected):
            outcome.path = materialize(cache.path(keys[job.panel]), panel_dir / f"{job.panel}.png",
                                       job, str(story_path.resolve()))
        report.outcomes.append(outcome)

    # 6. Compose pages (missing panels show as placeholders), unless nothing they show changed.
    pages_key = _pages_key(story, report.outcomes)
    if pages:
        previous = _previous_pages(out, pages_key)
        report.files += previous if previous is not None else compose_story_pages(
            story, report.outcomes, out)

    # 7. Record: the manifest, and which cache entries this story now needs.
    report.seconds = time.perf_counter() - t0
    cache.set_roots(story_path, set(keys.values()) | reroll_keys(out))
    write_manifest(story, report, options, pages_key if pages else None)
    report.files.append(out / MANIFEST)
    emit({"event": "done", "rendered": report.count("rendered"),
          "cached": report.count("cached"), "failed": report.count("failed"),
          "missing": report.count("missing"), "seconds": round(report.seconds, 2)})
    return report


def render_into_cache(jobs: list[PanelJob], cache: PanelCache, options, batch_size: int | None,
                      emit: Event, *, story: str | None,
                      dtype_override: str | None = None,
                      model=None) -> dict[str, PanelOutcome]:
    """Render ``jobs``, storing each image in the cache as soon as it exists. Returns outcomes
    by job hash (identical jobs are rendered once). ``model``: an already loaded one to render
    with (library use and benchmarks; a build loads its own).

    PNG encoding and the cache write happen on a writer thread while the next batch renders
    (Pillow's encoder releases the GIL): a 1024x1024 panel takes 0.03-0.15 s to encode, time
    the GPU would otherwise sit idle for. Panel events still come in render order, each once its
    file is safely written (checked at every step of the batch rendering meanwhile); a failed
    write stops the build before the next batch starts; at most MAX_PENDING_WRITES images wait
    for the writer; an interrupted build finishes and announces the writes already queued."""
    if not jobs:
        return {}
    from .render import render_jobs

    runtime = {"device": "", "dtype": ""}
    twins: dict[str, list[PanelJob]] = {}
    for job in jobs:
        twins.setdefault(job.hash, []).append(job)
    outcomes: dict[str, PanelOutcome] = {}
    pending: deque[tuple[Future | None, Any]] = deque()  # (write, result), in render order

    def store(result) -> None:
        # Looked up at call time, not import time, so tests can slow the encoder down.
        from .pnginfo import panel_png_bytes

        job = result.job
        cache.put(cache_key(job.hash, dtype_override), panel_png_bytes(
            result.image, job, story=story, sampler=result.sampler, **runtime))

    def settle(wait: bool, errors: str = "raise") -> None:
        """Announce the panels at the head of the queue whose writes are done (all of them
        with ``wait``). A failed write is raised ("raise"), left at the head for the main
        loop to raise ("hold": from inside a pipeline call, where an exception would only
        fail the batch), or passed over ("skip": another exception is already on its way)."""
        while pending:
            write, result = pending[0]
            if write is not None:
                if not (wait or write.done()):
                    return
                if write.exception() is not None:
                    if errors == "hold":
                        return
                    pending.popleft()
                    if errors == "raise":
                        raise write.exception()
                    continue
            pending.popleft()
            job = result.job
            outcomes[job.hash] = PanelOutcome(job, result.status, result.seconds, result.error)
            for twin in twins[job.hash]:
                emit({"event": "panel", "panel": twin.panel, "seed": twin.seed,
                      "status": result.status, "seconds": round(result.seconds, 3),
                      "error": result.error})

    def on_event(event: dict) -> None:
        if event["event"] == "model_loaded":
            runtime.update(device=event["device"], dtype=event["dtype"])
        # batch_start comes between pipeline calls: a failed write may stop the build there.
        settle(wait=False, errors="raise" if event["event"] == "batch_start" else "hold")
        emit(event)

    unique = [group[0] for group in twins.values()]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="storyboard-png") as writer:
        try:
            for result in render_jobs(unique, options, batch_size=batch_size,
                                      on_event=on_event, model=model):
                rendered = result.status == "rendered"
                pending.append((writer.submit(store, result) if rendered else None, result))
                settle(wait=False)
                while len(pending) > MAX_PENDING_WRITES:  # the disk is slower than the GPU
                    oldest = pending[0][0]
                    if oldest is not None:
                        oldest.exception()  # blocks until that write is done
                    settle(wait=False)
        except BaseException:
            settle(wait=True, errors="skip")
            raise
        settle(wait=True)
    return outcomes


def materialize(source: Path, target: Path, job: PanelJob, story: str) -> Path:
    """Copy a cached PNG to ``target``, re-labelled for this story and panel if needed."""
    from .pnginfo import read_panel_png, relabel

    if target.is_file():
        _, record = read_panel_png(target)
        if record and record.get("hash") == job.hash and record.get("panel") == job.panel \
                and record.get("story") == story:
            return target
    _, record = read_panel_png(source)
    if record and record.get("panel") == job.panel and record.get("story") == story:
        data = source.read_bytes()
    else:
        data = relabel(source, job, story)
    atomic_write_bytes(target, data)
    return target


def compose_story_pages(story: Story, outcomes: list[PanelOutcome], out: Path) -> list[Path]:
    from PIL import Image

    from .compose import Cell, compose_pages, write_pages

    cells = []
    for n, outcome in enumerate(outcomes, 1):
        image = None
        if outcome.path is not None:
            with Image.open(outcome.path) as im:
                image = im.convert("RGB")
        cells.append(Cell(outcome.job.panel, n, image, outcome.job.caption))
    layout = story.spec.layout
    if layout.font:  # relative to the story file, like every path in it
        layout = layout.model_copy(update={"font": str(story.resolve(layout.font))})
    pages = compose_pages(cells, layout, story.spec.title)
    return write_pages(pages, out)


def _pages_key(story: Story, outcomes: list[PanelOutcome]) -> str:
    """Everything a page shows: layout, title, and each panel's image and caption."""
    import hashlib

    font = story.spec.layout.font
    font_stamp = None
    if font:
        st = story.resolve(font).stat()
        font_stamp = [st.st_size, st.st_mtime_ns]
    blob = json.dumps({"v": __version__, "layout": story.spec.layout.model_dump(),
                       "font": font_stamp, "title": story.spec.title,
                       "panels": [[o.job.panel, o.job.hash if o.path else None, o.job.caption]
                                  for o in outcomes]}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _previous_pages(out: Path, pages_key: str) -> list[Path] | None:
    """The pages the last build composed, if they show exactly this and are all still there."""
    try:
        manifest = json.loads((out / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("pages_key") != pages_key:
        return None
    files = [out / name for name in manifest.get("pages", [])]
    return files if files and all(f.is_file() for f in files) else None


def write_manifest(story: Story, report: BuildReport, options,
                   pages_key: str | None = None) -> None:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    model = report.outcomes[0].job.model if report.outcomes else None
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "story": str(report.story.resolve()),
        "title": story.spec.title,
        "versions": {"storyboard": __version__, "torch": version("torch"),
                     "diffusers": version("diffusers")},
        "model": None if model is None else {
            "kind": model.kind, "ref": model.ref, "revision": model.revision,
            "variant": model.variant, "family": model.family, "dtype": model.dtype},
        "runtime": {"device": getattr(options, "device", "auto"),
                    "dtype": getattr(options, "dtype", None), "speedups": report.speedups},
        "summary": {s: report.count(s) for s in ("rendered", "cached", "failed", "missing")}
        | {"seconds": round(report.seconds, 3), "model_loaded": report.model_loaded},
        "panels": [{
            "panel": o.job.panel,
            "status": o.status,
            "hash": o.job.hash,
            "seed": o.job.seed,
            "prompt": o.job.prompt,
            "negative_prompt": o.job.negative_prompt,
            "width": o.job.width, "height": o.job.height, "steps": o.job.steps,
            "guidance": o.job.guidance, "scheduler": o.job.scheduler,
            "loras": [{"character": l.character, "path": l.path, "sha256": l.sha256,
                       "weight": l.weight} for l in o.job.loras],
            "caption": o.job.caption,
            "seconds": round(o.seconds, 3),
            "error": o.error,
            "file": str(o.path.relative_to(report.out_dir)) if o.path else None,
        } for o in report.outcomes],
        "files": [str(p.relative_to(report.out_dir)) for p in report.files],
        "pages": [str(p.relative_to(report.out_dir)) for p in report.files
                  if p.name != MANIFEST],
        "pages_key": pages_key,
    }
    atomic_write_text(report.out_dir / MANIFEST,
                      json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")


# --- rerolls ---------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """`100-107`, `1,5,9`, `1-3,7` -> seeds, in order, without repeats."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
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


def reroll(story_path: str | Path, panel: str, seeds: list[int], out_dir=None, *, options=None,
           batch_size: int | None = None, on_event: Event | None = None,
           cache: PanelCache | None = None, model: str | None = None) -> RerollReport:
    """Render candidates of one panel with other seeds, without touching the pages."""
    t0 = time.perf_counter()
    run = _start(story_path, out_dir, options, on_event, cache, model)
    story_path, out, cache, emit = run.story_path, run.out, run.cache, run.emit
    jobs, dtype_override, options = run.jobs, run.dtype_override, run.options
    batch_size = batch_size or run.story.spec.render.batch_size
    (base,) = select(jobs, [panel])
    candidates = [_with_hash(replace(base, seed=seed, seed_derived=False, hash=""))
                  for seed in seeds]
    todo = [job for job in candidates if cache.get(cache_key(job.hash, dtype_override)) is None]
    rendered = render_into_cache(todo, cache, options, batch_size, emit,
                                 story=str(story_path.resolve()), dtype_override=dtype_override)

    folder = out / REROLLS_DIR / panel
    results = []
    images = []
    from PIL import Image

    for job in candidates:
        key = cache_key(job.hash, dtype_override)
        done = rendered.get(job.hash)
        outcome = PanelOutcome(job, done.status if done else "cached",
                               done.seconds if done else 0.0, done.error if done else None)
        if outcome.status != "failed":
            outcome.path = materialize(cache.path(key), folder / f"seed-{job.seed}.png", job,
                                       str(story_path.resolve()))
            with Image.open(outcome.path) as im:
                images.append((f"seed {job.seed}", im.convert("RGB")))
        results.append((job.seed, outcome))

    sheet = None
    if images:
        from .compose import contact_sheet

        buf = io.BytesIO()
        contact_sheet(images).save(buf, format="PNG")
        sheet = folder / "sheet.png"
        atomic_write_bytes(sheet, buf.getvalue())
    cache.set_roots(story_path, {cache_key(j.hash, dtype_override) for j in jobs}
                    | reroll_keys(out))
    return RerollReport(panel, folder, results, sheet, time.perf_counter() - t0)


def reroll_keys(out: Path) -> set[str]:
    """Cache keys of the reroll candidates present in ``out``: kept until their files go."""
    from .pnginfo import read_panel_png

    keys = set()
    for png in (out / REROLLS_DIR).glob("*/seed-*.png") if (out / REROLLS_DIR).is_dir() else []:
        try:
            _, record = read_panel_png(png)
        except OSError:
            continue
        if record and record.get("hash"):
            keys.add(record["hash"])
    return keys


# --- clean -----------------------------------------------------------------------------------


@dataclass
class CleanReport:
    removed: int = 0
    freed: int = 0
    stale_files: list[Path] = field(default_factory=list)


def clean(stories: list[Path], *, dry_run: bool = False,
          cache: PanelCache | None = None) -> CleanReport:
    """Remove cache entries no existing story needs, and, in the given stories' output folders,
    panels the stories no longer have."""
    cache = cache or PanelCache.default()
    report = CleanReport()
    for story_path in stories:
        _, jobs = load_and_compile(story_path)
        out = default_out_dir(story_path)
        ids = {job.panel for job in jobs}
        for png in (out / PANELS_DIR).glob("*.png") if (out / PANELS_DIR).is_dir() else []:
            if png.stem not in ids:
                report.stale_files.append(png)
    # What is live is what each story's last build or reroll recorded (with whatever --model it
    # used); clean only reads that.
    live, stale_roots = cache.live_keys()
    for key in sorted(cache.keys() - live):
        report.removed += 1
        report.freed += cache.path(key).stat().st_size if dry_run else cache.remove(key)
    if not dry_run:
        for path in report.stale_files:
            path.unlink(missing_ok=True)
        for root in stale_roots:
            root.unlink(missing_ok=True)
    return report


__all__ = ["build", "reroll", "clean", "BuildReport", "parse_seeds", "default_out_dir"]
