"""A character's reference pictures, checked before any training: what goes in, and why not.

In: a folder (``train.images``, resolved), how the story wrote it (for messages), the
character's token, class and description, and the data filter (``DataFilter``: the family's
``TrainDefaults`` or the story's ``min_side``). Out: a ``Dataset``: the usable pictures as
``TrainImage`` records (sha256 of the bytes, size the right way up, caption), the pictures left
out with the reason, and findings (warnings, and an error when nothing is usable) that
``training.compile`` places at the `train.images` line of the story.

The folder's regular files named *.png, *.jpg, *.jpeg or *.webp are read, in name order, hidden
files skipped, at most ``MAX_TRAIN_IMAGES``; each is decoded whole through
``images.open_picture`` (as the trainer will read it: EXIF orientation applied, transparency
flattened), so a truncated or corrupt file is named here rather than failing a training run.
The course's data filter (its data-juicer recipe) leaves out pictures whose shorter side is
below ``min_side`` or whose aspect ratio is outside ``min_aspect``..``max_aspect``, and exact
duplicates are left out too. A caption is the UTF-8 text of ``<name>.txt`` beside the picture,
else "<token> <class>, <description>"; a caption that does not name the token gets it in front,
with a warning. Nothing is ever opened that is not a regular file (a FIFO would block).

Decoding is memoised per process by (path, device, inode, size, mtime), so `plan` after
`validate` in one process, or ``compile_training`` after ``load_and_compile``, decodes once.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .. import constants as C
from ..errors import ERROR, WARNING, printable
from ..paths import read_bounded, sha256_of
from .images import SUFFIXES, open_picture
from .jobs import TrainImage

CAPTION_SUFFIX = ".txt"
# Pictures in formats the trainer does not read: named, so a folder of HEIC photos is not a
# mystery. Anything else in the folder (notes, a .json) is none of ours and passes unremarked.
OTHER_PICTURES = (".heic", ".heif", ".avif", ".gif", ".bmp", ".tif", ".tiff", ".jxl")


@dataclass(frozen=True)
class DataFilter:
    min_side: int  # pixels, the shorter side after EXIF orientation
    min_aspect: float  # width / height
    max_aspect: float
    min_images: int  # fewer usable pictures: a warning


@dataclass(frozen=True)
class Finding:
    """A warning or error about the dataset, placed at `train.images` by the caller."""

    severity: str  # errors.ERROR | errors.WARNING
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Excluded:
    path: str  # as the story names it: the folder as written, then the file name
    reason: str


@dataclass(frozen=True)
class Dataset:
    folder: str  # absolute
    images: tuple[TrainImage, ...]
    excluded: tuple[Excluded, ...] = ()
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)


@dataclass
class _Scan:
    label: str
    findings: list[Finding] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)

    def shown(self, name: str) -> str:
        return printable(self.label.rstrip("/\\") + "/" + name if self.label else name)

    def leave_out(self, name: str, reason: str, hint: str | None = None) -> None:
        self.excluded.append(Excluded(self.shown(name), reason))
        self.findings.append(Finding(WARNING, f"{self.shown(name)}: {reason}; left out", hint))

    def warn(self, message: str, hint: str | None = None) -> None:
        self.findings.append(Finding(WARNING, message, hint))

    def error(self, message: str, hint: str | None = None) -> None:
        self.findings.append(Finding(ERROR, message, hint))


def default_caption(token: str, class_word: str | None, description: str) -> str:
    """ "ohwx girl, eight years old, curly red hair": what a picture without a .txt says."""
    trigger = " ".join(t for t in (token, class_word) if t)
    return ", ".join(t for t in (trigger, description.strip()) if t)


def names_token(caption: str, token: str) -> bool:
    """Whether ``caption`` has ``token`` as a word of its own (not inside another word)."""
    return re.search(rf"(?<!\w){re.escape(token)}(?!\w)", caption) is not None


def scan_dataset(folder: Path, label: str, *, token: str, class_word: str | None,
                 description: str, data_filter: DataFilter) -> Dataset:
    """Every picture in ``folder`` checked, captioned, and kept or left out with a reason.
    ``label`` is the folder as the story writes it, for messages."""
    scan = _Scan(label)
    names = _picture_names(folder, scan)
    if names is None:
        return Dataset(str(folder), (), tuple(scan.excluded), tuple(scan.findings))
    fallback = default_caption(token, class_word, description)
    kept: list[TrainImage] = []
    seen: dict[str, str] = {}  # sha256 -> the name kept
    for name in names:
        image = _check_picture(folder / name, name, scan, data_filter)
        if image is None:
            continue
        if image.sha256 in seen:
            scan.leave_out(name, f"the same picture as {scan.shown(seen[image.sha256])}")
            continue
        seen[image.sha256] = name
        caption = _caption(folder, name, scan) or fallback
        if not names_token(caption, token):
            scan.warn(f"{scan.shown(Path(name).stem + CAPTION_SUFFIX)}: the caption does not "
                      f"name the token {token!r}; it is put in front",
                      "a caption names what the picture shows, starting with the token")
            caption = f"{token}, {caption}"
        kept.append(TrainImage(image.path, image.sha256, image.width, image.height, caption))
    if not kept:
        scan.error(f"no usable pictures in {label!r}" + (
            f" ({len(scan.excluded)} left out)" if scan.excluded else ""),
            "add the character's pictures (png, jpg or webp)" if not scan.excluded
            else "see the warnings above for why each was left out")
    elif len(kept) < data_filter.min_images:
        scan.warn(f"only {len(kept)} usable picture{'s' * (len(kept) != 1)} in {label!r}; "
                  f"{data_filter.min_images} or more train a steadier likeness",
                  "varied poses, backgrounds and lighting help most")
    return Dataset(str(folder), tuple(kept), tuple(scan.excluded), tuple(scan.findings))


def _picture_names(folder: Path, scan: _Scan) -> list[str] | None:
    """The names of the pictures in ``folder``, sorted; None (with an error) when it cannot be
    listed or holds too many."""
    names: list[str] = []
    others: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                suffix = os.path.splitext(name)[1].lower()
                if suffix in OTHER_PICTURES and len(others) < C.MAX_TRAIN_IMAGES:
                    others.append(name)
                elif suffix in SUFFIXES:
                    names.append(name)
                    if len(names) > C.MAX_TRAIN_IMAGES:
                        scan.error(f"more than {C.MAX_TRAIN_IMAGES:,} pictures in "
                                   f"{scan.label!r}", "a character's LoRA needs tens of "
                                   "pictures; choose the best")
                        return None
    except OSError as exc:
        scan.error(f"cannot read the folder {scan.label!r}: {exc.strerror or exc}")
        return None
    for name in sorted(others):
        scan.leave_out(name, f"{os.path.splitext(name)[1].lower()} pictures are not read",
                       "convert it to png, jpg or webp")
    return sorted(names)


# (path, device, inode, size, mtime_ns) -> the picture's facts, or why it cannot be read
_memo: dict[tuple, TrainImage | str] = {}


def _check_picture(path: Path, name: str, scan: _Scan, data_filter: DataFilter
                   ) -> TrainImage | None:
    """The picture's facts (caption not yet set), or None when it was left out."""
    try:
        st = os.stat(path)  # follows a link: a link to a picture is fine
    except OSError as exc:
        scan.leave_out(name, f"cannot be read ({exc.strerror or exc})")
        return None
    if not stat.S_ISREG(st.st_mode):
        scan.leave_out(name, "not a regular file")
        return None
    if st.st_size > C.MAX_PICTURE_BYTES:
        scan.leave_out(name, f"{st.st_size:,} bytes, more than a picture storyboard trains on "
                             f"({C.MAX_PICTURE_BYTES:,})")
        return None
    memo_key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    facts = _memo.get(memo_key)
    if facts is None:
        facts = _memo[memo_key] = _read_picture(path)
    if isinstance(facts, str):
        scan.leave_out(name, facts, "replace it with a good copy, or remove it")
        return None
    w, h = facts.width, facts.height
    if min(w, h) < data_filter.min_side:
        scan.leave_out(name, f"too small: {w}x{h}, the shorter side is under "
                             f"{data_filter.min_side} pixels",
                       "use a larger picture, or set `min_side` under `train:`")
        return None
    if not data_filter.min_aspect <= w / h <= data_filter.max_aspect:
        scan.leave_out(name, f"aspect ratio {w / h:.2f} ({w}x{h}) is outside "
                             f"{data_filter.min_aspect:g} to {data_filter.max_aspect:g}",
                       "crop it closer to the character")
        return None
    return facts


