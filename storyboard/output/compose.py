"""Pages composed while panels still render, so a build ends soon after its last panel.

``write_pages`` writes them all at once, after the last panel; ``PageComposer`` as they come.

In (``PageComposer``): the story's panels as page slots (``Slot``: id, number, caption, balloons, the size the
panel renders at), the layout, title, story id, output folder and the PDF's characters
(``pdf.story_chars``); then, from the build's thread, each panel's file as it lands
(``arrived``: a cached one at once, a rendered one when its PNG is written), and at the end
whether every panel came (``finish``). Out: the files ``write_pages`` writes, with the
same bytes: page-N.png, story.pdf and story.cbz.

A page is drawn as soon as all its panels are in, and added to the PDF as soon as the pages
before it are. Where it goes on the sheet depends on every page (``plan_pages`` gives all
pages the biggest one's size), so the pages are first planned from the panels' sizes alone,
which the renders then have. Drawing, and adding to the PDF, happen on one worker thread: a
FreeType face must not be used by two threads at once, and the PDF measures its text with the
same faces. The PNGs are encoded, and each page written, on other threads (zlib lets go of the
interpreter). When a panel did not come (it failed) or came at another size, the plan no
longer holds: ``finish`` composes every page again, as ``write_pages`` would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..paths import atomic_write_bytes, commit_staged, stage_bytes
from .cbz import CBZ, write_cbz
from .fonts import save_metrics, warm_metrics
from .geometry import per_page
from .manifest import PDF
from .ownership import page_mark
from .pages import Cell, Page, bled, page_png, placed, plan_page, plan_pages, rasterize
from .pdf import PdfWriter, font_chars, write_pdf
from .pdfimages import describe


@dataclass(frozen=True)
class Slot:
    """A panel's place in the pages, known before it is rendered."""

    panel: str
    number: int  # 1-based, as the page shows it
    caption: str
    balloons: tuple
    size: tuple[int, int]  # the pixels it renders at


