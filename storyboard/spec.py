"""The story file format (version 1) and its validation.

In: a path to a YAML story. Out: a ``Story`` (the validated ``StorySpec`` plus where it came
from and any warnings), or a ``StoryError`` listing every problem with file:line:col, what was
expected, what was given, and a hint where one helps.

Validation runs in three passes over the same parsed document, and all three report before
anything aborts: ``source`` (YAML structure, hostile input), pydantic (shapes, types, ranges;
``extra="forbid"``, strict types), and ``_check_semantics`` (cross-references, file system,
warnings). The semantic pass reads the raw data defensively, so a typo in one panel does not hide
an unknown character in another.
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import constants as C
from .errors import ERROR, WARNING, Diagnostics, Loc, Problem, did_you_mean, show_value
from .samplers import DEFAULT, canonical_sampler, sampler_names
from .source import SourceDoc, read_source

# Safe as a file name on every OS and as an adapter name: no dots, slashes or spaces.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                     *(f"lpt{i}" for i in range(10))}
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


def _check_id(value: str) -> str:
    if not ID_RE.fullmatch(value) or value.lower() in _WINDOWS_RESERVED:
        raise _err("storyboard_id",
                   "invalid id {value}: use 1-64 letters, digits, '-' or '_', starting with a "
                   "letter or digit".replace("{value}", show_value(value)),
                   "ids become file names, so dots, slashes and spaces are not allowed")
    return value


PanelId = Annotated[str, Field(max_length=64, json_schema_extra={"pattern": ID_RE.pattern})]
Text = Annotated[str, Field(max_length=C.MAX_TEXT_CHARS)]
Pixels = Annotated[int, Field(ge=C.MIN_SIZE_PX, le=C.MAX_SIZE_PX, multiple_of=8)]
Steps = Annotated[int, Field(ge=1, le=C.MAX_STEPS)]
Guidance = Annotated[float, Field(ge=0.0, le=C.MAX_GUIDANCE)]
Seed = Annotated[int, Field(ge=0, le=C.MAX_SEED)]
Color = Annotated[str, Field(pattern=COLOR_RE.pattern)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
                              populate_by_name=True)


def _model_shorthand(value: Any) -> Any:
    """``model: tiny-sdxl`` / ``model: ./kolors`` / ``model: org/name`` -> the mapping form."""
    if not isinstance(value, str):
        return value
    if value in C.BUILTIN_MODELS:
        return {"builtin": value}
    if value.startswith(("./", "../", "/", "~")) or value.endswith(CHECKPOINT_SUFFIXES) \
            or "\\" in value:
        return {"path": value}
    return {"repo": value}


class ModelSpec(_Spec):
    """What renders the panels: exactly one of ``builtin``, ``repo`` or ``path``."""

    builtin: Literal["tiny-sdxl", "tiny-kolors"] | None = Field(
        None, description="A built-in offline model with random weights (for trying things out).")
    repo: str | None = Field(None, description="A Hugging Face repo id, e.g. "
                                                "'Kwai-Kolors/Kolors-diffusers'.")
    revision: str | None = Field(None, max_length=128,
                                 description="A branch, tag or commit of `repo`.")
    variant: str | None = Field(None, max_length=32,
                                description="Weight variant to load, e.g. 'fp16'.")
    path: str | None = Field(None, max_length=4096, description=(
        "A local diffusers folder or a single .safetensors/.ckpt checkpoint, relative to the "
        "story file."))
    config: str | None = Field(None, max_length=4096, description=(
        "For a single-file checkpoint: where its pipeline configs come from, a Hugging Face repo "
        "id or a local diffusers folder of the same architecture. Default: the family's base "
        "model (stabilityai/stable-diffusion-xl-base-1.0 or "
        "stable-diffusion-v1-5/stable-diffusion-v1-5)."))
    family: Literal["auto", "sdxl", "kolors", "sd15"] = Field(
        "auto", description="Pipeline family; 'auto' reads it from model_index.json.")
    dtype: Literal["auto", "fp16", "bf16", "fp32", "fp8"] = Field(
        "auto", description="'auto': fp16 on CUDA, fp32 on CPU. 'fp8' (opt-in, NVIDIA GPUs of "
        "compute capability 8.9+, needs torchao): the UNet's linear layers in FP8 with per-row "
        "scales, the rest in bf16; faster, at a measured cost in accuracy (see README, Speed).")

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is not None and not REPO_RE.fullmatch(v):
            raise _err("storyboard_repo", f"expected a Hugging Face repo id like 'owner/name', "
                                          f"got {show_value(v)}",
                       "for a local folder or file, start the path with './'")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [k for k in ("builtin", "repo", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise _err("storyboard_model",
                       "give exactly one of 'builtin', 'repo' or 'path'"
                       + (f", got {' and '.join(given)}" if given else ""),
                       "e.g. `model: tiny-sdxl` or `model: {repo: Kwai-Kolors/Kolors-diffusers}`")
        if self.revision is not None and self.repo is None:
            raise _err("storyboard_model", "'revision' only applies to a 'repo'")
        if self.config is not None and not (self.path or "").lower().endswith(
                CHECKPOINT_SUFFIXES):
            raise _err("storyboard_model", "'config' only applies to a single-file checkpoint "
                                           "(`path: ....safetensors`)")
        return self

    @property
    def resolved_family(self) -> str | None:
        if self.builtin:
            return C.BUILTIN_MODELS[self.builtin][0]
        return None if self.family == "auto" else self.family


class DefaultsSpec(_Spec):
    """Render settings every panel inherits unless it overrides them."""

    steps: Steps = Field(30, description="Denoising steps.")
    guidance: Guidance = Field(5.0, description="Classifier-free guidance scale (CFG).")
    width: Pixels | None = Field(
        None, description="Pixels, a multiple of 8; default: the model's native size.")
    height: Pixels | None = Field(None, description="Pixels, a multiple of 8.")
    scheduler: str = Field(DEFAULT, max_length=64, description=(
        "Sampler by its WebUI/ComfyUI name: " + ", ".join(f"'{n}'" for n in sampler_names())))
    negative: Text = Field("", description="Negative prompt for every panel.")
    seed: Seed = Field(0, description="Story seed: panels without a seed derive theirs from it "
                                      "and their id.")


class StyleSpec(_Spec):
    """The shared look: change the style of every panel with one edit."""

    prefix: Text = Field("", description="Put before every prompt, e.g. 'anime, cel shading'.")
    suffix: Text = Field("", description="Put after every prompt, e.g. 'masterpiece'.")
    negative: Text = Field("", description="Added to every negative prompt.")
    separator: str = Field(", ", max_length=8, description="Joins prompt parts; '，' suits "
                                                           "Chinese prompts.")


def _lora_shorthand(value: Any) -> Any:
    return {"file": value} if isinstance(value, str) else value


class LoraSpec(_Spec):
    file: str = Field(max_length=4096, description="LoRA file, relative to the story file.")
    weight: float = Field(1.0, ge=-C.MAX_LORA_WEIGHT, le=C.MAX_LORA_WEIGHT,
                          description="Strength; 1.0 is as trained.")


class CharacterSpec(_Spec):
    """A recurring character: identity token, class word, description and LoRAs."""

    name: str | None = Field(None, max_length=200, description="Display name; default: the id.")
    token: str | None = Field(None, max_length=64,
                              description="DreamBooth identifier token, e.g. 'sks'.")
    class_word: str | None = Field(None, alias="class", max_length=64,
                                   description="Class noun the token is bound to, e.g. 'girl'.")
    description: Text = Field("", description="Appearance, used in every prompt the character "
                                              "appears in.")
    loras: list[Annotated[LoraSpec, BeforeValidator(
        _lora_shorthand, json_schema_input_type=Union[str, LoraSpec])]] = Field(
        default_factory=list, max_length=16)
    negative: Text = Field("", description="Added to the negative prompt of panels with this "
                                           "character.")


PromptPart = Union[Text, Annotated[list[Text], Field(max_length=64)]]


class PromptParts(_Spec):
    """A prompt by the categories the course teaches; joined in this order."""

    subject: PromptPart | None = None
    medium: PromptPart | None = None
    style: PromptPart | None = None
    artist: PromptPart | None = None
    website: PromptPart | None = None
    resolution: PromptPart | None = None
    details: PromptPart | None = None
    color: PromptPart | None = None
    lighting: PromptPart | None = None

    def parts(self) -> list[str]:
        out = []
        for name in C.PROMPT_CATEGORIES:
            value = getattr(self, name)
            if isinstance(value, list):
                out.extend(v for v in value if v)
            elif value:
                out.append(value)
        return out


def _prompt_kind(value: Any) -> str:
    return "parts" if isinstance(value, dict) else "text"


Prompt = Annotated[
    Union[Annotated[Text, Tag("text")], Annotated[PromptParts, Tag("parts")]],
    Discriminator(_prompt_kind),
]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class PanelSpec(_Spec):
    """One panel. Render settings left out come from `defaults`."""

    id: PanelId = Field(description="Stable id, used for file names and selection.")
    characters: Annotated[list[Annotated[str, Field(max_length=64)]], BeforeValidator(
        _one_or_many, json_schema_input_type=Union[str, list[str]])] = Field(
        default_factory=list, max_length=16)
    prompt: Prompt
    negative: Text = Field("", description="Added to this panel's negative prompt.")
    seed: Seed | None = Field(None, description="Default: derived from the story seed and id.")
    caption: Text = ""
    steps: Steps | None = None
    guidance: Guidance | None = None
    width: Pixels | None = None
    height: Pixels | None = None
    scheduler: str | None = Field(None, max_length=64)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)


class TemplatesSpec(_Spec):
    """Jinja templates for the final prompts; leave out to use the built-in ones."""

    prompt: str | None = Field(None, max_length=C.MAX_TEMPLATE_CHARS)
    negative: str | None = Field(None, max_length=C.MAX_TEMPLATE_CHARS)


def _title_kind(value: Any) -> str:
    return "flag" if isinstance(value, bool) else "text"


class LayoutSpec(_Spec):
    """How `storyboard build` composes panels into pages."""

    columns: int = Field(2, ge=1, le=16)
    panels_per_page: int | None = Field(None, ge=1, le=C.MAX_PANELS,
                                        description="Default: all panels on one page.")
    cell_width: Pixels | None = Field(None, description="Width of each panel on the page; "
                                                        "default: the widest panel.")
    gutter: int = Field(16, ge=0, le=512, description="Pixels between panels.")
    margin: int = Field(32, ge=0, le=1024, description="Pixels around the page.")
    background: Color = "#ffffff"
    text_color: Color = "#111111"
    border: int = Field(2, ge=0, le=64, description="Panel border width in pixels.")
    border_color: Color = "#111111"
    caption: Literal["below", "above", "none"] = "below"
    font: str | None = Field(None, max_length=4096,
                             description="A .ttf/.otf/.ttc file; default: the bundled CJK font.")
    font_size: int = Field(28, ge=6, le=256)
    title: Annotated[
        Union[Annotated[bool, Tag("flag")], Annotated[Annotated[str, Field(max_length=200)],
                                                      Tag("text")]],
        Discriminator(_title_kind),
    ] = Field(True, description="true: the story title; false: none; or a text.")
    panel_numbers: bool = False


class RenderSpec(_Spec):
    """How fast to render. Nothing here changes what a panel should look like (beyond float
    rounding), so none of it is part of a job's hash; the command line can override it."""

    batch_size: int | None = Field(None, ge=1, le=64, description=(
        "Most panels per pipeline call; default: by free GPU memory (8, 4 or 2), 2 on CPU."))
    fuse: bool = Field(True, description="Merge each batch's LoRAs into the weights; on CUDA also "
                       "cross-attention keys/values computed once per batch and, when compiling, "
                       "channels_last and fused QKV projections (the latter without LoRAs). "
                       "false also turns compiling off.")
    compile: Union[bool, Literal["auto"]] = Field("auto", description=(
        "torch.compile the UNet and VAE decoder (CUDA): true, false, or auto, which compiles "
        "when a render has enough panels to pay the compile back from a warm compile cache "
        "(2000 panel-steps per batch shape, e.g. 40 panels of 50 steps in batches of 8), and "
        "otherwise renders without compiling; FP8 always compiles."))

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_is_a_switch_or_auto(cls, v: Any) -> Any:
        if v is not True and v is not False and v != "auto":  # one message, not one per type
            raise _err("storyboard_compile", f"expected true, false or auto, got {_got(v)}",
                       "auto compiles only renders with enough panels to pay the compile back")
        return v

    tune: bool = Field(True, description="Coordinate-descent tuning of the compiled UNet's "
                       "kernels: about 2% faster steps, about 100 s more for the first compile "
                       "of each shape on a machine (cached after).")


