"""LoRA files: what they are, and the same weights in the format another tool reads.

In: a LoRA file (``.safetensors``, ``.bin``, ``.pt``, ``.pth`` or ``.ckpt``) in one of four
formats:

- ``diffusers``: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (and ``text_encoder.``,
  ``text_encoder_2.``), as ``save_lora_weights`` writes; alpha, if any, in the safetensors
  metadata ``lora_adapter_metadata`` (diffusers >= 0.34). Older attention-processor names
  (``...attn1.processor.to_q_lora.down.weight``) are read too.
- ``peft``: the same module names without the ``unet.`` prefix (``base_model.model.`` and an
  adapter segment such as ``.default`` allowed), as PEFT's ``save_pretrained`` or
  ``get_peft_model_state_dict`` give; alpha from an ``adapter_config.json`` beside an
  ``adapter_model.*`` file.
- ``kohya`` (WebUI / ComfyUI): ``lora_unet_<module_with_underscores>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha``; SDXL files use the original SGM/LDM module names
  (``input_blocks_4_1_...``), SD1.5 files diffusers' names; ``lora_te_`` / ``lora_te1_`` /
  ``lora_te2_`` for the CLIP text encoders.
- ``diffsynth``: DiffSynth-Studio's training output (``train_kolors_lora.py`` and the other
  ``LightningModelForT2ILoRA`` scripts): a PyTorch Lightning ``.ckpt`` holding only the PEFT
  LoRA tensors of DiffSynth's own UNet (``blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default
  .weight``), with no alpha. See "DiffSynth names" below.

Out: ``inspect_lora`` -> ``LoraInfo`` (format, base family, ranks, alphas, module kinds, sizes,
whether it touches a text encoder); ``to_diffusers`` -> a state dict that
``StableDiffusionXLPipeline.load_lora_weights`` / ``KolorsPipeline.load_lora_weights`` load with
no unexpected or missing keys, alpha already applied; ``convert_lora`` -> a ``.safetensors``
file in diffusers or kohya format, written atomically.

Alpha. A LoRA adds ``(alpha / rank) * B @ A`` to a layer's weight (kohya, PEFT and diffusers
agree; PEFT's rsLoRA uses ``alpha / sqrt(rank)``). ``to_diffusers`` folds that scale into
``lora_B`` and writes no alpha: diffusers then builds the adapter with ``lora_alpha = r``
(scale 1.0; ``diffusers.utils.peft_utils.get_peft_kwargs``), so the file means the same in any
reader. ``.alpha`` tensors cannot be used in the diffusers format (every key must contain
"lora", and ``load_lora_weights`` raises on ``unet.<module>.alpha``); diffusers honours kohya
``.alpha`` only for kohya-named files, where ``_convert_non_diffusers_lora_to_diffusers`` turns
them into ``network_alphas`` and then ``LoraConfig.lora_alpha`` / ``alpha_pattern``. The kohya
writer keeps ``lora_up`` as it is and stores ``.alpha``, as kohya's own trainer does.

The ``alpha`` argument (PEFT's ``lora_alpha``; scale = alpha / rank) overrides what the file
stores. A file that stores no alpha gets alpha = rank (scale 1.0): kohya, WebUI, ComfyUI and
diffusers all read a missing ``.alpha`` that way, and DiffSynth-Studio's own loader
(``ModelManager.load_lora(..., lora_alpha=1.0)``, diffsynth/models/lora.py
``GeneralLoRAFromPeft``) adds ``1.0 * B @ A``, the same thing. The strength is then the story's
LoRA weight. For the course's DiffSynth Kolors LoRA (trained with rank 16, ``lora_alpha`` 4.0,
i.e. scale 0.25 during training; loaded in the course with ``LoraConfig(r=16, lora_alpha=2.0)``,
scale 0.125) pass ``alpha=2.0`` to get the course's look at weight 1.0, or keep the default and
use weight 0.125.

DiffSynth names. DiffSynth-Studio's ``SDXLUNet`` (also used for Kolors, with
``is_kolors=True``) is not diffusers' ``UNet2DConditionModel``: it flattens the UNet into one
``blocks`` list executed in order, with ``PushBlock`` / ``PopBlock`` entries for the skip
connections. Facts used here, from diffsynth 1.1.2 (PyPI wheel; unchanged in 1.1.9),
``diffsynth/models/sdxl_unet.py`` (``SDXLUNet.__init__``, ``SDXLUNetStateDictConverter.
from_diffusers``), ``diffsynth/models/sd_unet.py`` (``SDUNet``, ``AttentionBlock``,
``BasicTransformerBlock``), ``diffsynth/models/attention.py`` (``Attention``) and
``diffsynth/trainers/text_to_image.py`` (``add_lora_to_model``, ``on_save_checkpoint``):

- block order: for each down block, per layer ``ResnetBlock``, ``AttentionBlock`` (cross-attn
  blocks only), ``PushBlock``; then ``DownSampler``, ``PushBlock`` if the block downsamples. Mid
  block: ``ResnetBlock``, ``AttentionBlock``, ``ResnetBlock``. For each up block, per layer
  ``PopBlock``, ``ResnetBlock``, ``AttentionBlock`` (cross-attn blocks); then ``UpSampler``. So
  for SDXL ``down_blocks.1.attentions.0`` is ``blocks.7``, ``mid_block.attentions.0`` is
  ``blocks.21`` and ``up_blocks.1.attentions.2`` is ``blocks.41``. This module derives the list
  from the actual diffusers UNet (built on the "meta" device from its config), so any UNet of
  that shape maps, including the built-in tiny ones.
- inside a block the names are diffusers' except: ``to_out`` is a bare ``Linear`` (diffusers
  ``to_out.0``), the feed-forward is ``act_fn.proj`` / ``ff`` (diffusers ``ff.net.0.proj`` /
  ``ff.net.2``); outside: ``time_embedding.0/.2`` (``linear_1/2``), ``add_time_embedding.0/.2``
  (``add_embedding.linear_1/2``), ``text_intermediate_proj`` (Kolors' ``encoder_hid_proj``).
- PEFT injected the LoRA (``inject_adapter_in_model``, adapter "default"), so keys end in
  ``lora_A.default.weight`` / ``lora_B.default.weight``; no alpha is saved. The Lightning
  checkpoint is either those tensors alone (1.1.x clears the checkpoint) or wrapped under
  ``"state_dict"`` (possibly with a module prefix such as ``pipe.unet.``); both are read.

SGM (kohya SDXL) names are derived from the same walk: ``input_blocks.0.0`` is ``conv_in``, then
one ``input_blocks.N`` per down-block layer (``.0`` resnet, ``.1`` attention) and per
downsampler (``.0.op``); ``middle_block.0/1/2``; one ``output_blocks.N`` per up-block layer, the
upsampler in the block of the layer before it; resnet parts ``in_layers.2`` (conv1),
``emb_layers.1`` (time_emb_proj), ``out_layers.3`` (conv2), ``skip_connection``. This agrees
with diffusers' reader (``diffusers/loaders/lora_conversion_utils.py``,
``_maybe_map_sgm_blocks_to_diffusers`` and ``_convert_unet_lora_key``); the tests load files
written here with diffusers itself and compare every adapted weight.

Pickles (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are only ever opened with
``torch.load(weights_only=True, map_location="cpu")``; one that needs anything more is refused
with ``LoraFormatError`` and nothing in it runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["LoraFormatError", "LoraInfo", "inspect_lora", "to_diffusers", "convert_lora",
           "diffsynth_names", "FAMILY_UNET_CONFIGS"]

FORMATS = ("diffusers", "peft", "kohya", "diffsynth")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES

# The released UNets, as their diffusers config.json files give them (the fields that shape
# modules). SDXL: stabilityai/stable-diffusion-xl-base-1.0; Kolors: Kwai-Kolors/Kolors-diffusers
# (SDXL's UNet with a 4096->2048 text projection and 5632-wide added conditioning, as
# DiffSynth's SDXLUNet(is_kolors=True) also builds it); SD1.5: runwayml/stable-diffusion-v1-5.
_SDXL = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280], attention_head_dim=[5, 10, 20],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
FAMILY_UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sdxl": _SDXL,
    "kolors": {**_SDXL, "projection_class_embeddings_input_dim": 5632, "encoder_hid_dim": 4096,
               "encoder_hid_dim_type": "text_proj"},
    "sd15": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=768,
    ),
}
# Which detected families a model of each family accepts.
_ACCEPTS = {"sdxl": {"sdxl", "sdxl-or-kolors"}, "kolors": {"kolors", "sdxl-or-kolors"},
            "sd15": {"sd15"}}
_CROSS_WIDTH = {768: "sd15", 1024: "sd2", 2048: "sdxl-or-kolors"}


class LoraFormatError(ValueError):
    """A LoRA file that cannot be read, converted or used as asked; names the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"LoRA {self.path}: {problem}")


