"""Page geometry known before anything is drawn: how many pages, and (later) how big.

In: a panel count and the story's ``LayoutSpec``. Out: numbers. No imaging library: `validate`
and `plan` use this and must stay light.
"""

from __future__ import annotations

from ..story.schema import LayoutSpec


def page_count(panels: int, layout: LayoutSpec) -> int:
    """How many pages ``panels`` panels fill (at least one)."""
    per_page = layout.panels_per_page or max(panels, 1)
    return max(1, -(-panels // per_page))