class PageComposer:
    """Pages of ``slots`` composed as their panels arrive (see the module docstring). Use as
    a context manager: leaving it stops the worker, whatever happened."""

    def __init__(self, slots: list[Slot], layout, title: str, story: str, out: Path,
                 chars: str, *, defer: bool = False):
        self.slots, self.layout, self.title = slots, layout, title
        self.story, self.out, self.chars = story, out, chars
        count = per_page(layout, len(slots))
        self.chunks = [list(range(i, min(i + count, len(slots))))
                       for i in range(0, len(slots), count)] or [[]]
        self.paths: dict[int, Path] = {}
        self.pages: dict[int, Page] = {}  # drawn, by page index (the worker's)
        self.pngs: dict[int, Future] = {}
        self.queued: set[int] = set()
        self.decoded: dict[int, Future] = {}  # panel index -> its pixels, read ahead
        self.pictures: dict[int, tuple] = {}  # panel index -> (name, PDF picture), made ahead
        self.added = 0  # pages in the PDF, from the first (the worker's)
        self.stale = False  # a panel came at another size than planned (the worker's)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storyboard-page")
        self.encoders = ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2) - 1)),
                                           thread_name_prefix="storyboard-png")
        self.started: Future | None = None
        self.timings: dict[str, float] = {}  # filled by finish
        self.staged: dict[int, Path] = {}  # page index -> its PNG, written, not yet in place
        if not defer:
            self.begin()

    def __enter__(self) -> PageComposer:
        return self

    def __exit__(self, *exc) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)
        self.encoders.shutdown(wait=True, cancel_futures=True)
        for tmp in self.staged.values():  # pages never put in place: the last good ones stay
            tmp.unlink(missing_ok=True)
        writer = getattr(self, "pdf", None)
        if writer is not None:
            writer.close()

    # -- on the build's thread ---------------------------------------------------------------

    def begin(self) -> None:
        """Start planning the pages and preparing the PDF (once), then draw the pages whose
        panels are all in. A build defers this until its model is loaded: the first pages
        load fonts and libraries for seconds, in this interpreter, and would slow the model's
        loading, which needs it too; once the GPU renders, this process has time to spare."""
        if self.started is None:
            self.started = self.worker.submit(self._start)
            self._queue_complete()

    def arrived(self, index: int, path: Path) -> None:
        """Panel ``index`` (story order) is in ``path``; draw each page now complete (once
        ``begin`` was called)."""
        self.paths[index] = path
        if self.started is not None:
            self._decode(index)  # while the GPU renders the next panels
            self._queue_complete()

    def _decode(self, index: int) -> None:
        # Read on the encoders, side by side: one after another on the worker, the eight
        # panels of the last page took half a second after the last panel (PNG decoding lets
        # go of the interpreter).
        if index not in self.decoded:
            self.decoded[index] = self.encoders.submit(self._read, index, self.paths[index])

    def _read(self, index: int, path: Path):
        """Panel ``index``'s pixels; and, deflated for the PDF (``pdfimages.describe``), the
        picture the page will show when the panel needs no scaling to fit its box."""
        image = _read_rgb(path)
        described = describe(image)
        if described is not None:
            self.pictures[index] = described
        return image

    def _queue_complete(self) -> None:
        for k, chunk in enumerate(self.chunks):
            if k not in self.queued and all(i in self.paths for i in chunk):
                self.queued.add(k)
                for i in chunk:
                    self._decode(i)
                self.worker.submit(self._compose, k, {i: self.paths[i] for i in chunk})

    def finish(self, came: Callable[[int], bool]) -> list[Path]:
        """Write the pages, the PDF and the CBZ; ``came(index)``: whether that panel is there
        (rendered or cached). The paths written, as ``write_pages`` returns them."""
        self.begin()
        self.started.result()
        if not all(came(i) for i in range(len(self.slots))) or \
                set(self.paths) != set(range(len(self.slots))):
            return self._again(came)
        self._queue_complete()  # (all queued already when every panel arrived)
        t0 = time.perf_counter()
        composed = self.worker.submit(lambda: time.perf_counter()).result()
        pdf = self.worker.submit(self._finish_pdf).result()
        if pdf is None:  # a panel came at another size: the plan did not hold
            return self._again(came)
        t1 = time.perf_counter()
        pngs = [self.pngs[k].result() for k in range(len(self.chunks))]
        t2 = time.perf_counter()
        written = write_outputs(self.out, pngs, pdf, self.title,
                                self.layout.direction == "rtl", staged=self.staged)
        # Where the wait after the last panel went (a build reports it in its "pages" event).
        self.timings = {"composing": round(composed - t0, 3), "pdf": round(t1 - composed, 3),
                        "png": round(t2 - t1, 3), "writing": round(time.perf_counter() - t2, 3)}
        return written

    def _again(self, came: Callable[[int], bool]) -> list[Path]:
        self.worker.submit(lambda: None).result()  # the worker is idle: faces are free
        cells = [self._cell(i, self.paths.get(i) if came(i) else None)
                 for i in range(len(self.slots))]
        return write_pages(plan_pages(cells, self.layout, self.title), self.out, self.story,
                           self.chars)

    # -- on the worker ---------------------------------------------------------------------

    def _start(self) -> None:
        from PIL import Image

        # The fonts' measurements first, in processes of their own where not kept from an
        # earlier build: measured here, they would hold the interpreter from the render loop.
        warm_metrics(self.layout.font, self.chars)
        # Mode "1": an eighth of a byte a pixel; only the size counts here.
        planned = plan_pages([Cell(s.panel, s.number, Image.new("1", s.size), s.caption,
                                   s.balloons) for s in self.slots], self.layout, self.title)
        # Each page is drawn as plan_pages draws it: on the biggest page's size, then grown by
        # the bleed, at the dpi it is printed at.
        b = planned[0].bleed
        self.size = (planned[0].width - 2 * b, planned[0].height - 2 * b)
        self.dpi = planned[0].dpi
        # Cutting the fonts to the story's characters is the slow part: done while rendering.
        self.pdf = PdfWriter(planned[0].font, self.title, self.layout.direction == "rtl",
                             font_chars(planned, self.chars))
        save_metrics()

    def _compose(self, k: int, paths: dict[int, Path]) -> None:
        cells = [self._cell(i, paths[i], self.decoded.pop(i).result()) for i in self.chunks[k]]
        if any(c.image.size != self.slots[i].size for c, i in zip(cells, self.chunks[k])):
            self.stale = True
            return
        page = replace(bled(placed(plan_page(cells, self.layout, self.title, k,
                                             len(self.chunks)), *self.size, centre_y=False),
                            self.layout), dpi=self.dpi)
        self.pages[k] = page
        self.pngs[k] = self.encoders.submit(
            self._encode_and_stage, k, rasterize(page),
            page_mark(self.story, k + 1, len(self.chunks)), page.dpi)
        while self.added in self.pages:  # the PDF takes its pages in order
            ready = dict(self.pictures.pop(i) for i in self.chunks[self.added]
                         if i in self.pictures)  # (what is not used is dropped with it)
            self.pdf.add(self.pages[self.added], ready)
            self.added += 1

    def _encode_and_stage(self, k: int, image, mark: str, dpi: int | None) -> bytes:
        # Written and synced as soon as it is encoded, not all after the last panel; renamed
        # into place only in ``finish``, so a build stopped before then leaves the last good
        # pages (and a temporary file the next build removes). A page composed again
        # (``_again``) is written again, and this one dropped on leaving.
        data = page_png(image, mark, dpi)
        self.staged[k] = stage_bytes(self.out / f"page-{k + 1}.png", data)
        return data

    def _finish_pdf(self) -> bytes | None:
        if self.stale or self.added != len(self.chunks):
            return None
        return self.pdf.finish()

    def _cell(self, i: int, path: Path | None, image=None) -> Cell:
        s = self.slots[i]
        if image is None and path is not None:
            image = _read_rgb(path)
        return Cell(s.panel, s.number, image, s.caption, s.balloons)