@dataclass(frozen=True)
class LoraInfo:
    """What ``inspect_lora`` found in a LoRA file."""

    path: Path
    format: str  # diffusers | peft | kohya | diffsynth
    family: str  # sd15 | sdxl | kolors | sdxl-or-kolors | sd2 | unknown
    family_reason: str  # the evidence, in words
    ranks: tuple[int, ...]  # distinct ranks, ascending
    alphas: tuple[float, ...] | None  # distinct stored alphas; None when the file stores none
    modules: tuple[str, ...]  # module kinds adapted: to_q, to_k, to_v, to_out, conv1, q_proj...
    layers: int  # adapted layers (A/B pairs)
    tensors: int  # tensors in the file's LoRA state dict (alpha tensors included)
    size_bytes: int  # their total size
    dtype: str  # of lora_A/lora_B, e.g. "float32"; "mixed" when they differ
    text_encoder: bool  # whether it adapts a text encoder
    cross_attention_dim: int | None  # input width of the UNet's cross-attention to_k
    notes: tuple[str, ...] = ()

    @property
    def rank(self) -> int | None:
        return self.ranks[0] if len(self.ranks) == 1 else None

    @property
    def alpha(self) -> float | None:
        return self.alphas[0] if self.alphas and len(self.alphas) == 1 else None


