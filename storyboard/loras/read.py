"""Reading LoRA files: the tensors in a file, parsed into layers under the file's own names.

In: a path to a ``.safetensors`` file or a pickle (``.bin``, ``.pt``, ``.pth``, ``.ckpt``).
Out: ``_parse(path)`` -> ``_Raw``: the file's format (``diffusers``, ``peft``, ``kohya`` or
``diffsynth``), one ``_Layer`` (lora_A, lora_B, stored alpha or None) per adapted module under
the name the format uses, and the file's tensor count and size. No architecture is involved
yet: turning kohya and DiffSynth names into diffusers' is ``layout``'s job. Anything that is
not a plain LoRA in one of the four formats raises ``LoraFormatError``, naming the file.

How each format is recognised and read:

- ``kohya`` (WebUI / ComfyUI): every key starts ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` /
  ``lora_te2_``; a layer is ``<base>.lora_down.weight`` (A), ``.lora_up.weight`` (B) and an
  optional ``.alpha``. ``<base>`` is kept as written (SGM names for SDXL, diffusers' for SD1.5).
- older ``diffusers`` (0.14-0.21 training scripts): attention-processor names
  (``...attn1.processor.to_q_lora.down.weight``, ``.lora.down``, ``.lora_linear_layer.up``),
  rewritten to module names (``...attn1.to_q``) with a ``unet.`` / ``text_encoder.`` prefix.
- everything else must be ``<module>.lora_A[.<adapter>].weight`` / ``lora_B`` (one adapter at
  most, e.g. PEFT's ``.default``), optionally with ``<module>.alpha``. Then:

  - ``diffsynth``: DiffSynth-Studio's flattened ``blocks.N.`` names and none of diffusers'
    ``down_blocks`` / ``mid_block`` / ``up_blocks``; one module prefix at most (a Lightning
    module path such as ``pipe.unet.``), which is dropped. DiffSynth stores no alpha, so a file
    with one is refused.
  - ``diffusers``: every module starts ``unet.`` / ``text_encoder.`` / ``text_encoder_2.``, as
    ``save_lora_weights`` writes.
  - ``peft``: otherwise (``base_model.model.`` dropped, the component prefix added).

Stored alphas. kohya and older diffusers files keep one in ``.alpha`` tensors. Newer diffusers
files (>= 0.34) keep the adapter's ``LoraConfig`` per component in the safetensors metadata
``lora_adapter_metadata``; PEFT keeps it in an ``adapter_config.json`` beside an
``adapter_model.*`` file. From those: ``lora_alpha``, overridden per module by
``alpha_pattern``; ``use_rslora`` marks the file rsLoRA (scale ``alpha / sqrt(rank)``). A layer
with no stored alpha keeps ``alpha=None`` here (the readers' rule "alpha = rank" is applied when
converting).

Every file is checked by ``storyboard.weightfiles`` before anything reads it: a regular file,
a sound safetensors header, a pickle in torch's zip format whose entries unpack to no more than
the file holds. Pickles are then only ever opened with ``torch.load(weights_only=True,
map_location="cpu")``, reading the checked file; one that needs anything more is refused with
``LoraFormatError`` naming the global it asked for, and nothing in it runs. Stored LoRA configs
(metadata, ``adapter_config.json``) are read with bounds and their fields checked. A PyTorch
Lightning checkpoint (``{"state_dict": ..., "epoch": ...}``) is unwrapped. DoRA, LoHa, LoKr,
LoCon-Tucker and full-diff adapters are refused: only plain LoRA is supported.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import weightfiles
from ..weightfiles import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX

if TYPE_CHECKING:
    import torch

SUFFIXES = (SAFETENSORS_SUFFIX,) + PICKLE_SUFFIXES


class LoraFormatError(ValueError):
    """A LoRA file that cannot be read, converted or used as asked; names the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"LoRA {self.path}: {problem}")


# --- reading files -------------------------------------------------------------------------


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors by key, and its safetensors metadata (empty for pickles). The file is
    checked first (``storyboard.weightfiles``): a regular file, a sound safetensors header or a
    torch zip that unpacks to no more than it holds."""
    import torch

    try:
        with weightfiles.opened(path) as (fh, header):
            if header is not None:
                return _read_safetensors(path), dict(header.get("__metadata__") or {})
            try:
                # weights_only=True: tensors, numbers, strings and containers only. Never False.
                # The open, checked file is what torch reads: nothing can replace it meanwhile.
                obj = torch.load(fh, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                raise LoraFormatError(path, weightfiles.pickle_refusal(str(exc)) + ". Re-save "
                                      "just the tensors (a dict of name -> tensor), preferably "
                                      "as .safetensors") from None
            except Exception as exc:  # noqa: BLE001 - truncated or foreign files
                raise LoraFormatError(path, f"not a readable PyTorch file ({_first_line(exc)})"
                                      ) from None
    except weightfiles.WeightFileError as exc:
        raise LoraFormatError(path, exc.problem) from None
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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
        raise LoraFormatError(path, f"not a readable .safetensors file ({_first_line(exc)})"
                              ) from None


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


# --- parsing keys into layers --------------------------------------------------------------


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


MAX_CONFIG_BYTES = 1 << 20  # a stored LoraConfig is a few hundred bytes
_REPEATED_GROUP = re.compile(r"\)[*+{]")  # (a+)+ and friends can take forever to match


def _apply_stored_config(raw: _Raw, metadata: dict[str, str]) -> None:
    """Alphas from diffusers' safetensors metadata or a PEFT adapter_config.json."""
    configs: dict[str, Any] = {}  # component ("unet", ...) or "" -> LoraConfig dict
    beside = raw.path.parent / "adapter_config.json"
    try:
        if metadata.get("lora_adapter_metadata"):
            flat = weightfiles.loads_bounded(metadata["lora_adapter_metadata"],
                                             MAX_CONFIG_BYTES, raw.path,
                                             "its lora_adapter_metadata")
            if not isinstance(flat, dict):
                raise LoraFormatError(raw.path, "its lora_adapter_metadata is not a JSON object")
            for key, value in flat.items():
                component, _, name = key.partition(".")
                configs.setdefault(component, {})[name] = value
            for config in configs.values():
                _check_config(raw.path, config)
        if raw.format == "peft" and raw.path.name.startswith("adapter_model") and \
                beside.is_file():
            configs[""] = _check_config(beside, weightfiles.bounded_json(
                beside, MAX_CONFIG_BYTES, "an adapter_config.json"))
            raw.notes.append(f"alpha from {beside.name}")
    except weightfiles.WeightFileError as exc:
        raise LoraFormatError(exc.path, exc.problem) from None
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


def _check_config(path: Path, config: Any) -> dict[str, Any]:
    """``config``, a stored LoraConfig whose alpha fields are numbers and whose alpha patterns
    are regular expressions that match in linear time."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(config, dict):
        raise LoraFormatError(path, "its stored LoRA config is not a JSON object")
    if config.get("lora_alpha") is not None and not number(config["lora_alpha"]):
        raise LoraFormatError(path, "its stored lora_alpha is not a number")
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict) or not all(number(v) for v in patterns.values()):
        raise LoraFormatError(path, "its stored alpha_pattern is not a map of numbers")
    for pattern in patterns:
        if len(pattern) > 500 or _REPEATED_GROUP.search(pattern):
            raise LoraFormatError(path, f"alpha_pattern {pattern[:80]!r} is too long or repeats "
                                        "a group (it could take forever to match)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise LoraFormatError(path, f"alpha_pattern {pattern[:80]!r} is not a regular "
                                        f"expression ({exc})") from None
    return config
