"""Which files in an output folder storyboard may replace or delete: only the ones it wrote.

In: an output folder (its ``manifest.json`` read back and validated, never trusted) and the
names a command is about to write or remove there. Out: ``Outputs``: ``claim(names)`` raises a
``UserError`` naming every file in the way that storyboard did not write, before any work;
``owns(name)`` answers for one file (the stale-page sweep and `clean` ask it before removing
anything); ``digests(paths)`` gives the manifest its record of what was written.

People build into folders that hold their own files, and a page or PDF there may be theirs. A
file is storyboard's when
- the manifest in the folder records exactly its bytes (sha256),
- the manifest records a file of that name and what is there now is damaged (cut short,
  emptied, noise: not readable as a PNG, PDF or zip at all), so nothing in it can be wanted, or
- it carries storyboard's own mark, which survives a build killed before its manifest was
  written: a panel PNG's validated ``storyboard`` record, a page PNG's ``storyboard-page``
  chunk, a PDF whose ``/Creator`` is storyboard, a CBZ whose zip comment is storyboard, a
  manifest with storyboard's schema.
Anything else (a user's own ``page-1.png``, a page edited and saved by an image editor, a link
put in the way) is left alone, and the command says so instead of writing. A missing file is
free to write.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..paths import open_regular, sha256_of
from ..story.records import RecordError
from .cbz import CBZ_MARK
from .manifest import MANIFEST, read_manifest
from .pnginfo import png_text, read_panel_png

PAGE_MARK = "storyboard-page"  # the PNG text chunk every page and contact sheet carries
# What storyboard's PDFs say in their document information: as fpdf2 writes it (output/pdf.py),
# and as Pillow wrote it (UTF-16BE) in the PDFs of storyboard before it.
PDF_CREATOR = "storyboard"
_PDF_MARKS = (b"/Creator (" + PDF_CREATOR.encode() + b")",
              b"/Creator (\xfe\xff" + PDF_CREATOR.encode("utf-16-be") + b")")
_PDF_TAIL = 64 << 10  # the information dictionary comes after the pages


@dataclass
class Outputs:
    """An output folder and what its manifest says storyboard wrote there."""

    folder: Path
    recorded: dict[str, str] = field(default_factory=dict)  # name -> sha256 of its bytes
    # Names a schema-1 manifest (storyboard before digests and marks) lists: its files are
    # known by name only.
    listed: frozenset[str] = frozenset()

    @classmethod
    def read(cls, folder: Path) -> Outputs:
        manifest = read_manifest(folder)
        if manifest is None:
            return cls(folder)
        listed = frozenset(manifest.files) | frozenset(
            p["file"] for p in manifest.panels if isinstance(p.get("file"), str)) \
            if manifest.schema_version == 1 else frozenset()
        return cls(folder, dict(manifest.digests), listed)

    def owns(self, name: str) -> bool:
        """Whether the file at ``name`` (relative to the folder) may be replaced or removed:
        it is missing, or storyboard wrote it."""
        path = self.folder / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False  # a link, a folder or a device in the way is someone's
        if name in self.recorded and (sha256_of(path) == self.recorded[name]
                                      or _damaged(path)):
            return True  # what it wrote, or what is left of it after a crash or a full disk
        return name in self.listed or _marked(path)

    def kept(self) -> dict[str, str]:
        """The records of files storyboard wrote before that are still there: a build that
        writes only some panels must not forget it wrote the others."""
        return {name: digest for name, digest in self.recorded.items()
                if os.path.lexists(self.folder / name)}

    def claim(self, names: Iterable[str]) -> None:
        """Refuse, before any work, to write over files storyboard did not write."""
        foreign = sorted({name for name in names if not self.owns(name)})
        if not foreign:
            return
        shown = ", ".join(str(self.folder / n) for n in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        one = len(foreign) == 1
        raise UserError(f"{shown}{more}: storyboard did not write "
                        f"{'this file' if one else 'these files'}, so it will not replace "
                        f"{'it' if one else 'them'}; move {'it' if one else 'them'} elsewhere, "
                        "or give -o another folder")


def digests(folder: Path, paths: Iterable[Path]) -> dict[str, str]:
    """The manifest's record of the files a command wrote: name in the folder -> sha256.
    Files are hashed side by side (hashlib and reads let go of the interpreter): a 40-panel
    build's 300 MB took 0.4 s one after another, after its last page was written."""
    from concurrent.futures import ThreadPoolExecutor

    paths = list(paths)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(paths))),
                            thread_name_prefix="storyboard-digest") as pool:
        sums = list(pool.map(sha256_of, paths))
    return {str(p.relative_to(folder)): digest for p, digest in zip(paths, sums)}


def _marked(path: Path) -> bool:
    """Whether the file carries storyboard's own mark (module docstring)."""
    try:
        if path.suffix == ".png":
            text = png_text(path, keys=(PAGE_MARK, "storyboard"))
            return PAGE_MARK in text or "storyboard" in text and read_panel_png(path)[1] is not None
        if path.suffix == ".pdf":
            with open_regular(path) as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - _PDF_TAIL))
                tail = fh.read(_PDF_TAIL)
                return any(mark in tail for mark in _PDF_MARKS)
        if path.suffix == ".cbz":
            with open_regular(path) as fh, zipfile.ZipFile(fh) as archive:
                return archive.comment == CBZ_MARK
        if path.name == MANIFEST:
            return read_manifest(path.parent) is not None
    except (OSError, RecordError, zipfile.BadZipFile):
        return False
    return False


def _damaged(path: Path) -> bool:
    """Whether a file is no longer readable as what it claims to be (cut short, emptied,
    overwritten with noise): then it holds nothing anyone could want back."""
    try:
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.verify()  # every chunk and checksum, to the end
            return False
        if path.suffix == ".pdf":
            with open_regular(path) as fh:
                head = fh.read(5)
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 1024))
                return head != b"%PDF-" or b"%%EOF" not in fh.read()
        if path.suffix == ".cbz":
            # Cut short or noise: no central directory at its end. Members are not inflated
            # (a zip someone put here may be a bomb).
            with open_regular(path) as fh, zipfile.ZipFile(fh):
                return False
    except Exception:  # noqa: BLE001 - whatever Pillow makes of damaged bytes
        return True
    return False


def page_mark(story: str, page: int, pages: int) -> str:
    """The ``storyboard-page`` chunk's text for one page of a story."""
    return json.dumps({"story": story, "page": page, "pages": pages}, ensure_ascii=False,
                      sort_keys=True)
