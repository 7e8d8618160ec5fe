"""story.cbz (issue 16, 3): the page PNGs and ComicInfo.xml in a zip that comic readers open,
the same bytes for the same pages, and storyboard's own by its mark."""

from __future__ import annotations

import io
import zipfile
from xml.etree import ElementTree

from pagegold import panel

from storyboard.output.cbz import write_cbz
from storyboard.output.ownership import Outputs
from storyboard.output.pages import Cell, plan_pages
from storyboard.output.compose import write_pages
from storyboard.story.schema import LayoutSpec


def pages(direction: str = "ltr", count: int = 11):
    cells = [Cell(f"p{i}", i + 1, panel(48, 48, 20 * i), f"caption {i}") for i in range(count)]
    return plan_pages(cells, LayoutSpec(columns=1, panels_per_page=1, direction=direction),
                      "Cats & <Dogs>")


def test_the_cbz_holds_the_pages_in_order_and_comicinfo(tmp_path):
    written = write_pages(pages(), tmp_path, "story")
    assert tmp_path / "story.cbz" in written
    with zipfile.ZipFile(tmp_path / "story.cbz") as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert names[0] == "ComicInfo.xml"
        # Zero-padded, so page 10 sorts after page 9 in readers that sort names.
        assert names[1:] == [f"page-{n:03d}.png" for n in range(1, 12)]
        for n in range(1, 12):
            assert archive.read(f"page-{n:03d}.png") == (tmp_path / f"page-{n}.png").read_bytes()
        info = ElementTree.fromstring(archive.read("ComicInfo.xml"))
        assert info.findtext("Title") == "Cats & <Dogs>"
        assert info.findtext("PageCount") == "11"
        assert info.findtext("Manga") == "No"
        assert len(info.find("Pages")) == 11
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in archive.infolist())
        assert archive.comment == b"storyboard"


def test_an_rtl_story_is_marked_manga_right_to_left():
    data = write_cbz([b"png"], "Manga", rtl=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = ElementTree.fromstring(archive.read("ComicInfo.xml"))
    assert info.findtext("Manga") == "YesAndRightToLeft"


def test_the_same_pages_give_the_same_cbz_bytes(tmp_path, monkeypatch):
    import time

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_pages(pages(count=2), tmp_path / "a", "story")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400 * 400)  # a year later
    monkeypatch.setattr(time, "localtime", lambda *a: time.gmtime(86400 * 9000))
    write_pages(pages(count=2), tmp_path / "b", "story")
    assert (tmp_path / "a" / "story.cbz").read_bytes() == \
        (tmp_path / "b" / "story.cbz").read_bytes()


def test_storyboard_knows_its_cbz_and_leaves_anyone_elses(tmp_path):
    write_pages(pages(count=1), tmp_path, "story")
    assert Outputs(tmp_path).owns("story.cbz")  # by its mark, with no manifest
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("001.png", b"a scan")
    (tmp_path / "story.cbz").write_bytes(buf.getvalue())
    assert not Outputs(tmp_path).owns("story.cbz")
    # Recorded by the manifest and cut short since: nothing in it can be wanted.
    recorded = Outputs(tmp_path, {"story.cbz": "0" * 64})
    (tmp_path / "story.cbz").write_bytes(buf.getvalue()[:40])
    assert recorded.owns("story.cbz")
