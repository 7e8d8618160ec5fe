"""The `layout:` section of a story: how `storyboard build` composes panels into pages.

In: plain data from the story's ``layout:`` mapping. Out: a frozen ``LayoutSpec``, or pydantic
errors that ``messages`` words. A ``preset`` fills in the keys the story leaves out (the keys
given always win); ``rows`` and ``span`` say which panels take more than one column,
``row_span`` which take more than one row. What the
keys mean on the page is ``output/geometry`` and ``output/pages``; everything here is part of
``output/manifest.pages_key``, so a layout edit recomposes pages without rendering panels.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from .. import constants as C
from ..errors import did_you_mean
from .fields import ID_RE, PAGE_SIZES, _err, length_inches, page_inches
from .types import Color, Pixels, _Spec

# Named layouts: the keys each one sets when the story does not.
PRESETS: dict[str, dict[str, Any]] = {
    "grid-2x2": {"columns": 2, "panels_per_page": 4},
    "strip-3": {"columns": 3, "panels_per_page": 3},
    "splash": {"columns": 1, "panels_per_page": 1, "caption": "inside"},
    "manga-4koma": {"columns": 1, "panels_per_page": 4, "gutter": 8, "caption": "inside",
                    "panel_numbers": True},
    "wide-top": {"rows": [[2], [1, 1], [1, 1]]},
}
MAX_COLUMNS = 16
MAX_ROW_SPAN = 16
Span = Annotated[int, Field(ge=1, le=MAX_COLUMNS)]
RowSpan = Annotated[int, Field(ge=1, le=MAX_ROW_SPAN)]
PanelKey = Annotated[str, Field(max_length=64, json_schema_extra={"pattern": ID_RE.pattern})]


def _margin_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "pixels"


def _title_kind(value: Any) -> str:
    return "flag" if isinstance(value, bool) else "text"


class LayoutSpec(_Spec):
    """How `storyboard build` composes panels into pages."""

    preset: Literal[tuple(PRESETS)] | None = Field(  # type: ignore[valid-type]
        None, description="A named layout: grid-2x2, strip-3 (three panels a page, one row), "
        "splash (a page per panel, caption inside), manga-4koma (four panels down a page, "
        "captions inside, numbered), wide-top (one panel across two columns, then 2 x 2). It "
        "sets the keys the layout leaves out; the keys given win.")

    @model_validator(mode="before")
    @classmethod
    def _preset_fills_in(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset"), str) \
                and data["preset"] in PRESETS:
            return {**PRESETS[data["preset"]], **data}
        return data

    columns: int = Field(2, ge=1, le=MAX_COLUMNS, description=(
        "Cells a row; with `rows`, at least the widest row's column count."))
    panels_per_page: int | None = Field(None, ge=1, le=C.MAX_PANELS,
                                        description="Default: up to 8 (whole rows: 9 in 3 columns).")
    cell_width: Pixels | None = Field(None, description="Width of each cell on the page; "
                                      "default: the widest panel's. Panels fit inside it.")
    cell_height: Pixels | None = Field(None, description=(
        "Height of every cell's picture; default: each panel's own height at the cell's "
        "width. With it, `fit` says how a panel fills its cell."))
    fit: Literal["contain", "cover"] = Field("contain", description=(
        "With `cell_height`: contain shows the whole panel inside its cell (blank around it "
        "where the shapes differ); cover fills the cell, cropping the panel's overflow evenly."))
    gutter: int = Field(16, ge=0, le=512, description="Pixels between panels.")
    margin: Annotated[
        Union[Annotated[Annotated[int, Field(ge=0, le=1024)], Tag("pixels")],
              Annotated[Annotated[str, Field(max_length=32)], Tag("text")]],
        Discriminator(_margin_kind),
    ] = Field(32, description="Around the page: pixels, or a length like '10mm', '0.5in' or "
              "'12pt' (turned into pixels at `dpi`).")

    bleed: Annotated[
        Union[Annotated[Annotated[int, Field(ge=0, le=1024)], Tag("pixels")],
              Annotated[Annotated[str, Field(max_length=32)], Tag("text")]],
        Discriminator(_margin_kind),
    ] = Field(0, description="For print: the page grows by this on every side (pixels, or a "
              "length like '3mm' or '0.125in', at `dpi`), its background running out to the "
              "edge the printer cuts off; the PDF's /TrimBox is the page without it, its "
              "/BleedBox and /MediaBox the page with it.")
    trim_marks: bool = Field(False, description=(
        "For print, with a `bleed`: thin crop marks in the bleed at the four corners of the "
        "trimmed page, where the printer cuts."))

    @field_validator("margin", "bleed")
    @classmethod
    def _margin_is_a_length(cls, v: Any, info: ValidationInfo) -> Any:
        key = info.field_name
        example, most = {"margin": ("`margin: 10mm`", 5), "bleed": ("`bleed: 3mm`", 1)}[key]
        if isinstance(v, str):
            try:
                inches = length_inches(v)
            except ValueError as exc:
                raise _err(f"storyboard_{key}", str(exc), f"e.g. {example}") from None
            if inches > most:
                raise _err(f"storyboard_{key}", f"a {key} of {v} is more than {most} in",
                           f"e.g. {example}")
        return v

    @field_validator("trim_marks")
    @classmethod
    def _marks_need_a_bleed(cls, v: bool, info: ValidationInfo) -> bool:
        if "bleed" not in info.data:
            return v  # the bleed's own error says what is wrong
        bleed = info.data["bleed"]
        try:
            none = (length_inches(bleed) if isinstance(bleed, str) else bleed) == 0
        except ValueError:
            return v  # the bleed's own error says what is wrong
        if v and none:
            raise _err("storyboard_trim_marks", "trim marks sit in the bleed, and the layout "
                       "has none", "add `bleed: 3mm`, or leave `trim_marks` out")
        return v
    background: Color = "#ffffff"
    text_color: Color = "#111111"
    border: int = Field(2, ge=0, le=64, description="Panel border width in pixels.")
    border_color: Color = "#111111"
    caption: Literal["below", "above", "inside", "none"] = Field(
        "below", description="Where each caption goes, attached to its own panel: right below "
        "it, right above it, inside it (on a band at its foot), or none.")
    font: str | None = Field(None, max_length=4096,
                             description="A .ttf/.otf/.ttc file; default: the bundled CJK font.")
    font_size: int | None = Field(None, ge=6, le=256, description=(
        "Caption size in pixels (the title is 1.6 times it, shrunk to fit the page); default: "
        "relative to the cell width (28 in a 512-pixel cell)."))
    upscale: bool = Field(False, description="Scale panels up to fill a cell wider than they "
                          "are; default: never past their own pixels, which only blurs them.")
    title: Annotated[
        Union[Annotated[bool, Tag("flag")], Annotated[Annotated[str, Field(max_length=200)],
                                                      Tag("text")]],
        Discriminator(_title_kind),
    ] = Field(True, description="true: the story title; false: none; or a text.")
    panel_numbers: bool = False
    rows: list[Annotated[list[Span], Field(min_length=1, max_length=MAX_COLUMNS)]] | None = Field(
        None, min_length=1, max_length=64, description=(
            "A page as rows of column spans, e.g. [[2], [1, 1]]: one panel across two columns, "
            "then two side by side; the pattern repeats page after page (`panels_per_page` "
            "defaults to its panel count)."))
    span: dict[PanelKey, Span] = Field(default_factory=dict, max_length=C.MAX_PANELS,
                                       description=(
        "Panels that take more than one column, by id, e.g. {ship: 2}; a panel that does not "
        "fit in what is left of a row starts the next one."))
    row_span: dict[PanelKey, RowSpan] = Field(default_factory=dict, max_length=C.MAX_PANELS,
                                           description=(
        "Panels that take more than one row, by id, e.g. {ship: 2}: a tall panel beside two "
        "stacked ones; the panels after it flow around it. With `span`, a panel can take a "
        "block of columns and rows."))
    page_size: str | None = Field(None, max_length=64, description=(
        "The printed sheet: A4, A5, A3, B5, JIS-B5, Letter, Legal, us-comic (6.625 x 10.25 in) "
        "or explicit like '210mm x 297mm' (mm, cm, in, pt); every page and PDF page is this "
        "size at `dpi`, the panels and text scaled down to fit inside the margin. Default: each "
        "page as big as its panels, all pages of a story the same size."))
    dpi: int = Field(300, ge=72, le=1200, description=(
        "Pixels per inch: the pages' pixels on paper (the PDF's page size in points, the PNGs' "
        "pHYs) and, with `page_size`, how many pixels a page has. Left out, with no "
        "`page_size` or `bleed`: a page of few pixels is printed at a lower dpi, its longer "
        "side 210 mm (A5's), so that small panels do not make a 1-inch PDF page."))
    direction: Literal["ltr", "rtl"] = Field("ltr", description=(
        "Reading order: rtl (manga) fills each row right to left and marks the PDF and CBZ "
        "to be read right to left."))

    @field_validator("page_size")
    @classmethod
    def _page_size_is_a_sheet(cls, v: Any) -> Any:
        if v is None:
            return v
        try:
            page_inches(v)
        except ValueError as exc:
            hint = did_you_mean(v, PAGE_SIZES) or "A4, Letter, B5, us-comic, or '210mm x 297mm'"
            raise _err("storyboard_page_size", str(exc), hint) from None
        return v

    @field_validator("rows")
    @classmethod
    def _rows_fit_the_columns(cls, v: Any, info: ValidationInfo) -> Any:
        columns = info.data.get("columns")
        wide = [row for row in v or [] if sum(row) > (columns or MAX_COLUMNS)]
        if wide and columns:
            raise _err("storyboard_rows", f"a row of spans {wide[0]} takes {sum(wide[0])} "
                       f"columns, and the layout has {columns}",
                       f"set `columns: {max(sum(r) for r in v)}`, or narrow the row")
        return v

    @field_validator("span")
    @classmethod
    def _spans_fit_the_columns(cls, v: Any, info: ValidationInfo) -> Any:
        columns = info.data.get("columns")
        if info.data.get("rows") and v:
            raise _err("storyboard_span", "give `rows` or `span`, not both",
                       "`rows` sets every panel's span by its place on the page")
        wide = {pid: n for pid, n in (v or {}).items() if columns and n > columns}
        if wide:
            pid, n = next(iter(wide.items()))
            raise _err("storyboard_span", f"panel {pid!r} spans {n} columns, and the layout "
                       f"has {columns}", f"set `columns: {n}` or more, or a smaller span")
        return v

    @field_validator("row_span")
    @classmethod
    def _row_spans_flow(cls, v: Any, info: ValidationInfo) -> Any:
        if info.data.get("rows") and v:
            preset = info.data.get("preset")
            raise _err("storyboard_row_span", "give `rows` or `row_span`, not both",
                       (f"the preset {preset} sets `rows`; " if preset else "")
                       + "set `columns` and `span` instead of `rows`, and the panels flow "
                       "around the tall ones")
        return v

    @model_validator(mode="after")
    def _lengths_in_pixels(self) -> LayoutSpec:
        # Everything that draws a page reads `margin` and `bleed` as pixels: a length becomes them here,
        # at the layout's dpi (so pages_key sees the pixels too).
        for key in ("margin", "bleed"):
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, round(length_inches(value) * self.dpi))
        return self


PLACES = ("top-left", "top", "top-right", "bottom-left", "bottom", "bottom-right")
TAILS = ("none", "left", "right", "down-left", "down", "down-right", "up-left", "up", "up-right")
Share = Annotated[float, Field(ge=0, le=1)]


def _at_kind(value: Any) -> str:
    return "at-share" if isinstance(value, (list, tuple)) else "at-name"


class BalloonSpec(_Spec):
    """A speech or thought balloon, a shout or a narration box drawn over a panel (vector
    shapes and text; the panel's render never sees it)."""

    text: Annotated[str, Field(min_length=1, max_length=400)]
    kind: Literal["speech", "thought", "shout", "narration"] = Field("speech", description=(
        "speech: an oval with a tail; thought: a cloud with a trail of small bubbles; shout: "
        "a spiky burst with a tail; narration: a box, without a tail."))
    at: Annotated[
        Union[Annotated[Literal[PLACES], Tag("at-name")],  # type: ignore[valid-type]
              Annotated[list[Share], Field(min_length=2, max_length=2), Tag("at-share")]],
        Discriminator(_at_kind),
    ] = Field("top-left", description=(
        "Where in the panel it sits: top-left, top, top-right, bottom-left, bottom, "
        "bottom-right, or [x, y], shares of the room across and down from 0 to 1 ([0, 0] "
        "top-left, [0.5, 0.5] the middle, [1, 1] bottom-right)."))
    tail: Literal[TAILS] | None = Field(None, description=(  # type: ignore[valid-type]
        "Which way the tail (a thought's bubbles) points: left, right, up, down, down-left, "
        "down-right, up-left, up-right, or none; default: toward the panel's middle."))

    vertical: bool = Field(False, description=(
        "Chinese, Japanese or Korean text set vertically: top to bottom, columns right to "
        "left, punctuation in its vertical forms, Latin letters and ー on their side (needs "
        "a font with vertical metrics, as the built-in Noto Sans CJK has)."))

    @field_validator("tail")
    @classmethod
    def _narration_has_no_tail(cls, v: Any, info: ValidationInfo) -> Any:
        if v not in (None, "none") and info.data.get("kind") == "narration":
            raise _err("storyboard_tail", "a narration box has no tail",
                       "leave `tail` out, or make it `kind: speech`")
        return v
