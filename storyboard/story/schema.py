"""The story file format, version 1: what each key means, its type and its range.

In: plain data from ``story.source`` (dicts, lists, scalars). Out: a frozen ``StorySpec`` (via
pydantic, ``extra="forbid"``, strict types), or pydantic's errors, which ``story.messages`` turns
into problems a writer can act on. The same models give `storyboard schema` its JSON Schema.

Family and built-in model names come from ``families``; nothing else here knows a model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from .. import constants as C
from ..errors import describe_value, show_value
from ..families import BUILTINS, FAMILIES, FAMILY_NAMES
from ..samplers import DEFAULT, sampler_names
from .fields import CHECKPOINT_SUFFIXES, ID_RE, REPO_RE, VAR_RE, _check_id, _err
from .layout import BalloonSpec, LayoutSpec
from .types import Pixels, _Spec


PanelId = Annotated[str, Field(max_length=64, json_schema_extra={"pattern": ID_RE.pattern})]
Text = Annotated[str, Field(max_length=C.MAX_TEXT_CHARS)]
Steps = Annotated[int, Field(ge=1, le=C.MAX_STEPS)]
Guidance = Annotated[float, Field(ge=0.0, le=C.MAX_GUIDANCE)]
Seed = Annotated[int, Field(ge=0, le=C.MAX_SEED)]


def model_shorthand(value: Any) -> Any:
    """``model: tiny-sdxl`` / ``model: ./kolors`` / ``model: org/name`` -> the mapping form."""
    if not isinstance(value, str):
        return value
    if value in BUILTINS:
        return {"builtin": value}
    if value.startswith(("./", "../", "/", "~")) or value.endswith(CHECKPOINT_SUFFIXES) \
            or "\\" in value:
        return {"path": value}
    return {"repo": value}


class ModelSpec(_Spec):
    """What renders the panels: exactly one of ``builtin``, ``repo`` or ``path``."""

    builtin: Literal[tuple(BUILTINS)] | None = Field(  # type: ignore[valid-type]
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
        "model (" + " or ".join(f.single_file_config for f in FAMILIES.values()
                                if f.single_file_config) + ")."))
    family: Literal[("auto", *FAMILY_NAMES)] = Field(  # type: ignore[valid-type]
        "auto", description="Pipeline family; 'auto' reads it from model_index.json.")
    dtype: Literal[("auto", *C.DTYPES)] = Field(  # type: ignore[valid-type]
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
            return BUILTINS[self.builtin].family
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


def _train_shorthand(value: Any) -> Any:
    return {"images": value} if isinstance(value, str) else value


def _prior_kind(value: Any) -> str:
    return "flag" if isinstance(value, bool) else "{mapping}"


def _prior_is_a_switch_or_mapping(value: Any) -> Any:
    if not isinstance(value, (bool, dict)):  # one message, not one per branch
        raise _err("storyboard_prior", f"expected false, true or a mapping, got "
                                       f"{describe_value(value)}",
                   "e.g. `prior_preservation: {images: 100, weight: 1.0}`")
    return value


def _min_snr_is_a_number_or_false(value: Any) -> Any:
    if value is None or value is False:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err("storyboard_min_snr", f"expected a number or false, got "
                                         f"{describe_value(value)}",
                   "false trains with the plain loss; 5.0 is the usual Min-SNR gamma")
    if not 0 < value <= C.MAX_MIN_SNR_GAMMA:
        raise _err("storyboard_min_snr", f"must be > 0 and <= {C.MAX_MIN_SNR_GAMMA:g}, got "
                                         f"{show_value(value)}",
                   "false turns Min-SNR weighting off")
    return float(value)


def _per_family(attr: str) -> str:
    """A training default as each family has it: '1000' or '1024 for sdxl, kolors; 512 for
    sd15' (for the descriptions, read from the registry)."""
    values: dict[Any, list[str]] = {}
    for family in FAMILIES.values():
        values.setdefault(getattr(family.train, attr), []).append(family.name)
    def shown(value: float) -> str:
        return f"{value:.0e}".replace("e-0", "e-") if 0 < value < 1e-3 else f"{value:g}"

    if len(values) == 1:
        return shown(next(iter(values)))
    return "; ".join(f"{shown(value)} for {', '.join(names)}" for value, names in values.items())


class PriorPreservationSpec(_Spec):
    """Prior preservation: pictures of the plain class, rendered by storyboard with the base
    model, trained on beside the character's so the class keeps its own look."""

    images: int | None = Field(None, ge=1, le=C.MAX_PRIOR_IMAGES, description=(
        f"How many class pictures; default {_per_family('prior_images')}."))
    weight: float | None = Field(None, gt=0.0, le=C.MAX_LORA_WEIGHT, description=(
        f"Weight of their loss against the character's; default "
        f"{_per_family('prior_weight')}."))
    prompt: Text | None = Field(None, description="What the class pictures show; default "
                                                  "'a photo of a <class>'.")