def _read_picture(path: Path) -> TrainImage | str:
    digest = sha256_of(path)
    if digest is None:
        return "cannot be read"
    try:
        with open_picture(path) as im:
            width, height = im.size
    except Exception as exc:  # noqa: BLE001 - whatever the imaging library makes of bad bytes
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return f"broken or not a picture ({text})"
    return TrainImage(str(path), digest, width, height, "")


def _caption(folder: Path, name: str, scan: _Scan) -> str | None:
    """The caption in ``<stem>.txt`` beside the picture, or None (no usable caption file)."""
    txt = Path(name).stem + CAPTION_SUFFIX
    path = folder / txt
    if not os.path.lexists(path):
        return None
    try:
        data = read_bounded(path, C.MAX_CAPTION_BYTES)
    except OSError as exc:
        scan.warn(f"{scan.shown(txt)}: cannot be read ({exc.strerror or exc}); the default "
                  "caption is used")
        return None
    if len(data) > C.MAX_CAPTION_BYTES:
        scan.warn(f"{scan.shown(txt)}: more than {C.MAX_CAPTION_BYTES:,} bytes; the default "
                  "caption is used", "a caption is a sentence or two")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        scan.warn(f"{scan.shown(txt)}: not UTF-8 text; the default caption is used",
                  "save it as UTF-8")
        return None
    text = " ".join(text.split())
    if not text:
        scan.warn(f"{scan.shown(txt)}: empty; the default caption is used")
        return None
    if len(text) > C.MAX_TEXT_CHARS:
        scan.warn(f"{scan.shown(txt)}: {len(text):,} characters, more than "
                  f"{C.MAX_TEXT_CHARS:,}; the default caption is used")
        return None
    return text