class StorySpec(_Spec):
    """A storyboard story, format version 1."""

    model_config = ConfigDict(title="storyboard story", json_schema_extra={
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": C.SCHEMA_ID})

    version: Literal[1] = Field(description="Story format version.")

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_an_integer(cls, v: Any) -> Any:
        if type(v) is not int:  # Literal[1] also accepts True and 1.0, which are not versions
            raise _err("storyboard_version", f"expected the integer 1, got {show_value(v)}",
                       "write `version: 1`")
        return v
    title: str = Field("", max_length=200)
    vars: dict[str, Any] = Field(default_factory=dict,
                                 description="Free values for templates: `{{ vars.name }}`.")
    model: Annotated[ModelSpec, BeforeValidator(
        _model_shorthand, json_schema_input_type=Union[str, ModelSpec])]
    defaults: DefaultsSpec = DefaultsSpec()
    style: StyleSpec = StyleSpec()
    characters: dict[str, CharacterSpec] = Field(default_factory=dict, max_length=64)
    panels: list[PanelSpec] = Field(min_length=1, max_length=C.MAX_PANELS)
    templates: TemplatesSpec = TemplatesSpec()
    layout: LayoutSpec = LayoutSpec()
    render: RenderSpec = RenderSpec()

    @field_validator("vars")
    @classmethod
    def _vars(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not isinstance(key, str) or not VAR_RE.fullmatch(key):
                raise _err("storyboard_var", f"variable name {show_value(key)} is not a plain "
                                             "name", "use letters, digits and '_'")
        return v


@dataclass
class Story:
    """A validated story and where it came from."""

    spec: StorySpec
    doc: SourceDoc
    base_dir: Path
    warnings: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.doc.name

    def resolve(self, relpath: str) -> Path:
        return (self.base_dir / Path(relpath).expanduser()).resolve()


# ---------------------------------------------------------------------------------------------
# Loading


def load_story(path: str | Path, *, check_files: bool = True) -> Story:
    """Read, parse and validate a story file. Raises ``StoryError`` with every problem."""
    doc = read_source(path)
    base_dir = Path(path).resolve().parent
    return validate_doc(doc, base_dir, check_files=check_files)


def validate_doc(doc: SourceDoc, base_dir: Path, *, check_files: bool = True) -> Story:
    diag = Diagnostics()
    data = doc.data
    if not isinstance(data, dict):
        diag.add(doc.problem((), f"expected a mapping of story keys at the top, got "
                                 f"{_kind(data)}", "a story starts with `version: 1`"))
        diag.raise_if_errors()
    spec = None
    try:
        spec = StorySpec.model_validate(data)
    except ValidationError as exc:
        for problem in _problems_from_pydantic(exc, doc):
            diag.add(problem)
    _check_semantics(data, doc, base_dir, diag, check_files=check_files)
    diag.raise_if_errors()
    assert spec is not None
    return Story(spec=spec, doc=doc, base_dir=base_dir, warnings=diag.sorted())


# ---------------------------------------------------------------------------------------------
# pydantic errors -> problems a writer can act on

_KINDS = {str: "text", int: "an integer", float: "a number", bool: "true/false", list: "a list",
          dict: "a mapping", type(None): "nothing (null)"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _got(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _kind(value)
    if value is None:
        return "nothing (null)"
    return show_value(value)


def _problems_from_pydantic(exc: ValidationError, doc: SourceDoc) -> list[Problem]:
    out = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part not in ("text", "parts", "flag",
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
        return f"expected a number, got {_got(value)}", None, False
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


# ---------------------------------------------------------------------------------------------
# Cross-references, the file system, warnings


def _check_semantics(data: dict, doc: SourceDoc, base_dir: Path, diag: Diagnostics, *,
                     check_files: bool) -> None:
    def error(loc: Loc, message: str, hint: str | None = None, key: bool = False) -> None:
        diag.add(doc.problem(loc, message, hint, key=key, severity=ERROR))

    def warn(loc: Loc, message: str, hint: str | None = None, key: bool = False) -> None:
        diag.add(doc.problem(loc, message, hint, key=key, severity=WARNING))

    characters = data.get("characters")
    characters = characters if isinstance(characters, dict) else {}
    panels = data.get("panels")
    panels = panels if isinstance(panels, list) else []

    # Scheduler names, wherever they appear.
    def check_scheduler(loc: Loc, name: Any) -> None:
        if isinstance(name, str) and canonical_sampler(name) is None:
            error(loc, f"unknown scheduler {name!r}", did_you_mean(name, sampler_names())
                  or "known: " + ", ".join(sampler_names()))

    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        check_scheduler(("defaults", "scheduler"), defaults.get("scheduler"))

    # Panels: unique ids, known characters.
    seen: dict[str, int] = {}  # lower-cased: macOS and Windows file names ignore case
    used: set[str] = set()
    for i, panel in enumerate(panels):
        if not isinstance(panel, dict):
            continue
        pid = panel.get("id")
        if isinstance(pid, str):
            if pid.lower() in seen:
                j = seen[pid.lower()]
                first = doc.pos(("panels", j, "id")).line
                other = panels[j]["id"]
                if other == pid:
                    error(("panels", i, "id"), f"duplicate panel id {pid!r} (first used on line "
                                               f"{first})", "every panel needs its own id")
                else:
                    error(("panels", i, "id"), f"panel id {pid!r} differs from {other!r} (line "
                                               f"{first}) only in case",
                          "their files would overwrite each other on macOS and Windows")
            else:
                seen[pid.lower()] = i
        check_scheduler(("panels", i, "scheduler"), panel.get("scheduler"))
        present = panel.get("characters")
        present = [present] if isinstance(present, str) else present
        if isinstance(present, list):
            listed: set[str] = set()
            for j, cid in enumerate(present):
                if not isinstance(cid, str):
                    continue
                loc: Loc = ("panels", i, "characters") if isinstance(panel.get("characters"),
                                                                     str) else \
                    ("panels", i, "characters", j)
                if cid not in characters:
                    hint = did_you_mean(cid, characters) or (
                        f"defined characters: {', '.join(characters)}" if characters
                        else "define it under `characters:` first")
                    error(loc, f"unknown character {cid!r}", hint)
                elif cid in listed:
                    error(loc, f"character {cid!r} is listed twice")
                listed.add(cid)
                used.add(cid)

    for cid, char in characters.items():
        if not isinstance(cid, str) or not ID_RE.fullmatch(cid) \
                or cid.lower() in _WINDOWS_RESERVED:
            error(("characters", str(cid)), f"invalid character id {show_value(cid)}: use 1-64 "
                  "letters, digits, '-' or '_', starting with a letter or digit",
                  "ids name LoRA adapters and files, so dots, slashes and spaces are not "
                  "allowed", key=True)
        elif cid not in used:
            warn(("characters", cid), f"character {cid!r} is defined but appears in no panel",
                 key=True)
        if not isinstance(char, dict):
            continue
        loras = char.get("loras")
        if not isinstance(loras, list):
            continue
        for j, lora in enumerate(loras):
            entry = {"file": lora} if isinstance(lora, str) else lora
            if not isinstance(entry, dict):
                continue
            loc = ("characters", cid, "loras", j) if isinstance(lora, str) else \
                ("characters", cid, "loras", j, "file")
            weight = entry.get("weight")
            if isinstance(weight, (int, float)) and weight == 0:
                warn(("characters", cid, "loras", j, "weight"),
                     "LoRA weight 0 has no effect")
            fname = entry.get("file")
            if isinstance(fname, str) and check_files:
                _check_file(fname, base_dir, LORA_SUFFIXES, "LoRA file", loc, error)

    model = data.get("model")
    model = _model_shorthand(model)
    if isinstance(model, dict) and check_files and isinstance(model.get("path"), str):
        loc = ("model", "path") if isinstance(data.get("model"), dict) else ("model",)
        _check_model_path(model["path"], base_dir, loc, error)
    config = model.get("config") if isinstance(model, dict) else None
    if isinstance(config, str) and check_files and not REPO_RE.fullmatch(config):
        if not (base_dir / Path(config).expanduser() / "model_index.json").is_file():
            error(("model", "config"), f"config folder {config!r} is not a diffusers model "
                  "folder (no model_index.json)", "give a repo id like 'owner/name', or a "
                  "folder saved with save_pretrained")

    layout = data.get("layout")
    if isinstance(layout, dict) and isinstance(layout.get("font"), str) and check_files:
        _check_file(layout["font"], base_dir, FONT_SUFFIXES, "font file", ("layout", "font"),
                    error)


def _check_file(fname: str, base_dir: Path, suffixes: tuple[str, ...], what: str, loc: Loc,
                error) -> None:
    path = base_dir / Path(fname).expanduser()
    if not fname.lower().endswith(suffixes):
        error(loc, f"{what} {fname!r} has an unsupported type",
              f"expected one of {', '.join(suffixes)}")
    elif not path.is_file():
        hint = None
        parent = path.parent
        if parent.is_dir():
            hint = did_you_mean(path.name, [p.name for p in parent.iterdir()
                                            if p.name.lower().endswith(suffixes)])
        error(loc, f"{what} not found: {fname!r} (looked in {_shown(parent)})",
              hint or "paths are relative to the story file")


def _check_model_path(fname: str, base_dir: Path, loc: Loc, error) -> None:
    path = base_dir / Path(fname).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            error(loc, f"model folder {fname!r} has no model_index.json",
                  "point `path` at a diffusers folder (saved with save_pretrained) or a "
                  "single .safetensors checkpoint")
    elif path.is_file():
        if not fname.lower().endswith(CHECKPOINT_SUFFIXES):
            error(loc, f"model file {fname!r} is not a .safetensors or .ckpt checkpoint")
    else:
        error(loc, f"model not found: {fname!r} (looked in {_shown(path.parent)})",
              "paths are relative to the story file; for a Hugging Face model use `repo:`")


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else (rel if rel != "." else "./")
