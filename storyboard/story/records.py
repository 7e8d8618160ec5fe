"""Records storyboard reads back, validated like a story: a panel PNG's job, a manifest, a root,
a trained LoRA's record.

In: JSON text from a file that may or may not be storyboard's (a panel PNG's ``storyboard``
chunk, ``OUT/manifest.json``, a cache root, a trained LoRA's ``done.json``), and the file's
name for messages. Out: a validated, frozen record (``PanelRecord``, ``ManifestRecord``,
``RootsRecord``, ``TrainedRecord``) or ``RecordError`` saying what is wrong, in one line.

Nothing in such a file is trusted because storyboard might have written it: a PNG travels
between people, and its record decides a file name (the panel id), the render's size, steps and
guidance, and the model and LoRA paths. So the job inside a record goes through the same field
rules as a story's panel (``schema``: ids, pixel sizes, step and guidance limits, text lengths,
known samplers), and JSON is refused before parsing when it is larger or deeper than any record
storyboard writes (``parse_json``), so a hostile file costs a few milliseconds.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from .. import constants as C
from ..errors import UserError
from ..families import FAMILY_NAMES
from ..samplers import sampler_names
from .fields import _check_id
from .schema import Guidance, PanelId, Pixels, Seed, Steps, Text, _Spec

# A record storyboard writes: three texts of MAX_TEXT_CHARS (up to 4 UTF-8 bytes each, or a
# 12-character JSON escape) and a few hundred bytes besides. Past this it is not ours.
MAX_RECORD_CHARS = 16 * C.MAX_TEXT_CHARS
# A manifest lists every panel with its texts.
MAX_MANIFEST_CHARS = C.MAX_PANELS * 4 * C.MAX_TEXT_CHARS
MAX_JSON_DEPTH = 8  # the deepest record storyboard writes is 4 levels
MAX_PATH_CHARS = 4096
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Path_ = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)]
Short = Annotated[str, Field(max_length=200)]


class RecordError(UserError):
    """A record that cannot be used (damaged, forged, or from an incompatible version)."""


def parse_json(text: str | bytes, what: str, max_chars: int = MAX_RECORD_CHARS) -> Any:
    """``text`` parsed as JSON; refused when larger or more deeply nested than storyboard's own
    records, and when it holds NaN or Infinity (not JSON, though Python's parser accepts
    them)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) > max_chars:
        raise RecordError(f"{what}: {len(text):,} characters, more than any storyboard record "
                          f"({max_chars:,})")

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not a number JSON allows")

    too_deep = False
    try:
        data = json.loads(text, parse_constant=refuse)
    except RecursionError:  # the C parser's own guard, hit within microseconds
        too_deep = True
    except ValueError as exc:
        raise RecordError(f"{what}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if too_deep or _depth(data) > MAX_JSON_DEPTH:
        raise RecordError(f"{what}: nested more than {MAX_JSON_DEPTH} levels deep; not a "
                          "storyboard record")
    return data


def _depth(data: Any) -> int:
    """How deeply ``data`` nests, walked without recursion and given up past the limit."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict)
                                                  else value))
    return deepest


class LoraRecord(_Spec):
    character: PanelId
    path: Path_
    sha256: Hex64
    weight: Annotated[float, Field(ge=-C.MAX_LORA_WEIGHT, le=C.MAX_LORA_WEIGHT)]


class ModelRecord(_Spec):
    kind: Literal["builtin", "repo", "folder", "file"]
    ref: Path_
    revision: Short | None = None
    variant: Short | None = None
    family: Literal[FAMILY_NAMES] | None = None  # type: ignore[valid-type]
    dtype: Literal[("auto", *C.DTYPES)] = "auto"  # type: ignore[valid-type]
    fingerprint: Short | None = None
    config: Path_ | None = None


class JobRecord(_Spec):
    """A ``PanelJob`` as ``PanelJob.to_dict`` writes it, with a story panel's limits."""

    panel: PanelId
    prompt: Text
    negative_prompt: Text
    seed: Seed
    seed_derived: bool
    width: Pixels
    height: Pixels
    steps: Steps
    guidance: Guidance
    scheduler: Literal[tuple(sampler_names())]  # type: ignore[valid-type]
    characters: list[PanelId] = Field(max_length=16)
    loras: list[LoraRecord] = Field(max_length=64)
    model: ModelRecord
    caption: Text
    hash: Hex64

    @field_validator("panel")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("characters")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        return [_check_id(c) for c in v]

    @field_validator("guidance", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        # JSON has one kind of number: a whole guidance (7) reads back as an int.
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class PanelRecord(_Spec):
    """The ``storyboard`` chunk of a panel PNG (``output.pnginfo.storyboard_record``). Fields
    a newer storyboard adds are ignored; the job must be exactly what this version renders."""

    model_config = {**_Spec.model_config, "extra": "ignore"}
    metadata_version: Literal[1]
    storyboard: Short
    story: Path_ | None
    panel: PanelId
    hash: Hex64
    sampler_used: Short = ""
    device: Short = ""
    dtype: Short = ""
    job: JobRecord
    cache_key: Hex64 | None = None


class ManifestRecord(_Spec):
    """What a build needs back from ``OUT/manifest.json``: which files it wrote (name -> sha256
    of the bytes; schema 1 manifests recorded names only) and what its pages show."""

    model_config = {**_Spec.model_config, "extra": "ignore"}
    schema_version: Literal[1, 2]
    story: Path_
    files: list[Path_] = Field(max_length=2 * C.MAX_PANELS + 8)
    pages: list[Path_] = Field(max_length=C.MAX_PANELS + 8)
    digests: dict[Path_, Hex64] = Field(default_factory=dict, max_length=3 * C.MAX_PANELS + 8)
    panels: list[dict[str, Any]] = Field(default_factory=list, max_length=C.MAX_PANELS)
    pages_key: Hex64 | None = None


class RootsRecord(_Spec):
    """``roots/<story>.json`` in the cache: the entries one story needs."""

    model_config = {**_Spec.model_config, "extra": "ignore"}
    version: Literal[1]
    story: Path_
    keys: list[Hex64] = Field(max_length=C.MAX_PANELS * 64)


FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]


class TrainedFile(_Spec):
    sha256: Hex64
    bytes: int = Field(ge=1, le=1 << 36)


class TrainedRecord(_Spec):
    """``trained/<key>/done.json`` in the cache (``training.store``): written last, when a LoRA
    is trained, so a folder with a sound one holds finished files: which, with their sha256 and
    size."""

    model_config = {**_Spec.model_config, "extra": "ignore"}
    version: Literal[1]
    key: Hex64
    steps: int = Field(ge=1, le=C.MAX_TRAIN_STEPS)
    files: dict[FileName, TrainedFile] = Field(min_length=1, max_length=8)
    storyboard: Short = ""
    # How it was trained, for estimates (absent in records written before they were kept).
    family: Short = ""
    resolution: int = Field(default=0, ge=0, le=C.MAX_SIZE_PX)
    device: Short = ""
    seconds_per_step: float | None = Field(default=None, gt=0, lt=86_400, allow_inf_nan=False)


def validated(model: type[_Spec], data: Any, what: str) -> Any:
    """``data`` as a ``model``, or ``RecordError`` naming the first problems in one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:3]:
            where = ".".join(str(p) for p in error["loc"]) or "record"
            problems.append(f"{where}: {error['msg']}")
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise RecordError(f"{what}: {'; '.join(problems)}{more}") from None
