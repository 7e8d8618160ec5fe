"""Files of weights from other people (LoRAs, single-file checkpoints), checked before anything
heavy reads them. No torch: ``story`` and ``plan`` use it too.

In: a path to a ``.safetensors`` file or a PyTorch pickle (``.bin``, ``.pt``, ``.pth``,
``.ckpt``). Out: ``opened(path)`` -> the open file and, for safetensors, its validated header;
``check(path)`` the same without keeping the file; or a ``WeightFileError`` that names the file
and says what is wrong with it. ``pickle_refusal(message)`` words torch's refusal of a pickle.

What is checked, before more than a few bytes are read:

- The path is a regular file (``stat`` follows links): a folder, a FIFO (which would block the
  open), ``/dev/zero`` (which never ends) or a socket is refused before it is opened; the file
  is then opened without blocking and checked again by its descriptor.
- safetensors: the 8-byte header length is at most 100,000,000 bytes (``MAX_HEADER_SIZE`` in
  the ``safetensors`` library, which refuses longer ones as ``HeaderTooLarge``) and within the
  file; the header is a JSON object nesting no deeper than a header does; every tensor has a
  dtype, a shape and offsets that lie inside the data, match its size, and cover the data
  without gaps or overlaps (what ``safetensors`` itself requires); ``__metadata__`` maps strings
  to strings.
- pickles: only the zip format ``torch.save`` writes (since torch 1.6); a legacy pickle is
  refused. The zip's directory is checked before torch reads any entry: at most
  ``MAX_ZIP_ENTRIES`` entries, stored or deflated, none reaching past the end of the file, a
  deflated one over 1 MiB unpacking at most ``MAX_ENTRY_RATIO`` times its size (torch stores its
  entries uncompressed: a deflated entry of gigabytes from a few megabytes is a zip bomb), and
  all of them together at most ``MAX_UNPACKED_RATIO`` times the file plus 64 MiB and never more
  than ``MAX_UNPACKED_BYTES``. What the pickle itself may build is torch's ``weights_only``
  unpickler's business; ``pickle_refusal`` turns its refusal into a sentence naming the global
  the file asked for.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .paths import file_problem, open_regular

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own MAX_HEADER_SIZE
MAX_ZIP_ENTRIES = 100_000  # an SDXL checkpoint has ~2,500, a LoRA a few hundred
MAX_UNPACKED_RATIO = 4  # all entries together, unpacked, against the file's size ...
UNPACKED_SLACK = 64 << 20  # ... plus this
MAX_UNPACKED_BYTES = 64 << 30  # and never more than this
MAX_ENTRY_RATIO = 100  # one deflated entry over RATIO_FLOOR bytes
RATIO_FLOOR = 1 << 20

# Bytes per element, as safetensors names dtypes (sub-byte ones are left to safetensors).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}


class WeightFileError(ValueError):
    """A weights file that is refused before anything reads it; says which and why."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def regular_file(path: str | os.PathLike) -> None:
    """``WeightFileError``, in words that say what ``path`` is, unless it is a regular file."""
    problem = file_problem(Path(path))
    if problem is not None:
        raise WeightFileError(path, problem)


@contextmanager
def opened(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, dict[str, Any] | None]]:
    """The checked file, open for reading at its start, and its header if it is safetensors
    (None for a pickle)."""
    path = Path(path)
    regular_file(path)
    suffix = path.suffix.lower()
    if suffix != SAFETENSORS_SUFFIX and suffix not in PICKLE_SUFFIXES:
        raise WeightFileError(path, f"unsupported file type {suffix or path.name!r}; expected "
                                    f"one of {', '.join((SAFETENSORS_SUFFIX,) + PICKLE_SUFFIXES)}")
    try:  # checked again on the open file: should a FIFO take its place meanwhile
        fh = open_regular(path)
    except OSError as exc:
        raise WeightFileError(path, f"cannot read it ({exc.strerror or exc})") from None
    with fh:
        st = os.fstat(fh.fileno())
        try:
            if suffix == SAFETENSORS_SUFFIX:
                header = safetensors_header(fh, path, st.st_size)
            else:
                header = None
                check_torch_zip(fh, path, st.st_size)
            fh.seek(0)
        except OSError as exc:
            raise WeightFileError(path, f"cannot read it ({exc.strerror or exc})") from None
        yield fh, header


