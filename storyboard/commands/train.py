"""`storyboard train`: each character's LoRA, trained where missing or stale, reused otherwise.

In: a story path, the characters to train (all with a `train:` section when none are named),
the output folder (the story's own by default), ``RuntimeOptions`` (device, dtype), ``force``
(train again from scratch), ``sheets`` (draw contact sheets), an event callback and a `--model`
override. ``train_jobs`` is the part a build calls for the LoRAs its panels need
(``train_first``). Out: a ``TrainReport`` (per character: trained or reused, the LoRA file,
seconds, the last loss, the contact sheets drawn); in the cache, ``trained/<key>/`` as
``training.store`` lays it out and, for prior preservation, the class pictures as ordinary panel
entries; in the output folder, ``training/<character>/step-N.png`` contact sheets
(``training_sheets``).

Like a build, training reads top to bottom: load and validate the story and its pictures (every
problem before any work); select; claim the contact sheets' names (a file of the user's in the
way stops it here); record which trained LoRAs and class pictures the story needs (so `clean`
keeps them); then, holding the cache shared (``clean`` waits) and each LoRA's folder alone (two
processes never train the same LoRA at once; the second finds it finished), train what is not
finished: render the class pictures the cache lacks (``training.prior``: seeded jobs through the
panel cache, so the next training reuses them), then train, drawing a sheet at each checkpoint.
Torch is imported only when something is rendered or trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError, did_you_mean
from ..options import RuntimeOptions
from ..output.cache import PanelCache, cache_key
from ..output.locks import locked
from ..plan import PanelJob, compile_story
from ..story import load_story, with_model
from ..training.compile import check_training
from ..training.jobs import TrainJob
from ..training.prior import class_jobs
from ..training.store import LORA_FILE, TrainedStore
from . import training_sheets
from .common import Event, Run, awaiting_training, check_out_dir, default_out_dir, verified
from .rendering import render_into_cache

Sheets = dict[str, training_sheets.Sheets]  # by character


@dataclass(frozen=True)
class TrainOutcome:
    character: str
    key: str
    status: str  # "trained" | "reused"
    lora: Path
    seconds: float = 0.0
    final_loss: float | None = None
    sheets: tuple[Path, ...] = ()  # contact sheets drawn, in step order
    class_pictures: int = 0  # rendered for prior preservation (the others came from the cache)


@dataclass
class TrainReport:
    """What `storyboard train` did; owns the exit code."""

    story: Path
    outcomes: list[TrainOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0

    def summary(self) -> str:
        trained = [o.character for o in self.outcomes if o.status == "trained"]
        reused = [o.character for o in self.outcomes if o.status == "reused"]
        parts = [f"trained {', '.join(trained)}" if trained else "",
                 f"reused {', '.join(reused)} (up to date)" if reused else ""]
        parts += [f"contact sheets of {o.character} in {o.sheets[-1].parent}"
                  for o in self.outcomes if o.sheets]
        return f"{'; '.join(p for p in parts if p)} in {self.seconds:.1f}s"


def select_characters(jobs: Iterable[TrainJob], names: Iterable[str] | None) -> list[TrainJob]:
    """The jobs of the characters ``names`` (all without them); unknown names are an error."""
    jobs = list(jobs)
    if not names:
        return jobs
    known = {job.character: job for job in jobs}
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in known]
    if unknown:
        hint = did_you_mean(unknown[0], known) or f"characters with `train:`: {', '.join(known)}"
        raise UserError(f"no character {', '.join(map(repr, unknown))} with a `train:` section "
                        f"in this story; {hint}")
    return [known[n] for n in wanted]


def train(story_path: str | Path, characters: Iterable[str] | None = None, *,
          out_dir: str | Path | None = None, options: RuntimeOptions | None = None,
          force: bool = False, sheets: bool = True, on_event: Event | None = None,
          store: TrainedStore | None = None, model: str | None = None) -> TrainReport:
    t0 = time.perf_counter()
    emit = on_event or (lambda event: None)
    options = options or RuntimeOptions()
    story_path = Path(story_path)
    # 1. Load and validate the story and every picture it trains on.
    story = load_story(story_path)
    if model:  # `--model`: train for the model a build with the same flag renders with
        story = with_model(story, model)
    training = check_training(story)
    for warning in training.warnings:
        emit({"event": "warning", "message": warning.format()})
    if not training.jobs:
        raise UserError(f"{story_path}: no character has a `train:` section; add one (see "
                        "`storyboard schema`) or name a LoRA file under `loras:`")
    # 2. Select, and claim the names of the contact sheets of what will be trained.
    jobs = select_characters(training.jobs, characters)
    store = store or TrainedStore.default()
    report = TrainReport(story_path)
    drawn: Sheets = {}
    if sheets:
        out = Path(out_dir) if out_dir else default_out_dir(story_path)
        drawn = claim_sheets(out, str(story_path.resolve()), jobs, store, force,
                            lambda: compile_story(story))
    # 3. Train what is not finished.
    report.outcomes = train_jobs(story_path, jobs, training.jobs, options=options, force=force,
                                 emit=emit, store=store, sheets=drawn)
    report.seconds = time.perf_counter() - t0
    emit({"event": "done", "trained": sum(o.status == "trained" for o in report.outcomes),
          "reused": sum(o.status == "reused" for o in report.outcomes),
          "seconds": round(report.seconds, 2)})
    return report


def claim_sheets(out: Path, story_id: str, jobs: list[TrainJob], store: TrainedStore,
                force: bool, panels: Callable[[], list[PanelJob]]) -> Sheets:
    """The contact sheets of the ``jobs`` that will train (not finished, or all with
    ``force``), their names claimed in ``out`` (``training_sheets.claim``). ``panels``
    compiles the story's panels, called only when something will train."""
    pending = [job for job in jobs if force or store.finished(job) is None]
    if not pending:
        return {}
    check_out_dir(out)
    compiled = panels()
    drawn = {job.character: training_sheets.plan_sheets(out, story_id, job, compiled)
             for job in pending}
    training_sheets.claim(list(drawn.values()), force)
    return drawn


