"""Speech and thought balloons, shouts and narration boxes over a panel: where they go, how
big, what shape.

In: a panel's ``BalloonSpec`` list, the box of its picture on the page, the page font and the
captions' size. Out: ``Shape`` items (an oval with a tail, a scalloped cloud with a trail of
bubbles, a spiky burst with a tail, a box) and ``pages.Text`` lines, drawn after the picture
by the PNG rasterizer and the PDF writer alike (vector shapes and real text in the PDF).

Each balloon keeps to a bounded share of its panel (``SHARE_W`` of its width, ``SHARE_H`` of its
height), in the corner or edge its ``at`` names (or at the shares of the room it gives), so a
balloon never hides the picture it talks about; its text starts at the captions' size and shrinks (to half of it at least) until it fits
that share; a text too long even then makes the balloon taller, up to the whole panel, and is
never cut. A tail points the way ``tail`` names, else toward the panel's middle, and never
leaves the panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .geometry import Box, line_height
from .vertical import VerticalMeasure

SHARE_W = 0.5  # the most of a panel's width a balloon takes
SHARE_H = 0.34  # ... and of its height
OVAL = 1.42  # an oval around a w x h block of text is about sqrt(2) times it each way
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Shape:
    # "oval", "box" and "bubble" (an oval) fill ``box``; "tail", "cloud" and "burst" are
    # polygons through ``points``; "line" a line from ``points[0]`` to ``points[1]``.
    kind: str
    box: Box
    points: tuple[tuple[float, float], ...] = ()
    fill: tuple[int, int, int] = WHITE
    outline: tuple[int, int, int] = (0, 0, 0)
    width: int = 1  # the outline's, in pixels


# How much bigger than its text block each kind's shape is, each way: an oval around a block
# is about sqrt(2) times it; a cloud's scallops and a burst's spikes reach in past the oval
# they are cut from, so the text keeps to the smaller oval inside them.
SCALLOP = 0.12  # a cloud's scallops: the outer tenth or so of its half-widths
SPIKES = 14  # a shout's points; their depth, by turns, of its half-widths:
SPIKE_DEPTH = (0.22, 0.16, 0.26, 0.18)
GROW = {"speech": OVAL, "thought": OVAL / (1 - SCALLOP),
        "shout": OVAL / (1 - max(SPIKE_DEPTH)), "narration": 1.0}
# A tail's direction (x right, y down), by name.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
              "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1),
              "down-right": (1, 1)}


def balloon_items(balloons, inner: Box, font_path: str | None, fs: int, ink) -> list:
    """The shapes and text lines of a panel's balloons, ``inner`` being its picture's box."""
    from .pages import Text
    from .vertical import column_items

    items: list = []
    margin = max(2, inner.w // 40)
    stroke = max(1, fs // 12)
    for balloon in balloons:
        pad = max(2, fs // 3)
        max_w = int(inner.w * SHARE_W - 2 * margin)
        max_h = int(inner.h * SHARE_H - 2 * margin)
        size, font, lines, (w, h) = _fit(balloon, font_path, fs, pad, max_w, max_h)
        vertical = getattr(balloon, "vertical", False)
        block_w, tall = _block(lines, font, size, vertical)
        w, h = min(inner.w - 2 * margin, w), min(inner.h - 2 * margin, h)
        across, down = _place(balloon.at)
        x = inner.x + margin + int(across * (inner.w - 2 * margin - w))
        y = inner.y + margin + int(down * (inner.h - 2 * margin - h))
        box = Box(x, y, w, h)
        tail = getattr(balloon, "tail", None)
        if balloon.kind != "narration" and tail != "none":
            if balloon.kind == "thought":
                items += _bubbles(box, inner, tail, stroke)
            else:
                items.append(_tail(box, inner, tail, stroke))
        items.append(_outline(balloon.kind, box, stroke))
        top = y + (h - tall) // 2
        if vertical:  # columns from the right, each from the top
            items += column_items(lines, x + (w + block_w) / 2, top, size, line_height(size),
                                  font, font_path, ink)
            continue
        for k, line in enumerate(lines):
            items.append(Text(x + (w - font.getlength(line)) / 2,
                              top + k * line_height(size) + font.getmetrics()[0], line, size,
                              "Regular", ink))
    return items


WRAPS = [k / 50 for k in range(49, 14, -2)]  # the widths a text is tried at, of the most


def _fit(balloon, font_path: str | None, fs: int, pad: int, max_w: int, max_h: int):
    """The text's size and lines, and the balloon's size, for the largest text (from ``fs``
    down to half of it) that fits the ``max_w`` x ``max_h`` share. An oval's text block is a
    rectangle inside the inner oval (the one a cloud's scallops and a burst's spikes leave
    free): a short, wide block goes nearly as wide as the oval, a tall one less, so each text
    is tried wrapped at many widths, and the fewest lines win (of those, the narrowest, for
    even lines). The oval is the smallest around the block (sqrt(2) times it each way) that
    stays in the share. Too long even at the smallest size: wrapped so that the oval is as wide
    as the share, it grows taller than it (the caller keeps it inside the panel)."""
    from .pages import load_font, wrap_text

    vertical = getattr(balloon, "vertical", False)
    oval = balloon.kind != "narration"
    k = GROW[balloon.kind] / OVAL if oval else 1.0  # the shape past its inner oval (or box)
    rx, ry = max_w / (2 * k), max_h / (2 * k)  # the inner oval's half-axes
    smallest = max(6, fs // 2)
    size = fs
    while True:
        font = load_font(font_path, size)
        best = None
        # Lines wrap across the share; vertical columns, down it.
        across, most = (ry, max_h) if vertical else (rx, max_w)
        for share in WRAPS if oval else WRAPS[:1]:
            length = max(1, int(2 * across * share) - 2 * pad) if oval else \
                max(1, most - 2 * pad)
            lines = wrap_text(balloon.text, VerticalMeasure(font) if vertical else font, length)
            bw, bh = _block(lines, font, size, vertical)
            a, b = bw / 2 + pad, bh / 2 + pad  # the block's half sides, with the padding
            if oval and (a / rx) ** 2 + (b / ry) ** 2 > 1 or not oval and (
                    2 * b > max_h or 2 * a > max_w):
                continue
            key = (len(lines), b if vertical else a)
            if best is None or key < best[0]:
                best = key, lines, a, b
        if best is not None or size <= smallest:
            break
        size = max(smallest, int(size * 0.9))
    if best is None:  # too long even small: an oval as wide as the share, taller than it
        across, most = (ry, max_h) if vertical else (rx, max_w)
        length = max(1, int(2 * across / 2 ** 0.5) - 2 * pad) if oval else \
            max(1, most - 2 * pad)
        lines = wrap_text(balloon.text, VerticalMeasure(font) if vertical else font, length)
        bw, bh = _block(lines, font, size, vertical)
        best = None, lines, bw / 2 + pad, bh / 2 + pad
    _, lines, a, b = best
    if not oval:
        return size, font, lines, (int(2 * a), int(2 * b))
    # The smallest oval around the block is sqrt(2) times it each way; where that is wider
    # (taller) than the share, the oval takes the share's width (height) and grows the other
    # way just enough to keep the block's corners inside.
    ox, oy = a * 2 ** 0.5, b * 2 ** 0.5
    if ox > rx and a < rx:
        ox, oy = rx, b / (1 - (a / rx) ** 2) ** 0.5
    elif oy > ry and b < ry:
        ox, oy = a / (1 - (b / ry) ** 2) ** 0.5, ry
    return size, font, lines, (int(2 * ox * k), int(2 * oy * k))


def _block(lines: list[str], font, size: int, vertical: bool) -> tuple[float, float]:
    """The text block's width and height: lines one under another, or vertical columns one
    beside another (an em wide each, a line height apart)."""
    if vertical:
        measure = VerticalMeasure(font)
        return ((len(lines) - 1) * line_height(size) + size,
                int(max(measure.getlength(column) for column in lines)))
    return max(font.getlength(line) for line in lines), len(lines) * line_height(size)


def _place(at) -> tuple[float, float]:
    """(across, down) as shares of the room left: 0 left/top, 0.5 middle, 1 right/bottom; a
    balloon ``at: [x, y]`` gives them as they are."""
    if not isinstance(at, str):
        return float(at[0]), float(at[1])
    down = 1.0 if at.startswith("bottom") else 0.0
    across = 0.0 if at.endswith("left") else 1.0 if at.endswith("right") else 0.5
    return across, down


def _outline(kind: str, box: Box, stroke: int) -> Shape:
    """The balloon itself: an oval (speech), a box (narration), or a polygon of many points
    (a thought's cloud, a shout's burst), the same polygon in the PNG and the PDF."""
    if kind in ("speech", "narration"):
        return Shape("oval" if kind == "speech" else "box", box, width=stroke)
    cx, cy, rx, ry = box.x + box.w / 2, box.y + box.h / 2, box.w / 2, box.h / 2
    points = []
    if kind == "thought":
        # Scallops: bumps of |sin| along an oval, each a round arc out from it; about one
        # bump per 1.2 line heights of the oval's length, at least eight.
        bumps = max(8, min(18, round((box.w + box.h) / max(8.0, box.h / 3))))
        steps = bumps * 10
        for k in range(steps):
            angle = 2 * math.pi * k / steps
            r = 1 - SCALLOP + SCALLOP * abs(math.sin(bumps * angle / 2)) ** 0.6
            points.append((cx + rx * r * math.cos(angle), cy + ry * r * math.sin(angle)))
    else:  # shout: points out on the oval, valleys in by a depth that changes by turns
        for k in range(2 * SPIKES):
            angle = 2 * math.pi * (k + 0.5) / (2 * SPIKES)
            r = 1.0 if k % 2 == 0 else 1 - SPIKE_DEPTH[(k // 2) % len(SPIKE_DEPTH)]
            points.append((cx + rx * r * math.cos(angle), cy + ry * r * math.sin(angle)))
    return Shape("cloud" if kind == "thought" else "burst", box,
                 tuple((round(x, 2), round(y, 2)) for x, y in points), width=stroke)


def _direction(box: Box, inner: Box, tail: str | None) -> tuple[float, float]:
    """The tail's unit direction: the named one, else toward the panel's middle (straight
    down from a balloon already there)."""
    if tail in DIRECTIONS:
        dx, dy = DIRECTIONS[tail]
    else:
        dx = inner.x + inner.w / 2 - (box.x + box.w / 2)
        dy = inner.y + inner.h / 2 - (box.y + box.h / 2)
    length = (dx * dx + dy * dy) ** 0.5
    return (dx / length, dy / length) if length > 1e-6 else (0.0, 1.0)


def _edge(box: Box, ux: float, uy: float) -> float:
    """From the oval's centre to its edge in direction (ux, uy)."""
    return 1 / max(1e-6, ((ux * 2 / box.w) ** 2 + (uy * 2 / box.h) ** 2) ** 0.5)


