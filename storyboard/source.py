"""Read a story file: bytes in, plain Python data and a map of line/column positions out.

Hostile input is refused here, before anything is built from it: files that are too large, not
UTF-8 or empty; several documents in one file; custom tags (``!!python/object``); nesting deeper
than any story needs; alias bombs (counted by their *expanded* size while streaming the parser's
events, so a "billion laughs" costs microseconds); duplicate keys (all of them reported, with the
line of the first occurrence). Only then is the document loaded with ruamel.yaml's round-trip
loader, whose line/column records become ``SourceDoc.positions``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
)

from . import constants as C
from .errors import Diagnostics, Loc, Problem, StoryError

# Tags a writer may spell out; anything else (python objects, custom constructors) is refused.
_ALLOWED_TAGS = {
    None,
    "!",
    *(
        f"tag:yaml.org,2002:{t}"
        for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")
    ),
}
_NUMERIC_START = set("0123456789+-.")


@dataclass(frozen=True)
class Pos:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class SourceDoc:
    """A parsed story file: its data as plain dicts/lists/scalars and where each value sits."""

    name: str  # as the user named the file, for messages
    path: Path | None
    text: str
    data: Any
    positions: dict[Loc, Pos] = field(default_factory=dict)
    key_positions: dict[Loc, Pos] = field(default_factory=dict)

    def pos(self, loc: Loc, *, key: bool = False) -> Pos:
        """Position of the value at ``loc`` (or its key), else of the nearest enclosing value."""
        loc = tuple(loc)
        if key and loc in self.key_positions:
            return self.key_positions[loc]
        while loc:
            if loc in self.positions:
                return self.positions[loc]
            loc = loc[:-1]
        return self.positions.get((), Pos(1, 1))

    def problem(self, loc: Loc, message: str, hint: str | None = None, *, key: bool = False,
                severity: str = "error") -> Problem:
        p = self.pos(loc, key=key)
        return Problem(self.name, p.line, p.col, tuple(loc), message, hint, severity)


def read_source(path: str | Path) -> SourceDoc:
    """Read and parse a story file; raise ``StoryError`` listing everything wrong with it."""
    name = str(path)
    p = Path(path)
    try:
        if p.is_dir():
            raise StoryError([Problem(name, None, None, (), "is a folder, expected a story file")])
        size = p.stat().st_size
        if size > C.MAX_FILE_BYTES:
            raise StoryError([Problem(name, None, None, (),
                                      f"file is {size:,} bytes; stories are limited to "
                                      f"{C.MAX_FILE_BYTES:,} bytes")])
        raw = p.read_bytes()
    except OSError as exc:
        raise StoryError([Problem(name, None, None, (), f"cannot read file: {exc.strerror}")]) from None
    return parse_source(raw, name, path=p)


def parse_source(raw: bytes | str, name: str, *, path: Path | None = None) -> SourceDoc:
    if isinstance(raw, bytes):
        if len(raw) > C.MAX_FILE_BYTES:
            raise StoryError([Problem(name, None, None, (), "file too large")])
        text = _decode(raw, name)
    else:
        text = raw
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise StoryError([Problem(name, 1, 1, (), "file is empty; expected a story",
                                  "run `storyboard init` to write a commented starter story")])
    _scan_events(text, name)
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        raise StoryError([_marked_problem(exc, name)]) from None
    except (YAMLError, ValueError, RecursionError) as exc:
        raise StoryError([Problem(name, None, None, (), f"cannot parse YAML: {exc}")]) from None
    doc = SourceDoc(name=name, path=path, text=text, data=None)
    doc.positions[()] = Pos(1, 1)
    doc.data = _plain(tree, (), doc)
    return doc


def _decode(raw: bytes, name: str) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StoryError([Problem(name, 1, 1, (), "file is UTF-16; stories must be UTF-8",
                                  "re-save the file as UTF-8")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise StoryError([Problem(
            name, line, col, (),
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
            "re-save the file as UTF-8; Chinese text from older editors is often GBK",
        )]) from None


def _marked_problem(exc: MarkedYAMLError, name: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    msg = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        msg = f"{exc.problem} ({exc.context})"
    hint = None
    if "found character '\\t'" in msg or "\\t" in msg:
        hint = "YAML indentation must use spaces, not tabs"
    if mark is None:
        return Problem(name, None, None, (), f"invalid YAML: {msg}", hint)
    return Problem(name, mark.line + 1, mark.column + 1, (), f"invalid YAML: {msg}", hint)


class _Frame:
    __slots__ = ("is_map", "anchor", "size", "keys", "expect_key", "key_mark")

    def __init__(self, is_map: bool, anchor: str | None):
        self.is_map = is_map
        self.anchor = anchor
        self.size = 1
        self.keys: dict[str, int] = {}
        self.expect_key = True
        self.key_mark = None


def _scan_events(text: str, name: str) -> None:
    """Stream the parser's events once, refusing hostile structure before it is built.

    Expanded sizes are tracked per anchor, so an alias costs what it would expand to; the
    parser itself is iterative, so deep nesting cannot overflow Python's stack here.
    """
    diag = Diagnostics()
    yaml = YAML(typ="rt")
    stack: list[_Frame] = []
    anchors: dict[str, int] = {}
    total = 0
    documents = 0

    def fail(mark, message: str, hint: str | None = None) -> StoryError:
        line = mark.line + 1 if mark is not None else None
        col = mark.column + 1 if mark is not None else None
        diag.add(Problem(name, line, col, (), message, hint))
        return StoryError(diag.sorted())

    def finish_node(size: int, anchor: str | None) -> None:
        if anchor:
            anchors[anchor] = size
        if stack:
            parent = stack[-1]
            parent.size += size
            if parent.is_map:
                parent.expect_key = not parent.expect_key

    try:
        for ev in yaml.parse(text):
            if isinstance(ev, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise fail(ev.start_mark, "file holds more than one YAML document",
                               "remove the second `---`; a story is one document")
                continue
            if isinstance(ev, NodeEvent) and not isinstance(ev, AliasEvent):
                tag = getattr(ev, "tag", None)
                tag = None if tag is None else str(tag)
                if tag not in _ALLOWED_TAGS:
                    raise fail(ev.start_mark, f"YAML tag {tag!r} is not allowed in a story",
                               "remove the tag; stories hold plain text, numbers, lists and maps")
            if isinstance(ev, ScalarEvent):
                value = ev.value
                if len(value) > C.MAX_SCALAR_CHARS:
                    raise fail(ev.start_mark, f"value is {len(value):,} characters long; the "
                                              f"limit is {C.MAX_SCALAR_CHARS:,}")
                if (ev.style is None and len(value) > C.MAX_NUMBER_CHARS
                        and value[:1] in _NUMERIC_START and value.replace("_", "").lstrip("+-")
                        .replace(".", "").replace("e", "").replace("E", "").isdigit()):
                    raise fail(ev.start_mark, f"number with {len(value)} digits is far too large")
                if stack and stack[-1].is_map and stack[-1].expect_key:
                    frame = stack[-1]
                    first = frame.keys.get(value)
                    if first is not None:
                        diag.add(Problem(name, ev.start_mark.line + 1, ev.start_mark.column + 1,
                                         (), f"duplicate key {value!r} (first defined on line "
                                             f"{first})", "remove one of them; YAML keeps only "
                                                          "the last, silently"))
                    else:
                        frame.keys[value] = ev.start_mark.line + 1
                total += 1
                finish_node(1, ev.anchor)
            elif isinstance(ev, AliasEvent):
                size = anchors.get(ev.anchor, 1)
                total += size
                if stack and stack[-1].is_map and stack[-1].expect_key:
                    pass  # an alias used as a key: rare, harmless, not checked for duplicates
                finish_node(size, None)
            elif isinstance(ev, CollectionStartEvent):
                stack.append(_Frame(isinstance(ev, MappingStartEvent), ev.anchor))
                if len(stack) > C.MAX_NESTING:
                    raise fail(ev.start_mark, f"document is nested more than {C.MAX_NESTING} "
                                              "levels deep")
            elif isinstance(ev, CollectionEndEvent):
                frame = stack.pop()
                total += 1
                finish_node(frame.size, frame.anchor)
            if total > C.MAX_NODES:
                raise fail(getattr(ev, "start_mark", None),
                           f"document expands to more than {C.MAX_NODES:,} values",
                           "this is what a YAML alias bomb looks like; use fewer aliases")
    except MarkedYAMLError as exc:
        diag.add(_marked_problem(exc, name))
    except YAMLError as exc:
        diag.add(Problem(name, None, None, (), f"invalid YAML: {exc}"))
    diag.raise_if_errors()


def _plain(node: Any, loc: Loc, doc: SourceDoc) -> Any:
    """Round-trip tree -> plain Python, recording where every value and key sits.

    Shared (aliased) subtrees are copied; `_scan_events` has already bounded their total size.
    """
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = (*loc, key if isinstance(key, (str, int)) else str(key))
            try:
                kl, kc = node.lc.key(key)
                doc.key_positions[child] = Pos(kl + 1, kc + 1)
                vl, vc = node.lc.value(key)
                # An alias reports where its anchor sits; point at the key instead.
                doc.positions[child] = max(Pos(vl + 1, vc + 1), Pos(kl + 1, kc + 1),
                                           key=lambda p: (p.line, p.col))
            except (KeyError, TypeError, AttributeError):
                pass  # merged keys (`<<: *base`) carry no position of their own
            out[_plain_key(key)] = _plain(value, child, doc)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            child = (*loc, i)
            try:
                il, ic = node.lc.item(i)
                doc.positions[child] = Pos(il + 1, ic + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            items.append(_plain(value, child, doc))
        return items
    return _plain_scalar(node)


def _plain_key(key: Any) -> Any:
    key = _plain_scalar(key)
    return key if isinstance(key, (str, int)) else str(key)


def _plain_scalar(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return value
    # ruamel's round-trip scalar types (ScalarBoolean is an int; keep it a bool).
    name = type(value).__name__
    if name == "ScalarBoolean":
        return bool(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        # A date is never a valid story value; keep it as text so the message shows it.
        return value.isoformat()
    return str(value)