def check(path: str | os.PathLike) -> dict[str, Any] | None:
    """Check ``path`` as ``opened`` does and close it; its safetensors header, or None."""
    with opened(path) as (_, header):
        return header


# --- safetensors ---------------------------------------------------------------------------


def safetensors_header(fh: BinaryIO, path: Path, size: int) -> dict[str, Any]:
    """The validated JSON header of the safetensors file open in ``fh`` (``size`` bytes)."""
    def refuse(problem: str) -> WeightFileError:
        return WeightFileError(path, f"not a readable .safetensors file: {problem}")

    if size < 8:
        raise refuse(f"{size} bytes, too short for a header")
    length = int.from_bytes(fh.read(8), "little")
    if length > MAX_HEADER_BYTES:
        raise refuse(f"header length {length:,} bytes is over the {MAX_HEADER_BYTES:,}-byte "
                     "limit the safetensors library itself enforces")
    if 8 + length > size:
        raise refuse(f"header length {length:,} bytes runs past the end of the file "
                     f"({size:,} bytes)")
    raw = fh.read(length)
    if len(raw) != length:
        raise refuse("the file got shorter while it was read")
    header = _json(raw, refuse, "header")
    if not isinstance(header, dict):
        raise refuse(f"header is a JSON {_kind(header)}, not an object")
    data = size - 8 - length
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                    isinstance(v, str) for v in info.values()):
                raise refuse("__metadata__ is not a map of strings")
            continue
        spans.append((*_tensor_span(name, info, data, refuse), name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise refuse(f"tensor {_short(name)} starts at byte {begin:,} of the data, not "
                         f"{end:,}: tensors overlap or leave a gap")
        end = stop
    if end != data:
        raise refuse(f"the tensors cover {end:,} of the {data:,} data bytes")
    return header


def _tensor_span(name: str, info: Any, data: int, refuse) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise refuse(f"tensor {_short(name)} is described by a JSON {_kind(info)}")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not all(
            type(n) is int and n >= 0 for n in shape):
        raise refuse(f"tensor {_short(name)} has no valid dtype and shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(
            type(n) is int for n in offsets):
        raise refuse(f"tensor {_short(name)} has no valid data_offsets")
    begin, stop = offsets
    if not 0 <= begin <= stop <= data:
        raise refuse(f"tensor {_short(name)} lies at bytes {begin:,}..{stop:,}, outside the "
                     f"{data:,} bytes of data in the file")
    if dtype in DTYPE_BYTES and math.prod(shape) * DTYPE_BYTES[dtype] != stop - begin:
        raise refuse(f"tensor {_short(name)} of shape {shape} and dtype {dtype} needs "
                     f"{math.prod(shape) * DTYPE_BYTES[dtype]:,} bytes, its offsets give "
                     f"{stop - begin:,}")
    return begin, stop


def _json(raw: bytes, refuse, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise refuse(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise refuse(f"{what} nests too deeply") from None
    except ValueError as exc:
        raise refuse(f"{what} is not valid JSON ({exc})") from None


def bounded_json(path: Path, limit: int, what: str) -> Any:
    """A small JSON file beside a weights file (``adapter_config.json``): a regular file of at
    most ``limit`` bytes, nesting no deeper than Python's JSON reader allows."""
    def refuse(problem: str) -> WeightFileError:
        return WeightFileError(path, problem)

    regular_file(path)
    with open(path, "rb") as fh:
        raw = fh.read(limit + 1)  # bounded, even if the file grows meanwhile
    if len(raw) > limit:
        raise refuse(f"is over {limit:,} bytes, too large for {what}")
    return _json(raw, refuse, "it")


def loads_bounded(text: str, limit: int, path: Path, what: str) -> Any:
    """JSON from a metadata string of a file (``lora_adapter_metadata``), bounded and guarded
    against deep nesting."""
    def refuse(problem: str) -> WeightFileError:
        return WeightFileError(path, problem)

    if len(text) > limit:
        raise refuse(f"{what} is {len(text):,} characters, over the {limit:,} allowed")
    return _json(text.encode("utf-8", "surrogatepass"), refuse, what)


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


# --- PyTorch zip files ---------------------------------------------------------------------


def check_torch_zip(fh: BinaryIO, path: Path, size: int) -> None:
    """Refuse a pickle that is not a zip written by ``torch.save``, or whose entries would
    unpack to far more than the file holds. Reads the zip's directory, no entry."""
    def refuse(problem: str) -> WeightFileError:
        return WeightFileError(path, problem)

    entries, directory = _zip_directory(fh, size)
    if entries is None:
        fh.seek(0)
        if fh.read(1) == b"\x80":
            raise refuse("is a legacy PyTorch pickle (saved before torch 1.6, or with "
                         "_use_new_zipfile_serialization=False), which storyboard does not "
                         "open; load it where you trust it and save the tensors again, "
                         "preferably as .safetensors")
        raise refuse("not a readable PyTorch file (not the zip archive torch.save writes)")
    if entries > MAX_ZIP_ENTRIES or directory > size:
        raise refuse(f"its zip directory lists {entries:,} entries in {directory:,} bytes; a "
                     f"weights file has at most {MAX_ZIP_ENTRIES:,}")
    try:
        infos = zipfile.ZipFile(fh).infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise refuse(f"not a readable PyTorch file (a damaged zip archive: {exc})") from None
    total = 0
    for info in infos:
        name = _short(info.filename)
        if info.flag_bits & 0x1:
            raise refuse(f"zip entry {name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise refuse(f"zip entry {name} uses compression method {info.compress_type}, "
                         "which PyTorch does not read")
        if info.header_offset + info.compress_size > size:
            raise refuse(f"zip entry {name} reaches past the end of the file (cut short?)")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise refuse(f"zip entry {name} is stored as {info.compress_size:,} bytes but "
                         f"declares {info.file_size:,}")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_ENTRY_RATIO * max(
                info.compress_size, 1):
            raise refuse(f"zip entry {name} would unpack {info.compress_size:,} bytes into "
                         f"{info.file_size:,}: a zip bomb (torch.save stores its entries "
                         "uncompressed)")
        total += info.file_size
    if total > min(MAX_UNPACKED_RATIO * size + UNPACKED_SLACK, MAX_UNPACKED_BYTES):
        raise refuse(f"its zip entries would unpack to {total:,} bytes from a file of "
                     f"{size:,}: a zip bomb")
    if not any(i.filename == "data.pkl" or i.filename.endswith("/data.pkl") for i in infos):
        raise refuse("not a PyTorch file (its zip archive has no data.pkl)")


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _zip_directory(fh: BinaryIO, size: int) -> tuple[int | None, int]:
    """(entries, directory bytes) from a zip's end records, read before ``zipfile`` builds
    its list of entries; (None, 0) when the file is no zip."""
    tail_size = min(size, _EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size)
    fh.seek(size - tail_size)
    tail = fh.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        return None, 0
    *_, entries, directory, _offset, _comment = _EOCD.unpack_from(tail, at)
    if entries == 0xFFFF or directory == 0xFFFFFFFF:  # zip64: the real counts are elsewhere
        locator = at - _ZIP64_LOCATOR.size
        if locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
            return None, 0
        where = _ZIP64_LOCATOR.unpack_from(tail, locator)[2]
        if where + _ZIP64_EOCD.size > size:
            return None, 0
        fh.seek(where)
        record = fh.read(_ZIP64_EOCD.size)
        if record[:4] != b"PK\x06\x06":
            return None, 0
        entries, directory = _ZIP64_EOCD.unpack(record)[7:9]
    return entries, directory


# --- what torch's weights-only unpickler refused -------------------------------------------

_GLOBAL = re.compile(r"GLOBAL (\S+?)(?: was not an allowed global| whose module)")
_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue",
                "(1)", "(2)", "WeightsUnpickler error")


def pickle_refusal(message: str) -> str:
    """A sentence for torch's ``weights_only`` refusal of a pickle: the global the file asked
    for when torch names one, else torch's own reason without its advice to load unsafely."""
    found = _GLOBAL.search(message)
    if found:
        return refused_global(found.group(1))
    lines = [line.strip() for line in message.splitlines()]
    reason = next((line for line in reversed(lines)
                   if line and not line.startswith(_BOILERPLATE)), "")
    return ("refused by torch's weights-only loader" + (f" ({reason[:300]})" if reason else "")
            + ": the file is damaged or holds more than tensors; nothing in it was run")


def refused_global(name: str) -> str:
    """The refusal of a pickle that asks for the global ``name`` (``posix.system``)."""
    shown = re.sub(r"^(posix|nt)\.", "os.", name)  # os.system pickles as posix.system
    return (f"refused: the file asks to run or construct `{shown}`, which a weights file never "
            "needs; nothing in it was run")