def _room(box: Box, inner: Box, ux: float, uy: float) -> float:
    """How far from the balloon's centre the panel goes in direction (ux, uy): a tail never
    leaves its panel."""
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    ts = [(inner.x + inner.w - 1 - cx) / ux if ux > 0 else (inner.x - cx) / ux if ux < 0
          else math.inf,
          (inner.y + inner.h - 1 - cy) / uy if uy > 0 else (inner.y - cy) / uy if uy < 0
          else math.inf]
    return max(0.0, min(ts))


def _tail(box: Box, inner: Box, tail: str | None, stroke: int) -> Shape:
    """A triangle from inside the oval out the way ``tail`` says; the oval, drawn after it,
    covers its base."""
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    ux, uy = _direction(box, inner, tail)
    # From the centre to the oval's edge that way, then out by a quarter of the panel's
    # smaller side (half the oval's height at most); toward the middle, never past it.
    edge = _edge(box, ux, uy)
    middle = ((inner.x + inner.w / 2 - cx) ** 2 + (inner.y + inner.h / 2 - cy) ** 2) ** 0.5
    reach = min(edge + min(inner.w, inner.h) * 0.25, edge + box.h / 2, _room(box, inner, ux, uy))
    reach = min(reach, max(edge, middle)) if tail is None else reach
    tip = (cx + ux * reach, cy + uy * reach)
    half = max(2.0, box.w * 0.08)
    # The base runs across the direction of the tail.
    nx, ny = -uy * half, ux * half
    points = ((cx + nx, cy + ny), (cx - nx, cy - ny), tip)
    return Shape("tail", _bounds(points), points, width=stroke)


def _bubbles(box: Box, inner: Box, tail: str | None, stroke: int) -> list[Shape]:
    """A thought's trail: three small circles, smaller and further out the way ``tail``
    says, each kept inside the panel."""
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    ux, uy = _direction(box, inner, tail)
    at = _edge(box, ux, uy) * (1 - SCALLOP / 2)
    room = _room(box, inner, ux, uy)
    shapes = []
    for share in (0.2, 0.14, 0.09):
        d = max(3, round(min(box.w, box.h) * share))
        at += d * 0.75
        t = min(at, room - d / 2)
        x, y = cx + ux * t, cy + uy * t
        shapes.append(Shape("bubble", Box(round(x - d / 2), round(y - d / 2), d, d),
                            width=stroke))
        at += d * 0.6
    return shapes


def _bounds(points) -> Box:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return Box(int(min(xs)), int(min(ys)), int(max(xs) - min(xs)) + 1,
               int(max(ys) - min(ys)) + 1)