def _read_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def write_pages(pages: list[Page], out_dir: Path, story: str, chars: str = "") -> list[Path]:
    """page-N.png for each page (with its ``dpi`` in pHYs), story.pdf with all of them
    (``pdf.write_pdf``: text as text, the panels lossless; ``chars``: its fonts' characters,
    ``pdf.story_chars``) and story.cbz (``cbz.write_cbz``: the PNGs and ComicInfo.xml);
    returns the paths written. Each carries storyboard's mark (``ownership``), so a later
    build knows it may replace it even when this one was killed before its manifest was
    written. The PNGs are encoded on threads while the PDF is written (zlib and Pillow's
    encoder let go of the interpreter): after the last panel a writer waits for the slowest
    of them, not their sum. Drawing stays on this thread: a FreeType face is not safe to
    use from two threads at once, and the PDF measures text with the same faces."""
    from concurrent.futures import ThreadPoolExecutor

    title, rtl = pages[0].title, pages[0].direction == "rtl"
    drawn = [rasterize(page) for page in pages]
    workers = max(1, min(len(pages), (os.cpu_count() or 2) - 1, 8))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storyboard-page") as pool:
        encoded = [pool.submit(page_png, image, page_mark(story, n, len(pages)), page.dpi)
                   for n, (image, page) in enumerate(zip(drawn, pages), 1)]
        pdf = write_pdf(pages, title, rtl, chars)
        pngs = [future.result() for future in encoded]
    save_metrics()  # what drawing measured, for the next build
    return write_outputs(out_dir, pngs, pdf, title, rtl)


def write_outputs(out_dir: Path, pngs: list[bytes], pdf: bytes, title: str,
                  rtl: bool, staged: dict[int, Path] | None = None) -> list[Path]:
    """The pages' files from their bytes: page-N.png (renamed into place where ``staged``
    holds it already written, by page index), story.pdf and story.cbz (made here from the
    PNGs); the paths written."""
    written = []
    for n, data in enumerate(pngs, 1):
        path = out_dir / f"page-{n}.png"
        tmp = (staged or {}).pop(n - 1, None)
        if tmp is not None:
            commit_staged(tmp, path)
        else:
            atomic_write_bytes(path, data)
        written.append(path)
    # Side by side: each write waits for its disk sync, and the archive is made meanwhile.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="storyboard-pdf") as other:
        pdf_written = other.submit(atomic_write_bytes, out_dir / PDF, pdf)
        atomic_write_bytes(out_dir / CBZ, write_cbz(pngs, title, rtl))
        pdf_written.result()
    return written + [out_dir / PDF, out_dir / CBZ]
