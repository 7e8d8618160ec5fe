"""Golden page images: synthetic panels (gradients, no model) composed with a layout and
compared with a PNG under tests/golden/pages/, allowing for small anti-aliasing differences
between FreeType builds. STORYBOARD_UPDATE_GOLDENS=1 rewrites them (look at each before
committing)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN, UPDATE
from PIL import Image

PAGES = GOLDEN / "pages"
# A pixel counts as different past this much on any channel; a page may have this share of
# them (text edges, about 0.5% of a page, move by a shade between FreeType versions).
CHANNEL_TOLERANCE = 48
SHARE_TOLERANCE = 0.005


def panel(w: int, h: int, hue: int) -> Image.Image:
    """A gradient panel: red across, green down, a blue of its own: any crop, flip, stretch or
    misplacement shows."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w)[None, :]
    a[..., 1] = np.linspace(255, 0, h)[:, None]
    a[..., 2] = hue
    return Image.fromarray(a)


def check_page(name: str, page: Image.Image) -> None:
    path = PAGES / f"{name}.png"
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        page.save(path, optimize=True)
        if not UPDATE:
            pytest.fail(f"golden page {path.name} did not exist; wrote it, look at it and rerun")
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"), dtype=np.int16)
    actual = np.asarray(page.convert("RGB"), dtype=np.int16)
    assert actual.shape == expected.shape, f"{name}: page size {page.size} differs from " \
                                           f"{path} ({expected.shape[1]}x{expected.shape[0]})"
    off = (np.abs(actual - expected).max(axis=2) > CHANNEL_TOLERANCE).mean()
    assert off <= SHARE_TOLERANCE, f"{name}: {off:.2%} of pixels differ from {path}; rerun " \
                                   "with STORYBOARD_UPDATE_GOLDENS=1 to accept, and look"
