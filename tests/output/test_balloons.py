"""Speech balloons and narration boxes (issue 16, 5): vector shapes with real text, kept to a
bounded share of their panel, in the PNG and the PDF alike, part of what a page shows (its key)
but never of a panel's render."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import run_cli
from pagegold import check_page, panel
from pypdf import PdfReader

from storyboard.output.balloons import SHARE_H, SHARE_W, Shape
from storyboard.output.manifest import pages_key
from storyboard.output.pages import Cell, Picture, Text, compose_pages, plan_pages, write_pages
from storyboard.plan import compile_story
from storyboard.story import load_story
from storyboard.story.layout import BalloonSpec
from storyboard.story.schema import LayoutSpec

LONG = ("A very long speech that goes on and on about the sea, the storm, the boats and "
        "everything else the keeper has seen over forty years.")


def cells() -> list[Cell]:
    return [
        Cell("a", 1, panel(256, 256, 0), "The storm.", (
            BalloonSpec(text="Is anyone out there?"),
            BalloonSpec(text="Three days of rain.", kind="narration", at="bottom-right"))),
        Cell("b", 2, panel(256, 192, 120), "Ada.", (
            BalloonSpec(text="他们回家了吗？", at="top-right"),)),
        Cell("c", 3, panel(192, 256, 200), "", (BalloonSpec(text=LONG, at="bottom"),)),
    ]


def test_balloons_stay_in_their_share_of_the_panel_and_keep_all_their_words():
    (page,) = plan_pages(cells(), LayoutSpec(columns=3), "Balloons")
    pictures = [i.box for i in page.items if isinstance(i, Picture)]
    shapes = [i for i in page.items if isinstance(i, Shape) and i.kind != "tail"]
    assert len(shapes) == 4
    for shape in shapes:
        inner = next(p for p in pictures if p.x <= shape.box.x < p.x + p.w
                     and p.y <= shape.box.y < p.y + p.h)
        assert shape.box.x + shape.box.w <= inner.x + inner.w
        assert shape.box.y + shape.box.h <= inner.y + inner.h
        if shape.box.h < inner.h * SHARE_H:  # a short text fits its share
            assert shape.box.w <= inner.w * SHARE_W
    texts = " ".join(t.text for t in page.items if isinstance(t, Text))
    for words in ("Is anyone out there?", "Three days of rain.", "他们回家了吗？"):
        assert words.replace(" ", "") in texts.replace(" ", "")
    assert LONG.replace(" ", "") in texts.replace(" ", ""), "a long text is never cut"
    # The narration box sits in its corner, the speech oval in its own.
    a = pictures[0]
    oval, box = shapes[0].box, shapes[1].box
    assert oval.x < a.x + a.w / 2 and oval.y < a.y + a.h / 2
    assert box.x > a.x + a.w / 2 and box.y > a.y + a.h / 2


def test_balloons_are_vector_shapes_and_text_in_the_pdf(tmp_path):
    # On a sheet: the content is scaled and moved, balloons with it.
    pages = plan_pages(cells(), LayoutSpec(columns=3, page_size="A5", dpi=150), "Balloons")
    (page,) = pages
    pictures = [i.box for i in page.items if isinstance(i, Picture)]
    for shape in (i for i in page.items if isinstance(i, Shape) and i.kind != "tail"):
        assert any(p.x <= shape.box.x and shape.box.x + shape.box.w <= p.x + p.w
                   and p.y <= shape.box.y and shape.box.y + shape.box.h <= p.y + p.h
                   for p in pictures)
    write_pages(pages, tmp_path, "s")
    pdf = PdfReader(tmp_path / "story.pdf")
    page = pdf.pages[0]
    assert len(page.images) == 3, "one image a panel: the balloons are not pictures"
    text = "".join(page.extract_text().split())
    for words in ("Is anyone out there?", "Three days of rain.", "他们回家了吗？"):
        assert "".join(words.split()) in text
    content = page.get_contents().get_data()
    assert b" c" in content or b" c\n" in content, "curves: the ovals"


def test_a_balloon_changes_the_pages_but_not_the_render(story_file):
    text = ("version: 1\nmodel: tiny-sdxl\npanels:\n  - id: p1\n    prompt: a cat\n"
            "    balloons:\n      - text: {}\n")
    one = load_story(story_file(text.format("Hello"), "one.yaml"))
    two = load_story(story_file(text.format("Goodbye"), "two.yaml"))
    (job1,), (job2,) = compile_story(one), compile_story(two)
    assert job1.hash == job2.hash
    outcomes = [[SimpleNamespace(job=job, path=None)] for job in (job1, job2)]
    assert pages_key(one, outcomes[0]) != pages_key(two, outcomes[1])


def test_validate_checks_balloons(story_file):
    story = story_file("version: 1\nmodel: tiny-sdxl\npanels:\n  - id: p1\n    prompt: a cat\n"
                       "    balloons:\n      - {text: Hi, at: top-lft}\n"
                       "  - id: p2\n    prompt: a dog\n    balloons:\n"
                       "      - {text: One}\n      - {text: Two}\n")
    result = run_cli("validate", str(story))
    assert result.exit_code == 2
    assert "story.yaml:7:24: panels[0].balloons[0].at: expected one of" in result.output
    assert "did you mean 'top-left'?" in result.output
    assert "two balloons are `at: top-left`; they would cover each other" in result.output
    assert "put one at top-right" in result.output
    emoji = story_file("version: 1\nmodel: tiny-sdxl\npanels:\n  - id: p3\n    prompt: a bird\n"
                       "    balloons:\n      - {text: 'Hi 😀'}\n", "emoji.yaml")
    result = run_cli("validate", str(emoji))
    assert result.exit_code == 0
    assert "emoji.yaml:7:16: warning: panels[0].balloons[0].text: panel 'p3': balloon 1 has " \
           "characters the built-in font (Noto Sans CJK) cannot draw: '😀'" in result.output


def test_golden_balloons():
    (page,) = compose_pages(cells(), LayoutSpec(columns=3), "Balloons")
    check_page("balloons", page)
