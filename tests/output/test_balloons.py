"""Speech balloons and narration boxes (issue 16, 5): vector shapes with real text, kept to a
bounded share of their panel, in the PNG and the PDF alike, part of what a page shows (its key)
but never of a panel's render."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import run_cli
from pagegold import check_page, panel
from pypdf import PdfReader

from storyboard.output.balloons import SHARE_H, SHARE_W, Shape
from storyboard.output.manifest import pages_key
from storyboard.output.pages import Cell, Picture, Text, compose_pages, plan_pages
from storyboard.output.compose import write_pages
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
                       "    balloons:\n      - {text: 'Hi 😀ᚠ'}\n", "emoji.yaml")
    result = run_cli("validate", str(emoji))
    assert result.exit_code == 0
    assert "emoji.yaml:7:16: warning: panels[0].balloons[0].text: panel 'p3': balloon 1 has " \
           "characters the built-in font (Noto Sans CJK) and the emoji font (Noto Emoji) " \
           "cannot draw: 'ᚠ'" in result.output and "'😀'" not in result.output


def test_golden_balloons():
    (page,) = compose_pages(cells(), LayoutSpec(columns=3), "Balloons")
    check_page("balloons", page)


def kinds() -> list[Cell]:
    return [
        Cell("a", 1, panel(256, 256, 0), "Thinking.", (
            BalloonSpec(text="Where did the boats go?", kind="thought"),
            BalloonSpec(text="Hmm.", kind="thought", at="bottom-right", tail="up-left"))),
        Cell("b", 2, panel(256, 256, 120), "Shouting.", (
            BalloonSpec(text="LOOK OUT!", kind="shout", at="top-right", tail="down-left"),
            BalloonSpec(text="快跑！", kind="shout", at="bottom-left", tail="none"))),
        Cell("c", 3, panel(256, 256, 200), "Placed.", (
            BalloonSpec(text="Over here.", at=[0.5, 0.45], tail="down"),
            BalloonSpec(text="Left!", at="top-left", tail="left"),
            BalloonSpec(text="Night fell.", kind="narration", at="bottom-right"))),
    ]


def test_thought_shout_tails_and_shares():
    (page,) = plan_pages(kinds(), LayoutSpec(columns=3), "Balloon kinds")
    pictures = [i.box for i in page.items if isinstance(i, Picture)]
    shapes = [i for i in page.items if isinstance(i, Shape)]

    def inside(box, p):
        return p.x <= box.x and box.x + box.w <= p.x + p.w and p.y <= box.y \
            and box.y + box.h <= p.y + p.h

    # Every shape, tails and bubbles too, stays in its panel, and a balloon in its share.
    for shape in shapes:
        assert any(inside(shape.box, p) for p in pictures), shape
        for x, y in shape.points:
            assert any(p.x <= x <= p.x + p.w and p.y <= y <= p.y + p.h for p in pictures)
    clouds = [s for s in shapes if s.kind == "cloud"]
    bursts = [s for s in shapes if s.kind == "burst"]
    assert len(clouds) == 2 and len(bursts) == 2
    for s in clouds + bursts:
        assert s.box.w <= pictures[0].w * SHARE_W and s.box.h <= pictures[0].h * SHARE_H
    assert [s.kind for s in shapes].count("bubble") == 6, "three bubbles a thought"
    # A thought has bubbles, not a tail; a burst's tail goes the way it is told, and
    # `tail: none` has none; narration never has one.
    tails = [s for s in shapes if s.kind == "tail"]
    assert len(tails) == 3  # LOOK OUT!, Over here., Left!
    look = next(s for s in bursts if s.box.x > pictures[1].x + pictures[1].w / 2)
    tip = tails[0].points[2]
    assert tip[0] < look.box.x + look.box.w / 2 and tip[1] > look.box.y + look.box.h / 2
    # The trail of the bottom-right thought goes up and left, smaller and smaller.
    hmm = clouds[1]
    trail = [s.box for s in shapes if s.kind == "bubble"][3:]
    assert all(b.x < hmm.box.x + hmm.box.w / 2 and b.y < hmm.box.y + hmm.box.h / 2
               for b in trail)
    assert trail[0].w > trail[1].w > trail[2].w
    # at: [0.5, 0.45]: across the middle, a little above it; its tail straight down.
    c = pictures[2]
    here = next(s.box for s in shapes if s.kind == "oval" and s.box.y > c.y + c.h / 4)
    assert abs((here.x + here.w / 2) - (c.x + c.w / 2)) <= 2
    assert here.y + here.h / 2 < c.y + c.h / 2
    down = tails[1].points
    assert down[2][0] == pytest.approx(here.x + here.w / 2) and down[2][1] > here.y + here.h


def test_golden_balloon_kinds():
    (page,) = compose_pages(kinds(), LayoutSpec(columns=3), "Balloon kinds")
    check_page("balloon-kinds", page)


def test_thought_and_shout_are_vector_polygons_in_the_pdf(tmp_path):
    pages = plan_pages(kinds(), LayoutSpec(columns=3, page_size="A5", dpi=150), "Kinds")
    write_pages(pages, tmp_path, "s")
    page = PdfReader(tmp_path / "story.pdf").pages[0]
    assert len(page.images) == 3
    content = page.get_contents().get_data()
    # A cloud is a closed path of many points: at least a hundred line segments each.
    assert content.count(b" l") > 2 * 100
    assert "LOOKOUT!" in "".join(page.extract_text().split())


@pytest.mark.parametrize("kind", ["speech", "thought", "shout"])
def test_a_short_text_keeps_to_one_line_where_the_share_has_room(kind):
    """A short, wide text block fits an oval nearly as wide as the oval: a shout of two words
    is not wrapped after the first (its spikes' inner oval is narrow, but wide enough)."""
    from storyboard.output.balloons import GROW, OVAL

    cell = Cell("a", 1, panel(256, 256, 0), "", (BalloonSpec(text="LOOK OUT!", kind=kind),))
    (page,) = plan_pages([cell], LayoutSpec(columns=1, title=False), "")
    lines = [i for i in page.items if isinstance(i, Text)]
    assert [t.text for t in lines] == ["LOOK OUT!"]
    # The line (its advance by its ascent and descent) lies inside the shape's inner oval.
    (shape,) = [i for i in page.items if isinstance(i, Shape) and i.kind != "tail"
                and i.kind != "bubble"]
    box, t = shape.box, lines[0]
    k = GROW[kind] / OVAL
    cx, cy, rx, ry = box.x + box.w / 2, box.y + box.h / 2, box.w / 2 / k, box.h / 2 / k
    from storyboard.output.pages import load_font

    font = load_font(None, t.size)
    ascent, descent = font.getmetrics()
    for x in (t.x, t.x + font.getlength(t.text)):
        for y in (t.y - ascent, t.y + descent):
            assert ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0, (kind, x, y)
    assert box.w <= 256 * SHARE_W and box.h <= 256 * SHARE_H
