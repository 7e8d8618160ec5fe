"""The field rules several story models share: ids that become file names, names of
characters, patterns, and how a rule's failure becomes a pydantic error with a hint.

In: a value from a story (or a record read back, ``records``). Out: the value, or a
``PydanticCustomError`` that ``messages`` turns into a writer's problem; ``id_problem`` gives the
words without raising.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from pydantic_core import PydanticCustomError

from ..errors import BIDI, show_value

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                     *(f"lpt{i}" for i in range(10))}
# Unicode's bidirectional controls: invisible, they reorder how the text around them is shown,
# so a line can read differently from what a program (or a model) gets ("Trojan Source").
BIDI_CONTROLS = BIDI
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
COLOR_RE = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


def _err(kind: str, message: str, hint: str | None = None) -> PydanticCustomError:
    # The message goes in as a value, not as pydantic's template: it quotes the user's input,
    # and a value like '{hint}' must print as written. pydantic fills the template in one key
    # at a time, in order, so the message goes last.
    context = {**({"hint": hint} if hint else {}), "message": message}
    return PydanticCustomError(kind, "{message}", context)


def char_name(ch: str) -> str:
    """``'U+212A KELVIN SIGN'``: a character as a message names it."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def show_id(value: Any) -> str:
    """An id as a message quotes it: anything not ASCII escaped, so that an id spelled with a
    look-alike (KELVIN SIGN for K) cannot pass for the plain one."""
    return show_value(value, escape=True)


def id_problem(value: str, what: str = "id") -> tuple[str, str] | None:
    """(message, hint) when ``value`` cannot be an id (they become file names), else None."""
    if ID_RE.fullmatch(value):
        if value.lower() not in WINDOWS_RESERVED:
            return None
        return (f"{what} {show_id(value)} is a reserved file name on Windows",
                "ids become file names, and Windows keeps CON, PRN, AUX, NUL, COM0-9 and LPT0-9 "
                f"(in any case) for devices; e.g. {value + '-1'!r}")
    foreign = list(dict.fromkeys(ch for ch in value if not ch.isascii()))
    if not foreign:
        return (f"invalid {what} {show_id(value)}: use 1-64 letters, digits, '-' or '_', "
                "starting with a letter or digit",
                "ids become file names, so dots, slashes and spaces are not allowed")
    named = ", ".join(char_name(ch) for ch in foreign[:3]) + (", ..." if foreign[3:] else "")
    if any(ch in BIDI_CONTROLS for ch in foreign):
        named += " (a bidirectional control: invisible, it reorders how text is shown)"
    plain = unicodedata.normalize("NFKC", value)
    hint = (f"did you mean {plain!r}?" if plain != value and ID_RE.fullmatch(plain)
            and plain.lower() not in WINDOWS_RESERVED
            else "ids become file names, so they are plain ASCII letters and digits")
    return (f"invalid {what} {show_id(value)}: it contains {named}; use ASCII letters, digits, "
            "'-' or '_'", hint)


def _check_id(value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise _err("storyboard_id", *problem)
    return value


# Named sheet sizes (width, height) in inches. ISO A and B from their millimetres; JIS B5 is the
# size Japanese tankobon manga print at; US comic books are 6.625 x 10.25 in.
MM = 1 / 25.4
PAGE_SIZES = {
    "A4": (210 * MM, 297 * MM), "A5": (148 * MM, 210 * MM), "A3": (297 * MM, 420 * MM),
    "B5": (176 * MM, 250 * MM), "JIS-B5": (182 * MM, 257 * MM),
    "Letter": (8.5, 11.0), "Legal": (8.5, 14.0), "us-comic": (6.625, 10.25),
}
_UNITS = {"mm": MM, "cm": 10 * MM, "in": 1.0, "pt": 1 / 72}
_LENGTH = r"(\d+(?:\.\d+)?)\s*(mm|cm|in|pt)"
PAGE_SIZE_RE = re.compile(rf"^\s*{_LENGTH}\s*[x×]\s*{_LENGTH}\s*$", re.IGNORECASE)
MAX_PAGE_INCHES = 200.0  # no printer's sheet is bigger; pixel limits are checked by geometry
LENGTH_RE = re.compile(rf"^\s*{_LENGTH}\s*$", re.IGNORECASE)


def length_inches(value: str) -> float:
    """``"10mm"``, ``"0.5in"``, ``"1cm"``, ``"12pt"`` in inches; raises ``ValueError``."""
    m = LENGTH_RE.match(value)
    if not m:
        raise ValueError(f"expected pixels or a length like '10mm', '0.5in' or '12pt', got "
                         f"{show_value(value)}")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def page_inches(value: str) -> tuple[float, float]:
    """A page size as (width, height) in inches: a name from ``PAGE_SIZES`` (any case) or
    ``"210mm x 297mm"``; raises ``ValueError`` with the words for a person."""
    named = {k.lower(): v for k, v in PAGE_SIZES.items()}
    if value.strip().lower() in named:
        return named[value.strip().lower()]
    m = PAGE_SIZE_RE.match(value)
    if not m:
        raise ValueError(f"expected a page size like 'A4', 'Letter', 'us-comic' or "
                         f"'210mm x 297mm', got {show_value(value)}")
    w = float(m.group(1)) * _UNITS[m.group(2).lower()]
    h = float(m.group(3)) * _UNITS[m.group(4).lower()]
    if not (0 < w <= MAX_PAGE_INCHES and 0 < h <= MAX_PAGE_INCHES):
        raise ValueError(f"a page of {show_value(value)} is not a sheet anyone prints on: "
                         f"each side must be more than 0 and at most {MAX_PAGE_INCHES:g} in")
    return w, h
