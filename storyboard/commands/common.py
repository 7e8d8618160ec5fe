"""What every command that starts from a story does first.

In: a story path, an optional `--model` override, an optional panel selection and the caller's
``RuntimeOptions``. Out: a ``Run``: the validated (and, with `--model`, re-targeted) story, its
compiled jobs with prompt-length warnings reported (and, for a story that trains characters,
its pictures checked: ``training.compile``), the output folder, the cache, and the
options merged with the story's ``render:`` section, once. Every problem in the story is
reported before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoryError, UserError, did_you_mean
from ..options import RuntimeOptions
from ..output.cache import PanelCache
from ..output.geometry import layout_problems
from ..output.glyphs import glyph_warnings, vertical_problems
from ..output.locks import locked
from ..plan import PanelJob, compile_story
from ..plan.tokens import prompt_warnings
from ..story import Story, load_story, with_model, with_warnings
from ..training.compile import Training, check_training, has_training
from ..training.store import TrainedStore

Event = Callable[[dict[str, Any]], None]


def default_out_dir(story: Path) -> Path:
    """`story.yaml` builds into `story.out/` beside it."""
    return story.with_name(story.stem + ".out")


def load_and_compile(path: str | Path, model: str | None = None, *,
                     store: TrainedStore | None = None,
                     look_up_trained: bool = True) -> tuple[Story, list[PanelJob]]:
    """Load, validate and compile; ``model`` replaces the story's model (e.g. `tiny-kolors`
    to try a story offline), validated like the story's own. The story's warnings include the
    compiled prompts' token warnings and, for a story that trains characters, its pictures'
    (whose errors are refused with the story's); pages too big to compose are refused here.
    Characters' trained LoRAs are looked up in ``store`` (the default cache) and join their
    panels; a panel whose character's LoRA is not trained yet is compiled ``awaiting`` it
    (``look_up_trained=False``: all of them are, and no LoRA file is read)."""
    story, jobs, _ = compile_with_training(path, model, store=store,
                                           look_up_trained=look_up_trained)
    return story, jobs


def compile_with_training(path: str | Path, model: str | None = None, *,
                          store: TrainedStore | None = None, look_up_trained: bool = True
                          ) -> tuple[Story, list[PanelJob], Training | None]:
    """``load_and_compile``, also returning the story's compiled ``Training`` (None for a
    story that trains no character)."""
    story = load_story(path)
    if model:
        story = with_model(story, model)
    training, picture_problems = None, []
    if has_training(story):  # the pictures are read only for a story that trains
        try:
            training = check_training(story)
        except StoryError as exc:  # with its warnings: said with the templates' errors
            picture_problems = [*story.warnings, *exc.problems]
    trained = {}
    if training is not None and look_up_trained:
        trained = (store or TrainedStore.default()).loras(training.jobs)
    try:
        jobs = compile_story(story, trained)
    except StoryError as exc:
        if not picture_problems:
            raise
        picture_problems += exc.problems
    if picture_problems:  # every error at once, in file order
        raise StoryError(sorted(picture_problems, key=lambda p: (p.line or 0, p.col or 0)))
    font = story.spec.layout.font
    font_path = str(story.resolve(font)) if font else None
    problems = layout_problems(story, jobs, font_path, _caption_lines) + \
        vertical_problems(story, jobs, font_path)
    if problems:  # pages too big to compose or write: said now, not after rendering
        raise StoryError(problems)
    warnings = (prompt_warnings(story, jobs) + glyph_warnings(story, jobs, font_path)
                + list(training.warnings if training else ()))
    return with_warnings(story, warnings), jobs, training


def _caption_lines(caption: str, font_size: int, font: str | None, width: int) -> int:
    from ..output.pages import caption_lines  # the imaging library, only near a limit

    return caption_lines(caption, font_size, font, width)


def select(jobs: list[PanelJob], only: Iterable[str] | None) -> list[PanelJob]:
    """The jobs of the panels ``only`` names (all without it); unknown ids are an error."""
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


@dataclass(frozen=True)
class Run:
    """A story ready to render from."""

    story_path: Path
    out: Path
    cache: PanelCache
    emit: Event
    story: Story
    jobs: list[PanelJob]
    options: RuntimeOptions  # merged with the story's `render:` section
    training: Training | None = None  # the story's `train:` sections, compiled
    model: str | None = None  # the `--model` it was compiled for

    @property
    def story_id(self) -> str:
        """How panel records name their story: its absolute path."""
        return str(self.story_path.resolve())

    @property
    def store(self) -> TrainedStore:
        """The trained LoRAs beside this run's panel cache."""
        return TrainedStore(self.cache.root)


