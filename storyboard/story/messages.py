"""pydantic's validation errors, in a writer's words.

In: a ``pydantic.ValidationError`` from validating a story's data against ``StorySpec``, and the
``SourceDoc`` it came from. Out: ``Problem``s at the right line and column, saying what was
expected and what was given, with a did-you-mean hint where a key or choice is close.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from .. import constants as C
from ..errors import Loc, Problem, did_you_mean
from ..errors import describe_value as _got
from .schema import StorySpec
from .source import SourceDoc


def problems_from_pydantic(exc: ValidationError, doc: SourceDoc) -> list[Problem]:
    out = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part not in ("text", "parts", "flag",
                                                                   "pixels", "{mapping}",
                                                                   "at-name", "at-share",
                                                                   "function-before[...]"))
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        message, hint, key = _describe(error, loc)
        if error["type"] == "missing":
            loc = loc[:-1]
        out.append(doc.problem(loc, message, hint, key=key))
    return out


def _describe(error: dict, loc: Loc) -> tuple[str, str | None, bool]:
    """(message, hint, whether to point at the key rather than the value)."""
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"missing required key {loc[-1]!r}", None, False
    if kind == "extra_forbidden":
        choices = _fields_at(loc[:-1])
        return (f"unknown key {loc[-1]!r}", did_you_mean(loc[-1], choices)
                or (f"valid keys here: {', '.join(choices)}" if choices else None), True)
    if kind in ("int_type", "int_parsing", "int_from_float"):
        hint = "remove the quotes" if isinstance(value, str) and value.strip().isdigit() else None
        return f"expected an integer, got {_got(value)}", hint, False
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_got(value)}", \
            "remove the quotes" if _is_number(value) else None, False
    if kind == "finite_number":
        return f"expected a finite number, got {_got(value)}", None, False
    if kind == "string_type" and loc == ("layout", "title"):
        return f"expected true, false or a text, got {_got(value)}", None, False
    if kind == "string_type":
        hint = "put quotes around it" if isinstance(value, (int, float, bool)) else None
        return f"expected text, got {_got(value)}", hint, False
    if kind == "bool_type":
        return f"expected true or false, got {_got(value)}", None, False
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping (key: value lines), got {_got(value)}", None, False
    if kind == "list_type":
        return f"expected a list, got {_got(value)}", "write items as `- item` lines or " \
                                                      "`[a, b]`", False
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'|(\d+)", str(ctx.get("expected", "")))
        choices = [a or b for a, b in choices]
        if loc == ("version",):
            return (f"unsupported format version {_got(value)}; this storyboard reads version "
                    f"{', '.join(map(str, C.SUPPORTED_FORMAT_VERSIONS))}",
                    "write `version: 1`, or upgrade storyboard", False)
        return (f"expected one of {', '.join(repr(c) for c in choices)}, got {_got(value)}",
                did_you_mean(value, choices), False)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}[kind]
        limit = next(iter(ctx.values()))
        return f"must be {op} {limit}, got {_got(value)}", None, False
    if kind == "multiple_of":
        if not C.MIN_SIZE_PX <= value <= C.MAX_SIZE_PX:
            return (f"must be between {C.MIN_SIZE_PX} and {C.MAX_SIZE_PX} pixels, got "
                    f"{_got(value)}", None, False)
        lower = int(value) // 8 * 8
        return (f"must be a multiple of 8, got {_got(value)}",
                f"use {max(lower, C.MIN_SIZE_PX)} or {lower + 8}", False)
    if kind == "string_too_long":
        return (f"text is {len(value):,} characters long; the limit is {ctx['max_length']:,}",
                None, False)
    if kind == "string_pattern_mismatch":
        if loc and loc[-1] in ("background", "text_color", "border_color"):
            return f"expected a colour like '#ffffff', got {_got(value)}", None, False
        return f"invalid value {_got(value)}", None, False
    if kind in ("too_short", "too_long") and loc and loc[-1] == "at":
        got = f"{len(value)} number{'s' if len(value) != 1 else ''}" \
            if isinstance(value, list) else _got(value)
        return (f"expected [x, y], two shares of the panel from 0 to 1, got {got}",
                "e.g. `at: [0.5, 0.2]`", False)
    if kind == "too_short" and loc == ("panels",):
        return "a story needs at least one panel", None, False
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s), got none", None, False
    if kind == "too_long":
        return (f"too many items: {ctx.get('actual_length')}, the limit is "
                f"{ctx.get('max_length')}", None, False)
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return f"expected text or a mapping, got {_got(value)}", None, False
    if kind.startswith("storyboard_"):
        return error["msg"], ctx.get("hint"), kind == "storyboard_var"
    msg = error["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{msg[:1].lower()}{msg[1:]}, got {_got(value)}", None, False


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a quoted number, such as '1e-4' or '0.5'."""
    try:
        return isinstance(value, str) and float(value) == float(value)  # not 'nan'
    except ValueError:
        return False


def _fields_at(loc: Loc) -> list[str]:
    """Valid key names of the mapping at ``loc``, for did-you-mean hints."""
    tp: Any = StorySpec
    for part in loc:
        tp = _unwrap(tp, part)
        if tp is None:
            return []
    tp = _unwrap(tp, None)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _unwrap(tp: Any, part: str | int | None) -> Any:
    """Step from a type into its field/item ``part`` (None: just strip wrappers)."""
    for _ in range(8):
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            models = [a for a in typing.get_args(tp) if _unwrap(a, None) is not None
                      and isinstance(_unwrap(a, None), type)
                      and issubclass(_unwrap(a, None), BaseModel)]
            containers = [a for a in typing.get_args(tp) if typing.get_origin(a) in (list, dict)]
            tp = (models or containers or [None])[0]
            if tp is None:
                return None
        else:
            break
    if part is None:
        return tp
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, f in tp.model_fields.items():
            if part in (name, f.alias):
                return f.annotation
        return None
    origin = typing.get_origin(tp)
    if origin is list and isinstance(part, int):
        return typing.get_args(tp)[0]
    if origin is dict and isinstance(part, str):
        return typing.get_args(tp)[1]
    return None