def train_jobs(story_path: Path, jobs: list[TrainJob], story_jobs: Iterable[TrainJob], *,
               options: RuntimeOptions, force: bool, emit: Event, store: TrainedStore,
               sheets: Sheets | None = None) -> list[TrainOutcome]:
    """Train ``jobs`` where not finished (all of them with ``force``), reuse the rest; record
    that ``story_path`` needs the LoRAs of ``story_jobs`` (every `train:` section it has) and
    their class pictures; draw ``sheets`` (by character) as they train.
    Holds the cache shared (``clean`` waits) and each LoRA's folder alone (two processes never
    train the same LoRA at once; the second finds it finished). A build calls this too."""
    def waiting(what: str):
        return lambda: emit({"event": "waiting",
                             "message": f"another storyboard is using {what}; waiting for it"})

    outcomes = []
    story_jobs = list(story_jobs)
    cache = PanelCache(store.root)
    with locked(store.root, shared=True, on_wait=waiting("the cache")):
        store.set_roots(story_path, {job.key for job in story_jobs})
        cache.set_class_roots(story_path, {cache_key(c.hash, options.dtype)
                                           for job in story_jobs for c in class_jobs(job)})
        for job in jobs:
            folder = store.folder(job.key)
            with locked(folder, on_wait=waiting(f"the LoRA of {job.character}")):
                if not force and store.finished(job) is not None:
                    outcomes.append(TrainOutcome(job.character, job.key, "reused",
                                                 folder / LORA_FILE))
                    emit({"event": "train_reused", "character": job.character,
                          "key": job.key})
                    continue
                outcomes.append(_train_one(job, folder, options, force, emit, store, cache,
                                           (sheets or {}).get(job.character)))
    return outcomes


