"""Edit a story file in place without disturbing anything else in it (`storyboard pin`).

In: a story path, a panel id and a seed. Out: the same file with only that panel's seed written
(replaced where it exists, added after the panel's ``id`` where it does not), every other byte
unchanged: comments, key order, quoting, indentation, a BOM, and line endings (``\\n``,
``\\r\\n`` or old Macs' ``\\r``; an added line ends like the ``id`` line it follows). The edit is
made at the character span the YAML parser reports for the value; the edited text must parse to
exactly the old story with that one seed changed, and validate, before anything is written.

What pin refuses, with the line and a reason, rather than guess:

- a seed that is a YAML alias (``seed: *s``), or that the panel inherits through a merge
  (``<<: *base``): the writer shared that value on purpose, and pin would have to unlink it;
- a seed, panel or panel list that is anchored (``&s``) and used again elsewhere: writing there
  would change the other places too;
- a read-only file (no write permission bit, or none for this user), as an editor does;
- a file that changed between pin's read and its write (an editor saving meanwhile).

How the file is written, as a careful editor (vim's ``backupcopy=auto``) does it:

- Through symbolic links: the link is resolved and the real file edited; the link stays a link.
  A loop of links is refused.
- Read once: the edit is computed from the bytes read, and the file is read again just before it
  is replaced; if those bytes differ, nothing is written.
- Normally atomically: a temporary file in the real file's folder, given the file's permission
  bits and (where the OS lets us) its owner and group, synced, then renamed over it.
- In place when a rename would lose something: the file has other hard links (a rename would
  leave them on the old text), belongs to another user, or has a group we may not give the new
  file, or its folder takes no new files. The same inode is rewritten and truncated; space is
  reserved first, so a full disk refuses before any byte changes, but a crash in the middle of
  that write can leave the file half-written. That is the price of keeping the links.
"""

from __future__ import annotations

import copy
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml.events import AliasEvent, NodeEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import StoryError, UserError, did_you_mean
from ..paths import atomic_write_via, naming
from .load import validate_doc
from .source import _MERGE, parse_source, read_story_bytes, yaml_parser

_BOM = b"\xef\xbb\xbf"
_BREAK = re.compile(r"\r\n|\r|\n")
_COLON = re.compile(r"[ \t]*:")
_PROPERTIES = re.compile(r"(?:[&!]\S*\s+)*")  # an anchor and/or tag before a value


@dataclass(frozen=True)
class PinResult:
    panel: str
    seed: int
    previous: int | None  # the seed written before, None when it was derived
    line: int


def pin_seed(path: str | Path, panel: str, seed: int) -> PinResult:
    name = str(path)
    if not 0 <= seed <= 2**64 - 1:
        raise UserError(f"seed must be between 0 and 2**64-1, got {seed}")
    target = _real_file(Path(path), name)
    raw = read_story_bytes(target, name)  # refuses folders, pipes, oversized files
    _check_writable(target, name)
    edited, result = edit_bytes(raw, name, target.parent, panel, seed)
    _replace(target, name, raw, edited)
    return result


def edit_bytes(raw: bytes, name: str, base_dir: Path, panel: str,
               seed: int) -> tuple[bytes, PinResult]:
    """The story ``raw`` with ``panel``'s seed set to ``seed``, and where it went. Pure: reads
    and writes no story file (``base_dir`` is where the story's relative paths start)."""
    doc = parse_source(raw, name)  # also refuses hostile or broken files
    validate_doc(doc, base_dir)
    text = doc.text  # without the BOM; put back below
    index = _index(doc.data, panel)
    sharing = _Sharing(text)
    node = _panel_node(yaml_parser().compose(text), index, panel, sharing, name)
    pairs = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
    if "seed" in pairs:
        key, value = pairs["seed"]
        sharing.refuse_shared_seed(key, value, panel, name)
        previous = doc.data["panels"][index].get("seed")
        edited, line = _replace_value(text, key, value, seed)
    else:
        merge = next((k for k, _ in node.value if k.tag == _MERGE), None)
        if merge is not None and "seed" in doc.data["panels"][index]:
            raise UserError(f"{name}:{merge.start_mark.line + 1}: panel {panel!r} gets its seed "
                            "from this YAML merge (`<<`); pin would have to override what the "
                            "merge shares. Write `seed:` into the panel by hand")
        previous = None
        edited, line = _insert_after_id(text, node, *pairs["id"], seed)

    # The edited text must read as exactly the old story with this one seed changed.
    expected = copy.deepcopy(doc.data)
    expected["panels"][index]["seed"] = seed
    try:
        after = parse_source(edited, name)
        same = after.data == expected
    except StoryError:
        same = False
    if not same:
        raise UserError(f"{name}:{line}: cannot pin panel {panel!r} here without changing more "
                        "than its seed; set the seed by hand")
    validate_doc(after, base_dir)
    data = (_BOM if raw.startswith(_BOM) else b"") + edited.encode("utf-8")
    return data, PinResult(panel, seed, previous, line)


# --- where the seed goes -----------------------------------------------------------------------


def _replace_value(text: str, key: Node, value: Node, seed: int) -> tuple[str, int]:
    start, end = value.start_mark.index, value.end_mark.index
    if isinstance(value, ScalarNode) and value.value == "" and not value.style:
        # `seed:` with nothing after it: the parser puts the empty value where the next token
        # starts, so write right after the key's colon instead.
        colon = _COLON.match(text, key.end_mark.index)
        if colon is None:
            return text, key.start_mark.line + 1  # the check after the edit refuses this
        return text[:colon.end()] + f" {seed}" + text[colon.end():], key.start_mark.line + 1
    start = _PROPERTIES.match(text, start).end()  # keep an unused anchor or a tag
    return text[:start] + str(seed) + text[end:], value.start_mark.line + 1


def _insert_after_id(text: str, node: MappingNode, key: Node, value: Node,
                     seed: int) -> tuple[str, int]:
    if node.flow_style:
        at = value.end_mark.index  # a quoted id's end_mark is past its closing quote
        return text[:at] + f", seed: {seed}" + text[at:], value.end_mark.line + 1
    item = " " * key.start_mark.column + f"seed: {seed}"
    # an alias (`id: *name`) reports its anchor's place: search from the key then
    after = key.end_mark.index if value.start_mark.index < key.start_mark.index else \
        value.end_mark.index
    found = _BREAK.search(text, after)
    if found:  # the new line ends the way the id's line does
        eol, insert = found.end(), item + found.group()
    else:  # the id's line is the last, with no line break: the file still ends without one
        first = _BREAK.search(text)
        eol, insert = len(text), (first.group() if first else "\n") + item
    return text[:eol] + insert + text[eol:], key.start_mark.line + 2


# --- what may not be edited ----------------------------------------------------------------


class _Sharing:
    """Anchors in a story and the lines of the aliases that use them (merges are aliases too)."""

    def __init__(self, text: str):
        self.anchors: dict[int, str] = {}  # start index of an anchored node -> its anchor
        self.uses: dict[int, list[int]] = {}  # start index of an anchored node -> alias lines
        latest: dict[str, int] = {}  # an anchor may be defined again; aliases use the latest
        for event in yaml_parser().parse(text):
            if isinstance(event, AliasEvent):
                if event.anchor in latest:
                    self.uses.setdefault(latest[event.anchor], []).append(
                        event.start_mark.line + 1)
            elif isinstance(event, NodeEvent) and event.anchor:
                self.anchors[event.start_mark.index] = event.anchor
                latest[event.anchor] = event.start_mark.index

    def refuse_if_shared(self, node: Node, what: str, name: str) -> None:
        at = node.start_mark.index
        if at in self.anchors and self.uses.get(at):
            raise UserError(f"{name}:{node.start_mark.line + 1}: {what} is the YAML anchor "
                            f"&{self.anchors[at]}, used again on {_lines(self.uses[at])}; "
                            "pinning a seed there would change those too. Set it by hand")

    def refuse_shared_seed(self, key: Node, value: Node, panel: str, name: str) -> None:
        if value.start_mark.index < key.start_mark.index:  # an alias reports its anchor's place
            anchor = self.anchors.get(value.start_mark.index, "?")
            raise UserError(f"{name}:{key.start_mark.line + 1}: panel {panel!r} takes its seed "
                            f"from the YAML alias *{anchor} (anchored on line "
                            f"{value.start_mark.line + 1}); pin would have to unlink them. "
                            "Write the seed there by hand")
        self.refuse_if_shared(value, f"the seed of panel {panel!r}", name)


def _lines(lines: list[int]) -> str:
    return ("line " if len(lines) == 1 else "lines ") + ", ".join(map(str, sorted(set(lines))))


def _index(data: dict, panel: str) -> int:
    for i, p in enumerate(data.get("panels", [])):
        if isinstance(p, dict) and p.get("id") == panel:
            return i
    ids = [p.get("id") for p in data.get("panels", []) if isinstance(p, dict)]
    hint = did_you_mean(panel, [i for i in ids if isinstance(i, str)])
    raise UserError(f"no panel named {panel!r} in this story"
                    + (f"; {hint}" if hint else f"; panels: {', '.join(map(str, ids))}"))


def _panel_node(root: MappingNode, index: int, panel: str, sharing: _Sharing,
                name: str) -> MappingNode:
    panels = next((v for k, v in root.value if isinstance(k, ScalarNode)
                   and k.value == "panels"), None)
    if not isinstance(panels, SequenceNode) or not isinstance(panels.value[index], MappingNode):
        raise UserError("cannot edit this story's panels in place (they are built from YAML "
                        "aliases or merges); set the seed by hand")
    sharing.refuse_if_shared(panels, "the panel list", name)
    node = panels.value[index]
    sharing.refuse_if_shared(node, f"panel {panel!r}", name)
    keys = {k.value for k, _ in node.value if isinstance(k, ScalarNode)}
    if "id" not in keys:
        raise UserError(f"panel {panel!r} gets its id from a YAML merge; set the seed by hand")
    return node


# --- reading and writing the file ----------------------------------------------------------


def _real_file(path: Path, name: str) -> Path:
    """``path`` with every symbolic link resolved: the file an edit must change."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{name}: its symbolic links loop and never reach a file; point "
                            "the link at the story file") from None
        return path  # missing, or unreadable: reading it says so


def _check_writable(target: Path, name: str) -> None:
    mode = target.stat().st_mode
    if not mode & 0o222 or not os.access(target, os.W_OK):
        raise UserError(f"{name} is read-only (mode {mode & 0o7777:04o}); pin changes only a "
                        f"file you may write. Make it writable (chmod u+w {name}) and run again")


def _replace(target: Path, name: str, raw: bytes, data: bytes) -> None:
    """Write ``data`` over ``target`` if it still holds ``raw``; see the module docstring."""
    try:
        with open(target, "rb") as fh:
            st = os.fstat(fh.fileno())
            now = fh.read(len(raw) + 1)
    except OSError:
        now = None
    if now != raw:
        raise UserError(f"{name} changed while pin was editing it (another program saved it); "
                        "nothing was written. Run pin again")
    euid = os.geteuid() if hasattr(os, "geteuid") else st.st_uid
    if st.st_nlink > 1 or euid not in (0, st.st_uid):
        _write_in_place(target, data)
        return
    try:
        atomic_write_via(target, lambda tmp: _write_owned(tmp, data, st))
    except PermissionError:  # a group we may not give, a folder that takes no new files
        _write_in_place(target, data)


def _write_owned(tmp: Path, data: bytes, st: os.stat_result) -> None:
    tmp.write_bytes(data)
    if hasattr(os, "chown"):
        now = tmp.stat()
        if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
            os.chown(tmp, st.st_uid, st.st_gid)


def _write_in_place(target: Path, data: bytes) -> None:
    with open(target, "r+b") as fh:
        try:
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fh.fileno(), 0, len(data))
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise
            fh.write(data)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            raise naming(exc, target) from exc