# --- reading files -------------------------------------------------------------------------


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors by key, and its safetensors metadata (empty for pickles)."""
    import torch

    if not path.is_file():
        raise LoraFormatError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = dict(fh.metadata() or {})
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise LoraFormatError(path, f"not a readable .safetensors file ({_first_line(exc)})"
                                  ) from None
        return tensors, metadata
    if suffix not in PICKLE_SUFFIXES:
        raise LoraFormatError(path, f"unsupported file type {suffix or path.name!r}; "
                                    f"expected one of {', '.join(SUFFIXES)}")
    import pickle

    try:
        # weights_only=True: tensors, numbers, strings and containers only. Never False.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global|Unsupported operand)[^\n]*", str(exc))
        what = found.group(0).strip() if found else _first_line(exc)
        raise LoraFormatError(
            path, "this pickle needs more than tensors to load (" + what[:200] + "); it was "
            "refused without running anything in it. Re-save just the tensors (a dict of "
            "name -> tensor), preferably as .safetensors") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise LoraFormatError(path, f"not a readable PyTorch file ({_first_line(exc)})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # PyTorch Lightning: {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, Mapping):
        raise LoraFormatError(path, f"holds a {type(obj).__name__}, not a state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)
           or not isinstance(k, str)]
    if bad:
        raise LoraFormatError(path, "is not a LoRA state dict: non-tensor entries "
                                    + ", ".join(repr(b) for b in bad[:5]))
    return dict(obj), {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --- one adapted layer ---------------------------------------------------------------------


@dataclass
class _Layer:
    A: torch.Tensor  # lora_A / lora_down: (rank, in) or (rank, in, kh, kw)
    B: torch.Tensor  # lora_B / lora_up: (out, rank) or (out, rank, 1, 1)
    alpha: float | None = None  # as stored; None: not stored

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass
class _Raw:
    """A file's layers under the names its format uses, before any architecture is involved."""

    path: Path
    format: str
    layers: dict[str, _Layer]  # raw module name -> layer
    tensors: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    alpha_rule: str = "alpha/rank"  # or "alpha/sqrt(rank)" (rsLoRA)