def _train_one(job: TrainJob, folder: Path, options: RuntimeOptions, force: bool, emit: Event,
               store: TrainedStore, cache: PanelCache,
               sheets: training_sheets.Sheets | None) -> TrainOutcome:
    prior_images, rendered = class_pictures(job, cache, options, emit)
    from ..engine.training.trainer import train_lora

    emit({"event": "train_start", "character": job.character, "key": job.key,
          "steps": job.settings.steps, "pictures": len(job.images),
          "class_pictures": len(prior_images)})
    rates = []  # the last steps/s the trainer reported: the next build's estimate
    written: list[Path] = []

    def watch(event: dict) -> None:
        if event.get("event") == "train_step":
            rates[:] = [event["steps_per_s"]]
        elif event.get("event") == "train_sheet":
            written.append(Path(event["path"]))
        emit(event)

    result = train_lora(job, folder, device=options.device, dtype=options.dtype or "auto",
                        prior_images=prior_images, on_event=watch, resume=not force,
                        optimizer=job.settings.optimizer,
                        on_checkpoint=None if sheets is None
                        else training_sheets.drawer(sheets, watch))
    # The last write: the folder is finished.
    store.mark_done(job, seconds_per_step=1 / rates[0] if rates and rates[0] > 0 else None,
                    device=result.device)
    return TrainOutcome(job.character, job.key, "trained", result.lora_file, result.seconds,
                        result.final_loss, tuple(written), rendered)


def class_pictures(job: TrainJob, cache: PanelCache, options: RuntimeOptions,
                   emit: Event) -> tuple[list[Path], int]:
    """The cache files of ``job``'s class pictures (none without prior preservation), the
    missing ones rendered first; and how many were rendered. ``options.dtype``, when given,
    keys them as it keys a build's panels."""
    jobs = class_jobs(job)
    dtype = options.dtype
    todo = [c for c in jobs
            if verified(cache, cache_key(c.hash, dtype), f"{job.character}'s {c.panel}",
                        emit) is None]
    if todo:
        emit({"event": "class_pictures", "character": job.character, "to_render": len(todo),
              "pictures": len(jobs)})
        outcomes, _ = render_into_cache(todo, cache, options, emit, story=None,
                                        dtype_override=dtype)
        failed = [o for o in outcomes.values() if o.status != "rendered"]
        if failed:
            raise UserError(f"{len(failed)} of the {len(todo)} class pictures of "
                            f"{job.character} did not render ({failed[0].error}); train "
                            "again once that is fixed, or leave prior_preservation out")
    return [cache.path(cache_key(c.hash, dtype)) for c in jobs], len(todo)


def train_first(run: Run, selected: set[str], *, force: bool = False) -> Run:
    """A build's training: the LoRAs ``run``'s selected panels wait for, trained (one event
    says so first, with an estimate from earlier trainings on this machine), then the story
    compiled again with them. Called with the build's locks held."""
    waiting = awaiting_training(job for job in run.jobs if job.panel in selected)
    assert run.training is not None, "panels wait for a training the story does not have"
    jobs = [job for job in run.training.jobs if job.character in waiting]
    from ..engine.environment import prepare
    from ..engine.loading import resolve_device  # torch: it is about to train

    prepare()  # before torch is imported: its settings, and its bytecode kept (engine.bytecode)
    device = resolve_device(run.options.device)
    estimates = [run.store.seconds_per_step(job, device) for job in jobs]
    steps = sum(job.settings.steps for job in jobs)
    if all(e is not None for e in estimates):
        seconds = sum(e * job.settings.steps for e, job in zip(estimates, jobs))
        about = f"about {_duration(seconds)} on {device}, as trainings here took before"
    else:
        seconds = None
        about = "no estimate yet: the first training on this machine measures it"
    names = ", ".join(waiting)
    # Its contact sheets go in the build's own output folder, claimed before any training.
    sheets = claim_sheets(run.out, run.story_id, jobs, run.store, force, lambda: run.jobs)
    run.emit({"event": "train_first", "characters": waiting, "steps": steps,
              "estimate_s": None if seconds is None else round(seconds, 1),
              "message": f"training the LoRA of {names} first ({steps} steps; {about})"})
    train_jobs(run.story_path, jobs, run.training.jobs,
               options=RuntimeOptions(device=device, progress=run.options.progress),
               force=force, emit=run.emit, store=run.store, sheets=sheets)
    compiled = compile_story(run.story, run.store.loras(run.training.jobs))
    left = awaiting_training(job for job in compiled if job.panel in selected)
    if left:  # trained, yet its file is not the one recorded: something changed it since
        raise UserError(f"the trained LoRA of {', '.join(left)} changed on disk as it was "
                        f"read; run `storyboard train --force {run.story_path} "
                        f"{' '.join(left)}`")
    return replace(run, jobs=compiled)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
