"""Read a story file: bytes in, plain Python data and a map of line/column positions out.

Hostile input is refused here, before anything is built from it: files that are too large, not
UTF-8, empty, or holding control characters; several documents in one file; custom tags
(``!!python/object``); nesting deeper than any story needs (counted through aliases too); alias
bombs (counted by their *expanded* size, in values and in characters, while streaming the
parser's events, so a "billion laughs" costs microseconds); numbers with absurdly many digits;
duplicate keys (all of them reported, with the line of the first occurrence). Only then is the
document composed (ruamel.yaml's libyaml-based C parser when available) and turned into plain
dicts, lists and scalars, recording where every key and value sits, with a warning for each
integer other YAML tools would read otherwise (``seed: 0755``: 755 here, octal 493 in YAML 1.1).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
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
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .. import constants as C
from ..errors import Diagnostics, Loc, Problem, StoryError
from ..paths import file_problem

# Tags a writer may spell out; anything else (python objects, custom constructors) is refused.
_ALLOWED_TAGS = {
    None,
    "!",
    *(
        f"tag:yaml.org,2002:{t}"
        for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")
    ),
}
_MERGE = "tag:yaml.org,2002:merge"
# Anything YAML could read as a number: decimal, hex, octal, binary, sexagesimal, floats.
_NUMBER_RE = re.compile(r"[-+]?(0x[0-9a-fA-F_]*|0o?[0-7_]*|0b[01_]*|[0-9][0-9_]*(:[0-5]?[0-9])+"
                        r"|[0-9_]*\.?[0-9_]*([eE][-+]?[0-9]+)?)")
# Control characters, and the Unicode line breaks YAML 1.1 honours but editors do not show.
_CONTROL_RE = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f\\x85\\u2028\\u2029\\ufeff"
                         "\\ufffe\\uffff]")


def yaml_parser() -> YAML:
    # typ="safe" uses the C parser from ruamel.yaml.clib when it is installed, else pure Python.
    return YAML(typ="safe")


@dataclass(frozen=True, order=True)
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
    block_scalars: set[Loc] = field(default_factory=set)  # values written with | or >
    warnings: list[Problem] = field(default_factory=list)  # numbers other tools read otherwise

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
    return parse_source(read_story_bytes(path), str(path), path=Path(path))


def read_story_bytes(path: str | Path, name: str | None = None) -> bytes:
    """A story file's bytes, refusing folders, pipes, devices and oversized files first;
    messages name the file ``name`` (default: ``path``)."""
    name = str(path) if name is None else name
    p = Path(path)

    def refuse(message: str) -> StoryError:
        return StoryError([Problem(name, None, None, (), message)])

    problem = file_problem(p)  # a pipe or a device is refused before anything opens it
    if problem:
        raise refuse(problem)
    try:
        # Non-blocking, and checked again once open: a file swapped for a pipe meanwhile is
        # refused, not waited on.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise refuse("is not a regular file")
            if st.st_size > C.MAX_FILE_BYTES:
                raise refuse(f"file is {st.st_size:,} bytes; stories are limited to "
                             f"{C.MAX_FILE_BYTES:,} bytes")
            raw = fh.read(C.MAX_FILE_BYTES + 1)  # bounded, even if the file grows meanwhile
    except OSError as exc:
        raise refuse(f"cannot read file: {exc.strerror or exc}") from None
    return raw


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
    text = text.removeprefix("\ufeff")
    bad = _CONTROL_RE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise StoryError([Problem(name, line, col, (), f"control character "
                                  f"U+{ord(bad.group()):04X} is not allowed in a story",
                                  "remove it; it is invisible in most editors")])
    _scan_events(text, name)
    try:
        root = yaml_parser().compose(text)
    except MarkedYAMLError as exc:
        raise StoryError([_marked_problem(exc, name, text)]) from None
    except (YAMLError, ValueError, RecursionError) as exc:
        raise StoryError([Problem(name, None, None, (), f"cannot parse YAML: {exc}")]) from None
    if root is None:
        raise StoryError([Problem(name, 1, 1, (), "file is empty; expected a story")])
    doc = SourceDoc(name=name, path=path, text=text, data=None)
    doc.positions[()] = Pos(1, 1)
    try:
        doc.data = _plain(root, (), doc, yaml_parser().constructor)
    except _NodeProblem as exc:
        pos = _pos(exc.node)
        raise StoryError([Problem(name, pos.line, pos.col, (), exc.message)]) from None
    except (YAMLError, ValueError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise StoryError([Problem(name, mark.line + 1 if mark else None,
                                  mark.column + 1 if mark else None, (),
                                  f"cannot read value: {exc}")]) from None
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


def _marked_problem(exc: MarkedYAMLError, name: str, text: str = "") -> Problem:
    mark = exc.problem_mark or exc.context_mark
    msg = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        msg = f"{exc.problem} ({exc.context})"
    if mark is None:
        return Problem(name, None, None, (), f"invalid YAML: {msg}")
    lines = text.split("\n")
    line = lines[mark.line] if mark.line < len(lines) else ""
    hint = None
    if "\t" in line[: mark.column + 1]:
        hint = "YAML indentation must use spaces, not tabs"
    return Problem(name, mark.line + 1, mark.column + 1, (), f"invalid YAML: {msg}", hint)


class _Frame:
    __slots__ = ("is_map", "anchor", "size", "chars", "height", "keys", "expect_key")

    def __init__(self, is_map: bool, anchor: str | None):
        self.is_map = is_map
        self.anchor = anchor
        self.size = 1  # values, aliases expanded
        self.chars = 0  # characters of scalars, aliases expanded
        self.height = 1  # nesting depth below and including this node, aliases expanded
        self.keys: dict[str, int] = {}
        self.expect_key = True


def _scan_events(text: str, name: str) -> None:
    """Stream the parser's events once, refusing hostile structure before it is built.

    Expanded sizes and depths are tracked per anchor, so an alias costs what it would expand
    to; the event stream is flat, so deep nesting cannot overflow Python's stack here.
    """
    diag = Diagnostics()
    stack: list[_Frame] = []
    anchors: dict[str, tuple[int, int, int]] = {}  # anchor -> (values, chars, height)
    total = chars = 0
    documents = 0

    def fail(mark, message: str, hint: str | None = None) -> StoryError:
        line = mark.line + 1 if mark is not None else None
        col = mark.column + 1 if mark is not None else None
        diag.add(Problem(name, line, col, (), message, hint))
        return StoryError(diag.sorted())

    def finish_node(mark, size: int, nchars: int, height: int, anchor: str | None) -> None:
        if anchor:
            anchors[anchor] = (size, nchars, height)
        if len(stack) + height > C.MAX_NESTING + 1:
            raise fail(mark, f"document is nested more than {C.MAX_NESTING} levels deep"
                             " (counting what aliases expand to)")
        if stack:
            parent = stack[-1]
            parent.size += size
            parent.chars += nchars
            parent.height = max(parent.height, height + 1)
            if parent.is_map:
                parent.expect_key = not parent.expect_key

    try:
        for ev in yaml_parser().parse(text):
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
                if (not ev.style and len(value) > C.MAX_NUMBER_CHARS
                        and _NUMBER_RE.fullmatch(value)):
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
                chars += len(value)
                finish_node(ev.start_mark, 1, len(value), 1, ev.anchor)
            elif isinstance(ev, AliasEvent):
                if any(frame.anchor == ev.anchor for frame in stack):
                    raise fail(ev.start_mark, f"alias *{ev.anchor} refers to a collection that "
                                              "contains it (a recursive structure)")
                size, nchars, height = anchors.get(ev.anchor, (1, 0, 1))
                total += size
                chars += nchars
                finish_node(ev.start_mark, size, nchars, height, None)
            elif isinstance(ev, CollectionStartEvent):
                stack.append(_Frame(isinstance(ev, MappingStartEvent), ev.anchor))
                if len(stack) > C.MAX_NESTING:
                    raise fail(ev.start_mark, f"document is nested more than {C.MAX_NESTING} "
                                              "levels deep")
            elif isinstance(ev, CollectionEndEvent):
                frame = stack.pop()
                total += 1
                finish_node(ev.start_mark, frame.size, frame.chars, frame.height, frame.anchor)
            if total > C.MAX_NODES or chars > C.MAX_EXPANDED_CHARS:
                what = (f"{C.MAX_NODES:,} values" if total > C.MAX_NODES
                        else f"{C.MAX_EXPANDED_CHARS:,} characters")
                raise fail(getattr(ev, "start_mark", None),
                           f"document expands to more than {what}",
                           "this is what a YAML alias bomb looks like; use fewer aliases")
            if diag.dropped:
                break
    except MarkedYAMLError as exc:
        diag.add(_marked_problem(exc, name, text))
    except YAMLError as exc:
        diag.add(Problem(name, None, None, (), f"invalid YAML: {exc}"))
    diag.raise_if_errors()


def _plain(node: Any, loc: Loc, doc: SourceDoc, constructor: Any) -> Any:
    """Composed node graph -> plain Python, recording where every value and key sits.

    Shared (aliased) subtrees are copied; `_scan_events` has bounded their expanded size and
    depth, so this recursion is shallow and cheap.
    """
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        merged: list[Any] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = (value_node.value if isinstance(value_node, SequenceNode)
                           else [value_node])
                if not all(isinstance(n, MappingNode) for n in sources):
                    raise _NodeProblem(value_node, "`<<` merges a mapping or a list of "
                                                   "mappings into this one")
                merged.extend(sources)
                continue
            key = _plain_key(constructor.construct_object(key_node)
                             if isinstance(key_node, ScalarNode) else str(key_node.value))
            if key in out:  # equal by value though spelled differently, e.g. 1 and 01
                raise _NodeProblem(key_node, f"duplicate key {key!r} (the same key as one "
                                             "above, spelled differently)")
            child = (*loc, key)
            key_pos = _pos(key_node)
            doc.key_positions[child] = key_pos
            value_pos = _pos(value_node)
            # An alias reports where its anchor sits and an empty value where the next token
            # starts; point at the key then.
            if value_pos < key_pos or (isinstance(value_node, ScalarNode)
                                       and value_node.value == "" and not value_node.style
                                       and value_pos.line > key_pos.line):
                value_pos = key_pos
            doc.positions[child] = value_pos
            if isinstance(value_node, ScalarNode) and value_node.style in ("|", ">"):
                doc.block_scalars.add(child)
            out[key] = _plain(value_node, child, doc, constructor)
        # `<<: *base` fills in keys the mapping does not set itself (YAML merge semantics).
        for source in merged:
            if isinstance(source, MappingNode):
                base = _plain(source, loc, doc, constructor)
                for key, value in base.items():
                    out.setdefault(key, value)
        return out
    if isinstance(node, SequenceNode):
        items = []
        for i, value_node in enumerate(node.value):
            child = (*loc, i)
            doc.positions[child] = _pos(value_node)
            items.append(_plain(value_node, child, doc, constructor))
        return items
    value = _plain_scalar(constructor.construct_object(node))
    if type(value) is int and not node.style:
        note = number_note(node.value, value)
        if note:
            name = f"{loc[-1]} " if loc and isinstance(loc[-1], str) else ""
            doc.warnings.append(doc.problem(loc, name + note, severity="warning"))
    return value


def number_note(text: str, value: int) -> str | None:
    """What is ambiguous about an integer written as ``text`` (and read as ``value``), when
    YAML 1.1 tools (PyYAML, most scripts) or strict YAML 1.2 ones would read it otherwise."""
    sign, digits = ("-" if text.startswith("-") else ""), text.lstrip("+-")
    octal = digits.replace("_", "")
    if len(octal) > 1 and octal.startswith("0") and octal.isdigit() and value:
        other = (f"as octal {sign}{int(octal, 8)}" if set(octal) <= set("01234567")
                 else "as text")
        return (f"{text} has a leading zero: read as {value} (decimal); YAML 1.1 tools read it "
                f"{other}; write {value}")
    if digits[:2] in ("0o", "0O"):
        return f"{text} is read as {value} (octal); YAML 1.1 tools read it as text; write {value}"
    if digits[:2] in ("0b", "0B") or ("_" in digits and digits[:2] not in ("0x", "0X")):
        return (f"{text} is read as {value}; strict YAML 1.2 tools read it as text; "
                f"write {value}")
    return None


class _NodeProblem(Exception):
    def __init__(self, node: Any, message: str):
        super().__init__(message)
        self.node = node
        self.message = message


def _pos(node: Any) -> Pos:
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1)


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