_AB = re.compile(r"^(?P<module>.+?)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_DIFFSYNTH_BLOCK = re.compile(r"(?:^|\.)(blocks\.\d+\..+)$")
_DIFFUSERS_BLOCKS = re.compile(r"(?:^|\.)(down_blocks|mid_block|up_blocks)\.")
_LEGACY = re.compile(r"(\.processor\.|_lora\.(down|up)\.weight$|\.lora\.(down|up)\.weight$|"
                     r"\.lora_linear_layer\.(down|up)\.weight$)")


def _parse(path: str | os.PathLike) -> _Raw:
    path = Path(path)
    tensors, metadata = _read_tensors(path)
    if not tensors:
        raise LoraFormatError(path, "holds no tensors")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    keys = list(tensors)
    unsupported = [k for k in keys if any(s in k for s in (
        "dora_scale", "lora_magnitude_vector", "hada_", "lokr_", "lora_mid"))
                   or re.search(r"\.diff(_b)?$", k)]
    if unsupported:
        raise LoraFormatError(path, "is a DoRA / LoHa / LoKr / LoCon-Tucker or full-diff "
                                    f"adapter ({unsupported[0]}); only plain LoRA is supported")
    if all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        raw = _parse_kohya(path, tensors)
    elif any(_LEGACY.search(k) for k in keys):
        raw = _parse_legacy_diffusers(path, tensors)
    else:
        raw = _parse_ab(path, tensors, metadata)
    raw.tensors, raw.size_bytes = len(tensors), size
    return raw


def _pair(path: Path, module: str, parts: dict[str, torch.Tensor]) -> _Layer:
    if "A" not in parts or "B" not in parts:
        missing = "lora_B/lora_up" if "A" in parts else "lora_A/lora_down"
        raise LoraFormatError(path, f"layer {module!r} has no {missing} tensor")
    a, b = parts["A"], parts["B"]
    if a.ndim not in (2, 4) or b.ndim != a.ndim or b.shape[1] != a.shape[0]:
        raise LoraFormatError(path, f"layer {module!r}: lora_A {tuple(a.shape)} and lora_B "
                                    f"{tuple(b.shape)} do not multiply")
    return _Layer(a, b)


def _parse_kohya(path: Path, tensors: dict[str, torch.Tensor]) -> _Raw:
    parts: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        base, _, rest = key.partition(".")
        slot = {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}.get(rest)
        if slot is None:
            raise LoraFormatError(path, f"unexpected kohya key {key!r}")
        parts.setdefault(base, {})[slot] = tensor
    layers = {}
    for base, p in parts.items():
        layer = _pair(path, base, p)
        if "alpha" in p:
            layer.alpha = float(p["alpha"].float().item())
        layers[base] = layer
    return _Raw(path, "kohya", layers, 0, 0)


def _parse_legacy_diffusers(path: Path, tensors: dict[str, torch.Tensor]) -> _Raw:
    """diffusers' attention-processor names (0.14-0.21 training scripts)."""
    parts: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        k = key.replace(".processor.", ".")
        k = re.sub(r"\.to_out_lora\.(down|up)\.weight$", r".to_out.0.\1", k)
        k = re.sub(r"\.(to_q|to_k|to_v|q_proj|k_proj|v_proj|out_proj)_lora\.(down|up)\.weight$",
                   r".\1.\2", k)
        k = re.sub(r"\.(lora|lora_linear_layer)\.(down|up)\.weight$", r".\2", k)
        found = re.match(r"^(.+)\.(down|up)$", k)
        if k.endswith(".alpha"):
            parts.setdefault(k[:-len(".alpha")], {})["alpha"] = tensor
            continue
        if not found:
            raise LoraFormatError(path, f"unexpected key {key!r} in a diffusers LoRA")
        parts.setdefault(found.group(1), {})["A" if found.group(2) == "down" else "B"] = tensor
    layers = {}
    for module, p in parts.items():
        layer = _pair(path, module, p)
        if "alpha" in p:
            layer.alpha = float(p["alpha"].float().item())
        layers[_with_component(module)] = layer
    raw = _Raw(path, "diffusers", layers, 0, 0)
    raw.notes.append("older diffusers attention-processor key names")
    return raw


def _with_component(module: str) -> str:
    """``unet.``/``text_encoder.`` prefix for a module name that may lack one."""
    if module.startswith(("unet.", "text_encoder.", "text_encoder_2.")):
        return module
    if module.startswith("text_model."):
        return "text_encoder." + module
    return "unet." + module


def _parse_ab(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> _Raw:
    parts: dict[str, dict[str, Any]] = {}
    adapters = set()
    for key, tensor in tensors.items():
        found = _AB.match(key)
        if key.endswith(".alpha"):
            parts.setdefault(key[:-len(".alpha")], {})["alpha"] = tensor
            continue
        if not found:
            raise LoraFormatError(path, f"unrecognised key {key!r}: not a LoRA in diffusers, "
                                        "PEFT, kohya or DiffSynth format")
        if found["adapter"]:
            adapters.add(found["adapter"])
        parts.setdefault(found["module"], {})[found["ab"]] = tensor
    if len(adapters) > 1:
        raise LoraFormatError(path, f"holds several adapters ({', '.join(sorted(adapters))})")
    modules = list(parts)

    # DiffSynth: the flattened ``blocks.N`` list, never diffusers' down/mid/up blocks.
    if any(_DIFFSYNTH_BLOCK.search(m) for m in modules) and not any(
            _DIFFUSERS_BLOCKS.search(m) for m in modules):
        prefixes = {m[: len(m) - len(_DIFFSYNTH_BLOCK.search(m).group(1))]
                    for m in modules if _DIFFSYNTH_BLOCK.search(m)}
        if len(prefixes) != 1:
            raise LoraFormatError(path, "mixes module prefixes " + ", ".join(sorted(prefixes)))
        prefix = prefixes.pop()
        layers = {}
        for module, p in parts.items():
            if not module.startswith(prefix):
                raise LoraFormatError(path, f"unexpected layer {module!r} in a DiffSynth LoRA")
            layers[module[len(prefix):]] = _pair(path, module, p)
        raw = _Raw(path, "diffsynth", layers, 0, 0)
        if any("alpha" in p for p in parts.values()):
            raise LoraFormatError(path, "DiffSynth LoRAs store no alpha, but this one has some")
        return raw

    if all(m.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for m in modules):
        fmt, names = "diffusers", {m: m for m in modules}
    else:
        fmt = "peft"
        names = {m: _with_component(m.removeprefix("base_model.model.")) for m in modules}
    layers = {}
    for module, p in parts.items():
        layer = _pair(path, module, p)
        if "alpha" in p:
            layer.alpha = float(p["alpha"].float().item())
        layers[names[module]] = layer
    raw = _Raw(path, fmt, layers, 0, 0)
    _apply_stored_config(raw, metadata)
    return raw


def _apply_stored_config(raw: _Raw, metadata: dict[str, str]) -> None:
    """Alphas from diffusers' safetensors metadata or a PEFT adapter_config.json."""
    configs: dict[str, dict[str, Any]] = {}  # component ("unet", ...) or "" -> LoraConfig dict
    if metadata.get("lora_adapter_metadata"):
        try:
            flat = json.loads(metadata["lora_adapter_metadata"])
        except ValueError:
            raise LoraFormatError(raw.path, "has unreadable lora_adapter_metadata") from None
        for key, value in flat.items():
            component, _, name = key.partition(".")
            configs.setdefault(component, {})[name] = value
    beside = raw.path.parent / "adapter_config.json"
    if raw.format == "peft" and raw.path.name.startswith("adapter_model") and beside.is_file():
        try:
            configs[""] = json.loads(beside.read_text("utf-8"))
        except ValueError:
            raise LoraFormatError(beside, "is not valid JSON") from None
        raw.notes.append(f"alpha from {beside.name}")
    if not configs:
        return
    for module, layer in raw.layers.items():
        component, _, inner = module.partition(".")
        config = configs.get(component) or configs.get("")
        if not config or layer.alpha is not None:
            continue
        alpha = config.get("lora_alpha")
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?(?:{pattern.lstrip('^')})", inner):
                alpha = value
                break
        if alpha is not None:
            layer.alpha = float(alpha)
        if config.get("use_rslora"):
            raw.alpha_rule = "alpha/sqrt(rank)"


# --- the architecture: diffusers, SGM and DiffSynth names of every UNet layer ---------------


@dataclass
class _Table:
    shapes: dict[str, tuple[str, int, int, tuple[int, ...]]]  # diffusers -> kind, in, out, kernel
    sgm: dict[str, str]  # diffusers -> SGM (original LDM) name
    diffsynth: dict[str, str]  # diffusers -> DiffSynth name
    sdxl_like: bool  # no cross-attention in the first down block

    @functools.cached_property
    def from_diffsynth(self) -> dict[str, str]:
        return {v: k for k, v in self.diffsynth.items()}

    @functools.cached_property
    def from_kohya(self) -> dict[str, str]:
        out = {"lora_unet_" + d.replace(".", "_"): d for d in self.shapes}
        out.update({"lora_unet_" + s.replace(".", "_"): d for d, s in self.sgm.items()})
        return out


_RESNET_SGM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP_SGM = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
            "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0",
            "conv_out": "out.2"}
_TOP_DIFFSYNTH = {"conv_in": "conv_in", "time_embedding.linear_1": "time_embedding.0",
                  "time_embedding.linear_2": "time_embedding.2",
                  "add_embedding.linear_1": "add_time_embedding.0",
                  "add_embedding.linear_2": "add_time_embedding.2",
                  "encoder_hid_proj": "text_intermediate_proj", "conv_norm_out": "conv_norm_out",
                  "conv_out": "conv_out"}


def _diffsynth_inner(rest: str) -> str:
    """Inside an attention block: diffusers -> DiffSynth (sd_unet.BasicTransformerBlock)."""
    rest = re.sub(r"\.to_out\.0$", ".to_out", rest)
    rest = re.sub(r"\.ff\.net\.0\.proj$", ".act_fn.proj", rest)
    return re.sub(r"\.ff\.net\.2$", ".ff", rest)


def _config_dict(unet_config: Any) -> dict[str, Any]:
    if unet_config is None:
        raise ValueError("unet_config is None")
    if hasattr(unet_config, "config") and not isinstance(unet_config, Mapping):
        unet_config = unet_config.config  # a UNet2DConditionModel
    if isinstance(unet_config, (str, os.PathLike)):
        p = Path(unet_config)
        for candidate in (p / "unet" / "config.json", p / "config.json", p):
            if candidate.is_file():
                return json.loads(candidate.read_text("utf-8"))
        raise ValueError(f"no UNet config.json in {p}")
    return {k: v for k, v in dict(unet_config).items()}


def _table_for(unet_config: Any) -> _Table:
    config = _config_dict(unet_config)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
              if not k.startswith("_")}
    return _table(json.dumps(config, sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _table(config_json: str) -> _Table:
    """Walk a UNet built on the meta device (no memory, ~0.1 s for SDXL) in execution order."""
    import torch
    from diffusers import UNet2DConditionModel

    config = json.loads(config_json)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    shapes = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = ("linear", module.in_features, module.out_features, ())
        elif isinstance(module, torch.nn.Conv2d):
            shapes[name] = ("conv", module.in_channels, module.out_channels,
                            tuple(module.kernel_size))

    blocks: list[str] = []  # DiffSynth's block kinds, by index
    ds: dict[str, str] = {}  # diffusers block prefix -> "blocks.N"
    sgm: dict[str, str] = {}  # diffusers block prefix -> SGM prefix
    kind: dict[str, str] = {}  # diffusers block prefix -> resnet/attention/down/up

    def add(block_kind: str, prefix: str | None = None, sgm_prefix: str | None = None) -> None:
        if prefix is not None:
            ds[prefix] = f"blocks.{len(blocks)}"
            sgm[prefix] = sgm_prefix
            kind[prefix] = block_kind
        blocks.append(block_kind)

    n = 1  # input_blocks.0 is conv_in
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            add("resnet", f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0")
            if attentions is not None:
                add("attention", f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1")
            add("push")
            n += 1
        if block.downsamplers:
            add("down", f"down_blocks.{i}.downsamplers.0", f"input_blocks.{n}.0")
            add("push")
            n += 1
    mid = unet.mid_block
    if mid is not None:
        add("resnet", "mid_block.resnets.0", "middle_block.0")
        for k in range(len(getattr(mid, "attentions", []))):
            add("attention", f"mid_block.attentions.{k}", f"middle_block.{2 * k + 1}")
            add("resnet", f"mid_block.resnets.{k + 1}", f"middle_block.{2 * k + 2}")
    n = 0
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            add("pop")
            add("resnet", f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0")
            if attentions is not None:
                add("attention", f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1")
            n += 1
        if block.upsamplers:
            slot = 2 if attentions is not None else 1  # in the last layer's output block
            add("up", f"up_blocks.{i}.upsamplers.0", f"output_blocks.{n - 1}.{slot}")

    to_sgm, to_ds = {}, {}
    for name in shapes:
        parts = name.split(".")
        depth = 2 if parts[0] == "mid_block" else 3
        prefix, rest = ".".join(parts[:depth + 1]), ".".join(parts[depth + 1:])
        if prefix in kind:
            k = kind[prefix]
            if k == "resnet":
                s_rest, d_rest = _RESNET_SGM.get(rest), rest
            elif k == "attention":
                s_rest, d_rest = rest, _diffsynth_inner("." + rest)[1:]
            else:  # down / up samplers: "conv"
                s_rest, d_rest = ("op" if k == "down" else "conv"), rest
            if s_rest is not None:
                to_sgm[name] = f"{sgm[prefix]}.{s_rest}"
            to_ds[name] = f"{ds[prefix]}.{d_rest}"
        else:
            if name in _TOP_SGM:
                to_sgm[name] = _TOP_SGM[name]
            if name in _TOP_DIFFSYNTH:
                to_ds[name] = _TOP_DIFFSYNTH[name]
    first = unet.down_blocks[0]
    return _Table(shapes, to_sgm, to_ds, sdxl_like=getattr(first, "attentions", None) is None)


def diffsynth_names(unet_config: Any = None) -> dict[str, str]:
    """diffusers UNet layer name -> DiffSynth-Studio's name for it, for the UNet of
    ``unet_config`` (a config mapping, a UNet, or a diffusers folder; default: SDXL/Kolors)."""
    return dict(_table_for(unet_config if unet_config is not None else _SDXL).diffsynth)


# --- resolving raw names against an architecture ---------------------------------------------


_TE_KOHYA = re.compile(r"^text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|"
                       r"mlp_fc[12])$")


def _te_from_kohya(path: Path, base: str) -> str:
    prefix = next(p for p in ("lora_te1_", "lora_te2_", "lora_te_") if base.startswith(p))
    rest = base[len(prefix):]
    component = "text_encoder_2" if prefix == "lora_te2_" else "text_encoder"
    if rest == "text_projection":
        return f"{component}.text_projection"
    found = _TE_KOHYA.match(rest)
    if not found:
        raise LoraFormatError(path, f"unsupported text-encoder layer {base!r}")
    inner = found.group(2).replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
    return f"{component}.text_model.encoder.layers.{found.group(1)}.{inner}"


def _resolve(raw: _Raw, table: _Table | None) -> dict[str, _Layer]:
    """Raw names -> diffusers names (``unet.`` / ``text_encoder.`` ...), checked against
    ``table``'s shapes when given. Raises LoraFormatError on the first layer that does not fit."""
    out: dict[str, _Layer] = {}
    for name, layer in raw.layers.items():
        if raw.format == "kohya" and name.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
            out[_te_from_kohya(raw.path, name)] = layer
            continue
        if raw.format in ("kohya", "diffsynth"):
            if table is None:
                raise LoraFormatError(raw.path, "needs a UNet layout to map its names")
            lookup = table.from_kohya if raw.format == "kohya" else table.from_diffsynth
            target = lookup.get(name)
            if target is None:
                raise LoraFormatError(raw.path, f"layer {name!r} has no counterpart in this UNet")
            module = "unet." + target
        else:
            module = name
        if table is not None and module.startswith("unet."):
            layer = _check_shape(raw.path, module, layer, table)
        out[module] = layer
    return out


def _check_shape(path: Path, module: str, layer: _Layer, table: _Table) -> _Layer:
    inner = module[len("unet."):]
    if inner not in table.shapes:
        raise LoraFormatError(path, f"layer {inner!r} does not exist in this UNet")
    kind, width_in, width_out, kernel = table.shapes[inner]
    a, b = layer.A, layer.B
    if kind == "conv" and a.ndim == 2 and kernel == (1, 1):  # Linear LoRA on a 1x1 conv
        a, b = a[:, :, None, None], b[:, :, None, None]
    expect_a = (width_in,) + (kernel if kind == "conv" else ())
    if (a.ndim != (4 if kind == "conv" else 2) or tuple(a.shape[1:]) != expect_a
            or b.shape[0] != width_out):
        raise LoraFormatError(
            path, f"layer {inner!r} is {width_in} -> {width_out} wide in this UNet, but the "
                  f"LoRA has A {tuple(layer.A.shape)}, B {tuple(layer.B.shape)} (a LoRA for "
                  "another model family?)")
    return _Layer(a, b, layer.alpha)


def _detect_family(layers: dict[str, _Layer], table: _Table | None = None,
                   raw: _Raw | None = None) -> tuple[str, str, int | None]:
    """(family, reason, cross-attention width) from resolved diffusers names and shapes."""
    family, reason, cross_dim = _family_from_unet(layers, table, raw)
    clip = any(m.startswith("text_encoder.text_model.") for m in layers)
    if family == "sdxl-or-kolors" and clip:  # SD1.5 also has a CLIP encoder, so only here
        return "sdxl", reason + "; adapts a CLIP text encoder (Kolors' is ChatGLM)", cross_dim
    return family, reason, cross_dim


def _family_from_unet(layers: dict[str, _Layer], table: _Table | None,
                      raw: _Raw | None) -> tuple[str, str, int | None]:
    cross = {int(l.A.shape[1]) for m, l in layers.items()
             if m.startswith("unet.") and re.search(r"attn2\.to_[kv]$", m)}
    cross_dim = cross.pop() if len(cross) == 1 else None
    kolors, sdxl = [], []
    if any(m.startswith("unet.encoder_hid_proj") for m in layers):
        kolors.append("adapts encoder_hid_proj (Kolors' text projection)")
    if any(m.startswith("text_encoder.encoder.") or "query_key_value" in m for m in layers):
        kolors.append("adapts a ChatGLM text encoder")
    if any(m.startswith("text_encoder_2.") for m in layers):
        sdxl.append("adapts a second text encoder")
    add = layers.get("unet.add_embedding.linear_1")
    if add is not None and add.A.shape[1] in (2816, 5632):
        (sdxl if add.A.shape[1] == 2816 else kolors).append(
            f"added-conditioning input width {add.A.shape[1]}")
    if kolors and sdxl:
        return "unknown", "conflicting evidence: " + "; ".join(kolors + sdxl), cross_dim
    if kolors:
        return "kolors", "; ".join(kolors), cross_dim
    if sdxl:
        return "sdxl", "; ".join(sdxl), cross_dim
    if cross_dim in _CROSS_WIDTH:
        family = _CROSS_WIDTH[cross_dim]
        reason = f"cross-attention input width {cross_dim}"
        if family == "sdxl-or-kolors":
            reason += ("; SDXL and Kolors share this UNet and the LoRA adapts nothing that "
                       "differs (encoder_hid_proj, add_embedding, text encoders)")
        return family, reason, cross_dim
    unet = [m[len("unet."):] for m in layers if m.startswith("unet.")]
    if unet:
        sd15 = any(re.match(r"(down_blocks\.0|up_blocks\.[23])\.attentions\.", m) for m in unet)
        xl = any(re.match(r"up_blocks\.0\.attentions\.", m)
                 or re.search(r"transformer_blocks\.[1-9]", m) for m in unet)
        if table is not None:
            sd15, xl = (False, True) if table.sdxl_like else (True, False)
        note = (f" (cross-attention width {cross_dim} is not a released model's: a custom "
                "or test UNet)") if cross_dim else ""
        if xl and not sd15:
            return "sdxl-or-kolors", "SDXL-shaped block layout" + note, cross_dim
        if sd15 and not xl:
            return "sd15", "SD1.5-shaped block layout" + note, cross_dim
    if raw is not None and _sgm_named(raw):
        return "sdxl-or-kolors", "kohya SGM (SDXL) layer names", cross_dim
    return "unknown", "nothing in the file tells", cross_dim


def _sgm_named(raw: _Raw) -> bool:
    """kohya names the SDXL UNet's layers by the SGM code (SD1.5's by diffusers')."""
    return raw.format == "kohya" and any(
        re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", n) for n in raw.layers)


def _candidates(family: str | None, unet_config: Any) -> list[tuple[str, Any]]:
    if unet_config is not None:
        return [("the given UNet", unet_config)]
    if family is not None:
        if family not in FAMILY_UNET_CONFIGS:
            raise ValueError(f"family must be one of {', '.join(FAMILY_UNET_CONFIGS)}, "
                             f"got {family!r}")
        return [(family, FAMILY_UNET_CONFIGS[family])]
    return [(f, FAMILY_UNET_CONFIGS[f]) for f in ("sdxl", "kolors", "sd15")]


def _load(path: str | os.PathLike, family: str | None, unet_config: Any,
          strict: bool = True) -> tuple[_Raw, dict[str, _Layer] | None, _Table | None, list[str]]:
    """Parse and resolve. With ``strict`` a LoRA that fits none of the candidate UNets raises;
    otherwise the layers are None and the problems are returned."""
    raw = _parse(path)
    needs_layout = raw.format in ("kohya", "diffsynth") and any(
        not n.startswith(("lora_te_", "lora_te1_", "lora_te2_")) for n in raw.layers)
    candidates = _candidates(family, unet_config)
    if not needs_layout and unet_config is None and family is None:
        layers = _resolve(raw, None)  # names are diffusers' already; check widths if standard
        detected, _, cross = _detect_family(layers, raw=raw)
        fits = None if cross not in _CROSS_WIDTH else {
            "sd15": ["sd15"], "sdxl": ["sdxl"], "kolors": ["kolors"],
            "sdxl-or-kolors": ["sdxl", "kolors"]}.get(detected)
        if not fits:
            return raw, layers, None, []
        candidates = [(f, FAMILY_UNET_CONFIGS[f]) for f in fits]
    problems = []
    for label, config in candidates:
        table = _table_for(config)
        try:
            return raw, _resolve(raw, table), table, []
        except LoraFormatError as exc:
            problems.append(f"{label}: {exc.problem}")
    if strict:
        hint = "" if unet_config is not None else (
            "; for a UNet other than the released SDXL/Kolors/SD1.5 ones pass unet_config")
        raise LoraFormatError(raw.path, "does not fit " + (
            "the model" if len(problems) == 1 else "any known UNet") + ": "
            + " | ".join(problems) + hint)
    return raw, None, None, problems


# --- public API ------------------------------------------------------------------------------


def inspect_lora(path: str | os.PathLike, *, unet_config: Any = None) -> LoraInfo:
    """Describe a LoRA file. ``unet_config`` (a config mapping, a UNet or a diffusers folder)
    is only needed to place kohya/DiffSynth layers of a UNet other than the released ones."""
    raw, layers, table, problems = _load(path, None, unet_config, strict=False)
    notes = list(raw.notes)
    if layers is None:
        notes.append("layers not placed in a known UNet: " + " | ".join(problems))
        family, reason, cross = "unknown", "fits no known UNet", None
        if _sgm_named(raw):
            family, reason = "sdxl-or-kolors", ("kohya SGM (SDXL) layer names, but the widths "
                                                "fit no released UNet")
        names = list(raw.layers)
    else:
        family, reason, cross = _detect_family(layers, table, raw)
        names = list(layers)
    alphas = sorted({l.alpha for l in raw.layers.values() if l.alpha is not None})
    if len(alphas) and any(l.alpha is None for l in raw.layers.values()):
        notes.append("alpha stored for some layers only")
    if not alphas:
        notes.append("no alpha stored: alpha = rank (scale 1.0) unless one is given")
    if raw.alpha_rule != "alpha/rank":
        notes.append("rsLoRA: scale = alpha / sqrt(rank)")
    dtypes = {str(t).removeprefix("torch.") for l in raw.layers.values()
              for t in (l.A.dtype, l.B.dtype)}
    text = any(n.startswith(("text_encoder", "lora_te")) for n in names)
    return LoraInfo(
        path=raw.path, format=raw.format, family=family, family_reason=reason,
        ranks=tuple(sorted({l.rank for l in raw.layers.values()})),
        alphas=tuple(alphas) if alphas else None,
        modules=tuple(sorted({_kind(n) for n in names})), layers=len(raw.layers),
        tensors=raw.tensors, size_bytes=raw.size_bytes,
        dtype=dtypes.pop() if len(dtypes) == 1 else "mixed", text_encoder=text,
        cross_attention_dim=cross, notes=tuple(notes))


def _kind(name: str) -> str:
    """``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0`` -> ``to_out``."""
    name = re.sub(r"\.0$", "", name) if name.endswith("to_out.0") else name
    name = name.replace("_", ".") if name.startswith("lora_") else name
    for pattern in (r".*(?:transformer.blocks|layers|resnets|attentions|samplers|blocks)\.\d+\.",
                    r"^(?:unet|text_encoder|text_encoder_2)\."):
        name = re.sub(pattern, "", name)
    name = re.sub(r"^(?:attn[12]|self.attn|self_attn|mlp)\.", "", name)
    known = {"to.q": "to_q", "to.k": "to_k", "to.v": "to_v", "to.out": "to_out",
             "to.out.0": "to_out", "q.proj": "q_proj", "k.proj": "k_proj", "v.proj": "v_proj",
             "out.proj": "out_proj", "proj.in": "proj_in", "proj.out": "proj_out"}
    return known.get(name, name)


def _scaled_layers(path: str | os.PathLike, alpha: float | None, family: str | None,
                   unet_config: Any) -> tuple[_Raw, dict[str, _Layer], _Table | None, str]:
    raw, layers, table, _ = _load(path, family, unet_config)
    assert layers is not None
    detected, reason, _ = _detect_family(layers, table, raw)
    if family is not None and detected != "unknown" and detected not in _ACCEPTS[family]:
        raise LoraFormatError(raw.path, f"is a {detected} LoRA ({reason}), not for {family}")
    if family == "kolors" or (unet_config is not None
                              and _config_dict(unet_config).get("encoder_hid_dim_type")):
        extra = [m for m in layers if m.startswith("text_encoder_2.")]
        if extra:
            raise LoraFormatError(raw.path, "adapts text_encoder_2, which Kolors does not have")
    if alpha is not None:
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        for layer in layers.values():
            layer.alpha = float(alpha)
    elif raw.alpha_rule != "alpha/rank":  # rsLoRA: express as an equivalent plain alpha
        for layer in layers.values():
            if layer.alpha is not None:
                layer.alpha = layer.alpha * math.sqrt(layer.rank)
    return raw, layers, table, detected


def to_diffusers(path: str | os.PathLike, *, alpha: float | None = None,
                 family: str | None = None, unet_config: Any = None) -> dict[str, torch.Tensor]:
    """The LoRA as a diffusers state dict (``unet.<module>.lora_A.weight`` / ``lora_B.weight``,
    ``text_encoder[_2].<module>...``) with the scale alpha/rank folded into ``lora_B``.

    ``alpha``: PEFT's lora_alpha for every layer, overriding the file's (default: the file's,
    else the rank). ``family`` ("sdxl", "kolors", "sd15"): the model it is for; a LoRA made for
    another family raises LoraFormatError. ``unet_config``: the exact UNet (config mapping,
    UNet or diffusers folder), checked layer by layer; needed for kohya/DiffSynth files of a
    UNet other than the released ones."""
    import torch

    _, layers, _, _ = _scaled_layers(path, alpha, family, unet_config)
    out: dict[str, torch.Tensor] = {}
    for module in sorted(layers):
        layer = layers[module]
        scale = 1.0 if layer.alpha is None else layer.alpha / layer.rank
        b = layer.B if scale == 1.0 else (layer.B.to(torch.float32) * scale).to(layer.B.dtype)
        out[f"{module}.lora_A.weight"] = layer.A.contiguous().clone()
        out[f"{module}.lora_B.weight"] = b.contiguous().clone()
    return out


def _to_kohya(path: Path, layers: dict[str, _Layer], table: _Table | None,
              sgm: bool) -> dict[str, torch.Tensor]:
    import torch

    out: dict[str, torch.Tensor] = {}
    for module in sorted(layers):
        layer = layers[module]
        component, _, inner = module.partition(".")
        if component == "unet":
            if sgm:
                if table is None or inner not in table.sgm:
                    raise LoraFormatError(path, f"layer {inner!r} has no kohya (SGM) name")
                name = table.sgm[inner]
            else:
                name = inner
            base = "lora_unet_" + name.replace(".", "_")
        elif inner.startswith("text_model.encoder.layers.") or inner == "text_projection":
            prefix = {"text_encoder": "lora_te1_" if sgm else "lora_te_",
                      "text_encoder_2": "lora_te2_"}[component]
            base = prefix + inner.replace(".", "_")
        else:
            raise LoraFormatError(path, f"layer {module!r} has no kohya name")
        out[f"{base}.lora_down.weight"] = layer.A.contiguous().clone()
        out[f"{base}.lora_up.weight"] = layer.B.contiguous().clone()
        out[f"{base}.alpha"] = torch.tensor(float(layer.rank if layer.alpha is None
                                                  else layer.alpha), dtype=torch.float32)
    return out


def convert_lora(src: str | os.PathLike, dst: str | os.PathLike, *, to: str = "diffusers",
                 alpha: float | None = None, family: str | None = None,
                 unet_config: Any = None) -> Path:
    """Write ``src`` as a ``.safetensors`` LoRA at ``dst`` (atomically) and return ``dst``.

    ``to="diffusers"``: what ``to_diffusers`` returns. ``to="kohya"``: WebUI / ComfyUI names
    (SGM names for SDXL and Kolors, diffusers names for SD1.5, as kohya's trainers write them),
    ``lora_up`` unscaled and the alpha in ``.alpha``. ``alpha``, ``family`` and ``unet_config``
    as for ``to_diffusers``."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if to not in ("diffusers", "kohya"):
        raise ValueError(f"to must be 'diffusers' or 'kohya', got {to!r}")
    if dst.suffix.lower() != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {dst.name!r}")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError("the output would overwrite the input")
    if to == "diffusers":
        tensors = to_diffusers(src, alpha=alpha, family=family, unet_config=unet_config)
        metadata = {"format": "pt"}
    else:
        raw, layers, table, detected = _scaled_layers(src, alpha, family, unet_config)
        sgm = (family or detected) != "sd15"
        if sgm and table is None:  # diffusers/PEFT names of an unknown UNet
            raise LoraFormatError(src, "kohya SDXL names depend on the UNet's layout; pass "
                                       "family or unet_config")
        tensors = _to_kohya(src, layers, table, sgm)
        ranks = sorted({l.rank for l in layers.values()})
        alphas = sorted({l.rank if l.alpha is None else l.alpha for l in layers.values()})
        metadata = {"format": "pt", "ss_network_module": "networks.lora",
                    "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "dynamic",
                    "ss_network_alpha": f"{alphas[0]:g}" if len(alphas) == 1 else "dynamic"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst
