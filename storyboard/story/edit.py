"""Edit a story file in place without disturbing anything else in it.

In: a story path, a panel id and a seed. Out: the same file with only that panel's seed written
(replaced where it exists, added after the panel's ``id`` where it does not), every other byte
unchanged: comments, key order, quoting, indentation, line endings. The edit is made at the
character span the YAML parser reports for the value, the result is validated as a story before
it replaces the file, and the write is atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from ..errors import UserError, did_you_mean
from ..paths import atomic_write_bytes
from .load import validate_doc
from .source import parse_source, read_source, yaml_parser


@dataclass(frozen=True)
class PinResult:
    panel: str
    seed: int
    previous: int | None  # the seed written before, None when it was derived
    line: int


def pin_seed(path: str | Path, panel: str, seed: int) -> PinResult:
    path = Path(path)
    if not 0 <= seed <= 2**64 - 1:
        raise UserError(f"seed must be between 0 and 2**64-1, got {seed}")
    doc = read_source(path)  # also refuses hostile or broken files
    validate_doc(doc, path.resolve().parent)
    raw = path.read_bytes()
    bom = raw.startswith(b"\xef\xbb\xbf")
    text = raw.decode("utf-8-sig")
    newline = "\r\n" if "\r\n" in text else "\n"

    node = _panel_node(yaml_parser().compose(text), panel, doc.data)
    pairs = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
    previous = None
    if "seed" in pairs:
        key, value = pairs["seed"]
        previous = int(doc.data["panels"][_index(doc.data, panel)]["seed"])
        start, end = value.start_mark.index, value.end_mark.index
        edited = text[:start] + str(seed) + text[end:]
        line = value.start_mark.line + 1
    else:
        key, value = pairs["id"]
        if node.flow_style:
            at = value.end_mark.index
            # a quoted id ends after its closing quote; end_mark already points past it
            edited = text[:at] + f", seed: {seed}" + text[at:]
            line = value.end_mark.line + 1
        else:
            eol = text.find("\n", value.end_mark.index)
            eol = len(text) if eol < 0 else eol + 1
            insert = " " * key.start_mark.column + f"seed: {seed}" + newline
            if eol == len(text) and not text.endswith("\n"):
                insert = newline + insert.rstrip("\r\n")
            edited = text[:eol] + insert + text[eol:]
            line = key.start_mark.line + 2

    # The edited story must still be a valid story with the new seed, before it is written.
    check = validate_doc(parse_source(edited, str(path)), path.resolve().parent)
    assert check.spec.panels[_index(doc.data, panel)].seed == seed
    atomic_write_bytes(path, (b"\xef\xbb\xbf" if bom else b"") + edited.encode("utf-8"))
    return PinResult(panel, seed, previous, line)


def _index(data: dict, panel: str) -> int:
    for i, p in enumerate(data.get("panels", [])):
        if isinstance(p, dict) and p.get("id") == panel:
            return i
    ids = [p.get("id") for p in data.get("panels", []) if isinstance(p, dict)]
    hint = did_you_mean(panel, [i for i in ids if isinstance(i, str)])
    raise UserError(f"no panel named {panel!r} in this story"
                    + (f"; {hint}" if hint else f"; panels: {', '.join(map(str, ids))}"))


def _panel_node(root: MappingNode, panel: str, data: dict) -> MappingNode:
    index = _index(data, panel)
    panels = next((v for k, v in root.value if isinstance(k, ScalarNode)
                   and k.value == "panels"), None)
    if not isinstance(panels, SequenceNode) or not isinstance(panels.value[index], MappingNode):
        raise UserError("cannot edit this story's panels in place (they are built from YAML "
                        "aliases or merges); set the seed by hand")
    node = panels.value[index]
    keys = {k.value for k, _ in node.value if isinstance(k, ScalarNode)}
    if "id" not in keys:
        raise UserError(f"panel {panel!r} gets its id from a YAML merge; set the seed by hand")
    return node
