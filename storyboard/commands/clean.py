"""`storyboard clean`: remove what no story needs any more.

In: story paths (optional), a dry-run switch, the cache. Out: a ``CleanReport`` (entries
removed, bytes freed, stale files), having removed every cache entry that no existing story's
last build, reroll or training (its class pictures) recorded (their roots, output/cache.py),
every trained LoRA folder that no existing story's last training recorded (its own roots,
training/store.py), the roots of stories that are gone, the PDF font subsets (``fonts/``) that
none of the stories the roots name (nor those given) embeds, kept font measurements of font
files that have changed or are gone, bytecode kept for libraries whose source files are gone
(``env/bytecode``, engine/bytecode.py), compiled artifacts traced from library files that have
changed or are gone, or damaged (engine/speed/artifact_files.py), and temporary files and
half-built model folders that killed runs left in the cache; and, in the given stories'
output folders, panel files storyboard wrote for panels the stories no longer have.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..output.cache import PanelCache
from ..output.locks import locked
from ..output.ownership import Outputs
from ..paths import leftover_temporaries, remove_temporaries
from ..training.store import TrainedStore
from .build import PANELS_DIR
from .common import default_out_dir, load_and_compile


@dataclass
class CleanReport:
    removed: int = 0
    freed: int = 0
    stale_files: list[Path] = field(default_factory=list)
    temporaries: list[Path] = field(default_factory=list)  # left by runs that were killed
    trained: list[str] = field(default_factory=list)  # keys of trained LoRAs removed
    fonts: list[Path] = field(default_factory=list)  # font subsets removed
    metrics: list[Path] = field(default_factory=list)  # kept font measurements removed
    bytecode: int = 0  # kept bytecode files whose sources are gone (engine/bytecode.py)
    artifacts: int = 0  # compiled artifacts no build can load (engine/speed/artifacts.py)


def clean(stories: list[Path], *, dry_run: bool = False, cache: PanelCache | None = None,
          on_wait: Callable[[str], None] = lambda what: None) -> CleanReport:
    """Remove what no story needs; ``on_wait`` is told when another process holds the cache."""
    # The compile cache beside a cache given explicitly; otherwise the one builds use.
    compiled = cache.root / "inductor" if cache is not None else None
    cache = cache or PanelCache.default()
    report = CleanReport()
    # Exclusive: running builds, rerolls and trainings finish first, so nothing they just made
    # (and have not yet recorded in their roots) is taken from under them.
    with locked(cache.root, on_wait=lambda: on_wait("the panel cache")):
        _clean(stories, dry_run, cache, report)
        _clean_trained(TrainedStore(cache.root), dry_run, report)
        _clean_fonts(stories, dry_run, cache, report)
        _clean_metrics(dry_run, cache, report)
        _clean_bytecode(cache.root, dry_run, report)
        _clean_artifacts(compiled, dry_run, report)
    return report


def _clean_artifacts(compiled: Path | None, dry_run: bool, report: CleanReport) -> None:
    """Compiled artifacts no build can load again (engine/speed/artifacts.py): damaged, or
    traced from library files that changed or are gone. The rest of torch.compile's cache is
    torch's to manage."""
    from ..engine.speed.artifact_files import FOLDER, stale_artifacts

    for path in stale_artifacts(compiled / FOLDER if compiled is not None else None):
        size = _remove(path, dry_run)
        if size is not None:
            report.artifacts += 1
            report.freed += size


def _clean_bytecode(root: Path, dry_run: bool, report: CleanReport) -> None:
    """Bytecode storyboard kept for libraries' source files that are gone: nothing would ever
    read it again. (Bytecode of a changed source is rewritten in place at its next import.)"""
    from ..engine.bytecode import folder, orphans

    top = folder(root)
    if not top.is_dir():
        return
    for path in orphans(root):
        size = _remove(path, dry_run)
        if size is not None:
            report.bytecode += 1
            report.freed += size
    if not dry_run:  # the folders left empty, deepest first (never the top itself)
        for here, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            if Path(here) != top:
                try:
                    os.rmdir(here)  # only if empty
                except OSError:
                    pass


SUBSET_NAME = re.compile(r"[0-9a-f]{64}\.ttf")  # what pdf.truetype_subset names its files
METRICS_NAME = re.compile(r"[0-9a-f]{64}\.metrics\.json")  # fonts.FontMetrics' files


def _clean_metrics(dry_run: bool, cache: PanelCache, report: CleanReport) -> None:
    """Kept font measurements (``fonts.FontMetrics``) of font files as they are no longer: the
    key covers a file's path, size and time and fontTools' version, so a changed or removed
    font, or a fontTools upgrade, leaves its old file unread for good. Kept: those of the
    built-in and emoji fonts, and of the fonts of the stories the roots name. Only files named
    as storyboard names them, plain files, are touched."""
    from ..output.fonts import metrics_names

    kept = _ours(cache.root / "fonts", METRICS_NAME)
    if not kept:
        return
    needed = metrics_names(None)
    for story_path in cache.rooted_stories():
        story = _story_now(story_path)
        if story is not None:
            needed |= metrics_names(_font_of(story))
    for path in kept:
        if path.name not in needed:
            _count(report.metrics, path, dry_run, report)


def _ours(folder: Path, name: re.Pattern) -> list[Path]:
    """The plain files in ``folder`` named as storyboard names them: anything else there is
    not ours."""
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if name.fullmatch(p.name) and p.is_file() and not p.is_symlink()]


def _story_now(story_path: Path):
    """The story as it is now; None when it no longer loads (it needs nothing kept yet)."""
    from ..errors import UserError
    from ..story import load_story

    try:
        return load_story(story_path, check_files=False)
    except (UserError, OSError):
        return None


def _font_of(story) -> str | None:
    font = story.spec.layout.font
    return str(story.resolve(font)) if font else None


def _clean_fonts(stories: list[Path], dry_run: bool, cache: PanelCache,
                 report: CleanReport) -> None:
    """Font subsets that no existing story's PDF embeds: those of the stories the roots name
    (each story's last build recorded one) and of the stories given, worked out from each
    story as it is now (its font and characters; a story that no longer loads keeps none:
    its next build makes them again, in seconds). Only files named as storyboard names its
    subsets, plain files, are touched: anything else in the folder is not ours."""
    subsets = _ours(cache.root / "fonts", SUBSET_NAME)  # where pdf.truetype_subset keeps them
    if not subsets:
        return
    needed: set[str] = set()
    for story_path in {*(s.resolve() for s in stories), *cache.rooted_stories()}:
        needed |= _story_subsets(story_path)
    for path in subsets:
        if path.stem in needed:
            continue
        _count(report.fonts, path, dry_run, report)


def _count(removed: list[Path], path: Path, dry_run: bool, report: CleanReport) -> None:
    """Remove ``path``; listed (and its bytes counted) only where it went, or would go."""
    size = _remove(path, dry_run)
    if size is not None:
        removed.append(path)
        report.freed += size


def _remove(path: Path, dry_run: bool) -> int | None:
    """Remove ``path`` (not on a dry run); the bytes that frees, or None where it cannot."""
    try:
        size = path.stat().st_size
        if not dry_run:
            path.unlink()
    except OSError:
        return None
    return size


def _story_subsets(story_path: Path) -> set[str]:
    from .build import page_chars

    story = _story_now(story_path)
    return set() if story is None else subset_keys(_font_of(story), page_chars(story))


def subset_keys(font: str | None, chars: str) -> set[str]:
    """The cache keys of the subsets a story's PDF embeds: its page font (``font``, resolved;
    None: the built-in one) at each weight, and the emoji font for what that lacks, for the
    story's ``chars`` (``pdf.story_chars``), as a build warms them (``pdf.warm_fonts``)."""
    from ..output.fonts import WEIGHTS
    from ..output.glyphs import emoji_font, fallback_chars
    from ..output.pdf import subset_key

    keys = {key for weight in WEIGHTS if (key := subset_key(font, weight, chars))}
    emoji = fallback_chars(chars, font)
    if emoji and (key := subset_key(emoji_font(), "Regular", emoji)):
        keys.add(key)
    return keys


def _clean_trained(store: TrainedStore, dry_run: bool, report: CleanReport) -> None:
    """Trained LoRAs (finished or not) that no existing story's last training recorded."""
    live, stale_roots = store.live_keys()
    for key in sorted(store.keys() - live):
        report.trained.append(key)
        report.freed += store.size(key) if dry_run else store.remove(key)
    if not dry_run:
        for root in stale_roots:
            root.unlink(missing_ok=True)


def _clean(stories: list[Path], dry_run: bool, cache: PanelCache, report: CleanReport) -> None:
    for story_path in stories:
        _, jobs = load_and_compile(story_path)
        out = default_out_dir(story_path)
        ids = {job.panel for job in jobs}
        outputs = Outputs.read(out)
        for png in (out / PANELS_DIR).glob("*.png") if (out / PANELS_DIR).is_dir() else []:
            # Only panels storyboard wrote: a picture of the user's own there stays.
            if png.stem not in ids and outputs.owns(f"{PANELS_DIR}/{png.name}"):
                report.stale_files.append(png)
    # What is live is what each story's last build or reroll recorded (with whatever --model or
    # --dtype it used); clean only reads that.
    # With the cache held alone, no write is under way in it: any temporary file or half-built
    # model folder is a killed run's. torch.compile's own cache is torch's to manage.
    report.temporaries = leftover_temporaries(cache.root, depth=3, skip=("inductor",))
    live, stale_roots = cache.live_keys()
    for key in sorted(cache.keys() - live):
        report.removed += 1
        report.freed += cache.path(key).stat().st_size if dry_run else cache.remove(key)
    if not dry_run:
        for path in report.stale_files:
            path.unlink(missing_ok=True)
        for root in stale_roots:
            root.unlink(missing_ok=True)
        remove_temporaries(report.temporaries)
