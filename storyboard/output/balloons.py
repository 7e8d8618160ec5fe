"""Speech balloons and narration boxes over a panel: where they go and how big.

In: a panel's ``BalloonSpec`` list, the box of its picture on the page, the page font and the
captions' size. Out: ``Shape`` items (an oval, a box, a tail) and ``pages.Text`` lines, drawn
after the picture by the PNG rasterizer and the PDF writer alike (vector shapes and real text in
the PDF).

Each balloon keeps to a bounded share of its panel (``SHARE_W`` of its width, ``SHARE_H`` of its
height), in the corner or edge its ``at`` names, so a balloon never hides the picture it talks
about; its text starts at the captions' size and shrinks (to half of it at least) until it fits
that share; a text too long even then makes the balloon taller, up to the whole panel, and is
never cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from .geometry import Box, line_height

SHARE_W = 0.5  # the most of a panel's width a balloon takes
SHARE_H = 0.34  # ... and of its height
OVAL = 1.42  # an oval around a w x h block of text is about sqrt(2) times it each way
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Shape:
    kind: str  # "oval", "box" or "tail" (a triangle through ``points``)
    box: Box
    points: tuple[tuple[float, float], ...] = ()
    fill: tuple[int, int, int] = WHITE
    outline: tuple[int, int, int] = (0, 0, 0)
    width: int = 1  # the outline's, in pixels


def balloon_items(balloons, inner: Box, font_path: str | None, fs: int, ink) -> list:
    """The shapes and text lines of a panel's balloons, ``inner`` being its picture's box."""
    from .pages import Text, load_font, wrap_text

    items: list = []
    margin = max(2, inner.w // 40)
    stroke = max(1, fs // 12)
    for balloon in balloons:
        oval = balloon.kind == "speech"
        pad = max(2, fs // 3)
        grow = OVAL if oval else 1.0
        max_w = int(inner.w * SHARE_W - 2 * margin)
        max_h = int(inner.h * SHARE_H - 2 * margin)
        text_w = max(1, int(max_w / grow) - 2 * pad)
        text_h = max(1, int(max_h / grow) - 2 * pad)
        size = fs
        while True:
            font = load_font(font_path, size)
            lines = wrap_text(balloon.text, font, text_w)
            tall = len(lines) * line_height(size)
            if tall <= text_h or size <= max(6, fs // 2):
                break
            size = max(max(6, fs // 2), int(size * 0.9))
        block_w = max(int(font.getlength(line)) for line in lines)
        w = min(inner.w - 2 * margin, int((block_w + 2 * pad) * grow))
        h = min(inner.h - 2 * margin, int((tall + 2 * pad) * grow))
        across, down = _place(balloon.at)
        x = inner.x + margin + int(across * (inner.w - 2 * margin - w))
        y = inner.y + margin + int(down * (inner.h - 2 * margin - h))
        box = Box(x, y, w, h)
        if oval:
            items.append(_tail(box, inner, stroke))
        items.append(Shape("oval" if oval else "box", box, width=stroke))
        top = y + (h - tall) // 2
        for k, line in enumerate(lines):
            items.append(Text(x + (w - font.getlength(line)) / 2,
                              top + k * line_height(size) + font.getmetrics()[0], line, size,
                              "Regular", ink))
    return items


def _place(at: str) -> tuple[float, float]:
    """(across, down) as shares of the room left: 0 left/top, 0.5 middle, 1 right/bottom."""
    down = 1.0 if at.startswith("bottom") else 0.0
    across = 0.0 if at.endswith("left") else 1.0 if at.endswith("right") else 0.5
    return across, down


def _tail(box: Box, inner: Box, stroke: int) -> Shape:
    """A triangle from inside the oval toward the panel's middle; the oval, drawn after it,
    covers its base."""
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    px, py = inner.x + inner.w / 2, inner.y + inner.h / 2
    dx, dy = px - cx, py - cy
    length = max(1.0, (dx * dx + dy * dy) ** 0.5)
    ux, uy = dx / length, dy / length
    # From the centre to the oval's edge in that direction, then out by a quarter of the
    # panel's smaller side (half the oval's height at most), never past the panel's middle.
    edge = 1 / max(1e-6, ((ux * 2 / box.w) ** 2 + (uy * 2 / box.h) ** 2) ** 0.5)
    reach = min(edge + min(inner.w, inner.h) * 0.25, edge + box.h / 2, max(edge, length))
    tip = (cx + ux * reach, cy + uy * reach)
    half = max(2.0, box.w * 0.08)
    # The base runs across the direction of the tail.
    nx, ny = -dy / length * half, dx / length * half
    points = ((cx + nx, cy + ny), (cx - nx, cy - ny), tip)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    bounds = Box(int(min(xs)), int(min(ys)), int(max(xs) - min(xs)) + 1,
                 int(max(ys) - min(ys)) + 1)
    return Shape("tail", bounds, points, width=stroke)