class TrainSpec(_Spec):
    """Train this character's LoRA from a folder of its pictures (`storyboard train`). Settings
    left out come from the model family; the trained LoRA joins the character's `loras`."""

    images: str = Field(max_length=4096, description=(
        "A folder of the character's pictures (png, jpg, webp), relative to the story file; a "
        "picture's caption may sit beside it as <name>.txt."))
    steps: int | None = Field(None, ge=1, le=C.MAX_TRAIN_STEPS,
                              description=f"Optimizer steps; default "
                                          f"{_per_family('steps')}.")
    rank: int | None = Field(None, ge=1, le=C.MAX_LORA_RANK,
                             description=f"LoRA rank; default {_per_family('rank')}.")
    alpha: float | None = Field(None, gt=0.0, le=C.MAX_LORA_ALPHA, description=(
        "LoRA alpha; default: the rank (a scale of 1, as diffusers trains)."))
    learning_rate: float | None = Field(None, gt=0.0, le=1.0, description=(
        f"Default {_per_family('learning_rate')}."))
    batch_size: int | None = Field(None, ge=1, le=C.MAX_TRAIN_BATCH,
                                   description=f"Pictures per step; default "
                                               f"{_per_family('batch_size')}.")
    resolution: int | None = Field(None, ge=C.MIN_SIZE_PX, le=C.MAX_TRAIN_RESOLUTION,
                                   multiple_of=8, description=(
                                       "Training pixels per side (pictures are bucketed by "
                                       "aspect ratio to this area); default "
                                       f"{_per_family('resolution')}."))
    seed: Seed | None = Field(None, description="Default: derived from the story seed and the "
                                                "character's token.")
    checkpoint_every: int | None = Field(None, ge=1, le=C.MAX_TRAIN_STEPS, description=(
        "Save a resumable checkpoint every this many steps; default "
        f"{_per_family('checkpoint_every')}."))
    min_snr_gamma: Annotated[Union[Annotated[float, Field(gt=0.0, le=C.MAX_MIN_SNR_GAMMA)],
                                   Literal[False]] | None,
                             BeforeValidator(_min_snr_is_a_number_or_false)] = Field(
        None, description="Min-SNR loss weighting; false: the plain loss. Default "
                          f"{_per_family('min_snr_gamma')}.")
    min_side: int | None = Field(None, ge=1, le=C.MAX_SIZE_PX, description=(
        "Pictures smaller than this on their shorter side are left out; default "
        f"{_per_family('min_side')}."))
    prior_preservation: Annotated[
        Union[Annotated[bool, Tag("flag")], Annotated[PriorPreservationSpec, Tag("{mapping}")]],
        Discriminator(_prior_kind),
        BeforeValidator(_prior_is_a_switch_or_mapping,
                        json_schema_input_type=Union[bool, PriorPreservationSpec]),
    ] = Field(False, description="false, true (the defaults) or {images, weight, prompt}.")
    weight: float = Field(1.0, ge=-C.MAX_LORA_WEIGHT, le=C.MAX_LORA_WEIGHT,
                          description="The trained LoRA's strength in the character's panels.")
    train_text_encoder: bool = Field(False, description=(
        "Also train the text encoders; not for "
        + ", ".join(f.name for f in FAMILIES.values() if f.train.frozen_text_encoder) + "."))
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description=(
        "adamw (fused on CUDA), or adamw8bit: bitsandbytes' 8-bit AdamW, less GPU memory, "
        "CUDA only (pip install 'storyboard[train-8bit]')."))


class CharacterSpec(_Spec):
    """A recurring character: identity token, class word, description, LoRAs, and how to train
    its own."""

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
    train: Annotated[TrainSpec | None, BeforeValidator(
        _train_shorthand, json_schema_input_type=Union[str, TrainSpec, None])] = Field(
        None, description="Train a LoRA of this character from its pictures (a folder, or the "
                          "full mapping).")


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
    balloons: list[BalloonSpec] = Field(default_factory=list, max_length=4, description=(
        "Speech balloons and narration boxes over the panel, each at most about a third of it "
        "(its text shrinks to fit); not part of the render, like the caption."))
    steps: Steps | None = None
    guidance: Guidance | None = None
    width: Pixels | None = None
    height: Pixels | None = None
    scheduler: str | None = Field(None, max_length=64)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("balloons")
    @classmethod
    def _one_balloon_a_place(cls, v: list[BalloonSpec]) -> list[BalloonSpec]:
        places = [b.at for b in v]
        twice = next((at for at in places if places.count(at) > 1), None)
        if twice:
            free = [p for p in ("top-left", "top-right", "bottom-left", "bottom-right", "top",
                                "bottom") if p not in places]
            raise _err("storyboard_balloons", f"two balloons are `at: {twice}`; they would "
                       "cover each other", f"put one at {free[0]}" if free else None)
        return v


class TemplatesSpec(_Spec):
    """Jinja templates for the final prompts; leave out to use the built-in ones."""

    prompt: str | None = Field(None, max_length=C.MAX_TEMPLATE_CHARS)
    negative: str | None = Field(None, max_length=C.MAX_TEMPLATE_CHARS)


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
            raise _err("storyboard_compile",
                       f"expected true, false or auto, got {describe_value(v)}",
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
        model_shorthand, json_schema_input_type=Union[str, ModelSpec])]
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

