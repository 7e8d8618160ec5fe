"""``story.cbz``: the pages as a comic book archive, for comic readers.

In: the page PNGs' bytes in order, the story's title, the reading direction. Out: the bytes of
a zip holding ``ComicInfo.xml`` (the ComicRack metadata readers use: title, page count,
``Manga: YesAndRightToLeft`` for rtl stories, and the pages) and the pages as
``page-001.png``, ... (zero-padded, so readers that sort names alphabetically keep the order).

Same pages, same bytes: entries sorted by name, every timestamp 1980-01-01 (the zip format's
first day, as reproducible wheels use), fixed permissions and host, PNGs stored as they are
(they are compressed already) and the XML deflated at a fixed level. The archive's comment is
storyboard's mark (``ownership``), read from the end of the file like the PDF's ``/Creator``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from xml.sax.saxutils import escape

CBZ = "story.cbz"
CBZ_MARK = b"storyboard"  # the zip comment every storyboard CBZ carries
COMIC_INFO = "ComicInfo.xml"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def page_names(count: int) -> list[str]:
    width = max(3, len(str(count)))
    return [f"page-{n:0{width}d}.png" for n in range(1, count + 1)]


def comic_info(title: str, pages: int, rtl: bool) -> str:
    """ComicInfo.xml (the ComicRack schema, version 2.0)."""
    cover = ' Type="FrontCover"'
    listed = "\n".join(f'    <Page Image="{i}"{cover if i == 0 else ""} />'
                       for i in range(pages))
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<ComicInfo xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
            f"  <Title>{escape(title)}</Title>\n"
            f"  <PageCount>{pages}</PageCount>\n"
            f"  <Manga>{'YesAndRightToLeft' if rtl else 'No'}</Manga>\n"
            "  <Notes>Composed by storyboard</Notes>\n"
            f"  <Pages>\n{listed}\n  </Pages>\n"
            "</ComicInfo>\n")


def write_cbz(pngs: Sequence[bytes], title: str, rtl: bool = False) -> bytes:
    """The CBZ of the pages ``pngs`` (PNG bytes, in reading order)."""
    entries = dict(zip(page_names(len(pngs)), pngs))
    entries[COMIC_INFO] = comic_info(title, len(pngs), rtl).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.create_system = 3  # unix, wherever it is written
            info.external_attr = 0o644 << 16
            xml = name == COMIC_INFO
            info.compress_type = zipfile.ZIP_DEFLATED if xml else zipfile.ZIP_STORED
            archive.writestr(info, entries[name], compresslevel=9 if xml else None)
        archive.comment = CBZ_MARK
    return buf.getvalue()