def start(story_path: str | Path, out_dir: str | Path | None, options: RuntimeOptions | None,
          on_event: Event | None, cache: PanelCache | None, model: str | None) -> Run:
    """Load, validate and compile, and report the story's warnings as events."""
    emit = on_event or (lambda event: None)
    story_path = Path(story_path)
    cache = cache or PanelCache.default()
    story, jobs, training = compile_with_training(story_path, model,
                                                  store=TrainedStore(cache.root))
    for warning in story.warnings:
        emit({"event": "warning", "message": warning.format()})
    options = (options or RuntimeOptions()).with_story(story.spec.render)
    out = Path(out_dir) if out_dir else default_out_dir(story_path)
    check_out_dir(out)
    return Run(story_path, out, cache, emit, story, jobs, options, training, model)


def awaiting_training(jobs: Iterable[PanelJob]) -> list[str]:
    """The characters whose trained LoRA ``jobs`` still wait for, in first-use order."""
    return list(dict.fromkeys(cid for job in jobs for cid in job.awaiting))


def refuse_untrained(jobs: list[PanelJob], story_path: Path, doing: str) -> None:
    """A ``UserError`` when any of ``jobs`` waits for a LoRA still to be trained: ``doing``
    (e.g. "reroll") does not train; the message names the command that does."""
    characters = awaiting_training(jobs)
    if not characters:
        return
    panels = [job.panel for job in jobs if job.awaiting]
    shown = ", ".join(panels[:5]) + (f" and {len(panels) - 5} more" if len(panels) > 5 else "")
    raise UserError(
        f"panel{'s' * (len(panels) != 1)} {shown} need{'s' * (len(panels) == 1)} the trained "
        f"LoRA of {', '.join(characters)}, which is not trained yet, and {doing} does not "
        f"train: run `storyboard train {shlex.quote(str(story_path))} "
        f"{' '.join(characters)}` first")


@contextmanager
def hold(run: Run, emit: Event) -> Iterator[None]:
    """The locks a command that writes into ``run``'s output folder and cache holds: the folder
    alone, the cache shared with other builds (``output.locks``)."""
    def waiting(what: str) -> Callable[[], None]:
        return lambda: emit({"event": "waiting", "message": f"another storyboard is using "
                                                           f"{what}; waiting for it"})

    with locked(run.out, on_wait=waiting(str(run.out))), \
            locked(run.cache.root, shared=True, on_wait=waiting("the panel cache")):
        yield


def verified(cache: PanelCache, key: str, panel: str, emit: Event) -> Path | None:
    """A panel's cache entry if it is sound; a damaged one is removed, with a warning event."""
    return cache.verified(key, on_damage=lambda problem: emit({
        "event": "warning", "message": f"panel {panel}: its cached image was damaged "
                                       f"({problem}); rendering it again"}))


def check_out_dir(out: Path) -> None:
    """Refuse, before any work, an output folder that is a file or lies under one."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            where = "is" if folder == out else f"lies under {folder}, which is"
            raise UserError(f"output folder {out} {where} a file, not a folder; give -o a "
                            "folder")
        if folder.is_dir():
            return
