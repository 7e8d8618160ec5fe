"""Converting LoRAs: the same weights in the format diffusers, WebUI or ComfyUI reads.

In: a LoRA file in any of the four formats (``read``), and optionally ``alpha`` (PEFT's
``lora_alpha``, overriding the file's), ``family`` (``sdxl``, ``kolors``, ``sd15``: the model it
is for; a LoRA that ``detect`` finds is for another family, per ``FAMILIES[family].lora_accepts``,
is refused) and ``unet_config`` (the exact UNet, checked layer by layer). Out: ``to_diffusers``
-> a state dict that ``StableDiffusionXLPipeline.load_lora_weights`` /
``KolorsPipeline.load_lora_weights`` load with no unexpected or missing keys, alpha already
applied; ``convert_lora`` -> a ``.safetensors`` file in diffusers or kohya format, written
atomically (``storyboard.paths.atomic_write_via``).

Alpha. A LoRA adds ``(alpha / rank) * B @ A`` to a layer's weight (kohya, PEFT and diffusers
agree; PEFT's rsLoRA uses ``alpha / sqrt(rank)``, expressed here as the equivalent plain alpha
``alpha * sqrt(rank)``). ``to_diffusers`` folds that scale into ``lora_B`` and writes no alpha:
diffusers then builds the adapter with ``lora_alpha = r`` (scale 1.0;
``diffusers.utils.peft_utils.get_peft_kwargs``), so the file means the same in any reader.
``.alpha`` tensors cannot be used in the diffusers format (every key must contain "lora", and
``load_lora_weights`` raises on ``unet.<module>.alpha``); diffusers honours kohya ``.alpha`` only
for kohya-named files, where ``_convert_non_diffusers_lora_to_diffusers`` turns them into
``network_alphas`` and then ``LoraConfig.lora_alpha`` / ``alpha_pattern``. The kohya writer
keeps ``lora_up`` as it is and stores ``.alpha``, as kohya's own trainer does, with SGM names
for SDXL and Kolors and diffusers' names for SD1.5 (``lora_te_`` for SD1.5's text encoder,
``lora_te1_`` / ``lora_te2_`` for SDXL's), and ``ss_network_dim`` / ``ss_network_alpha``
metadata.

The ``alpha`` argument (PEFT's ``lora_alpha``; scale = alpha / rank) overrides what the file
stores. A file that stores no alpha gets alpha = rank (scale 1.0): kohya, WebUI, ComfyUI and
diffusers all read a missing ``.alpha`` that way, and DiffSynth-Studio's own loader
(``ModelManager.load_lora(..., lora_alpha=1.0)``, diffsynth/models/lora.py
``GeneralLoRAFromPeft``) adds ``1.0 * B @ A``, the same thing. The strength is then the story's
LoRA weight. For the course's DiffSynth Kolors LoRA (trained with rank 16, ``lora_alpha`` 4.0,
i.e. scale 0.25 during training; loaded in the course with ``LoraConfig(r=16, lora_alpha=2.0)``,
scale 0.125) pass ``alpha=2.0`` to get the course's look at weight 1.0, or keep the default and
use weight 0.125.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..families import FAMILIES
from ..paths import atomic_write_via
from .detect import _detect_family, _load
from .layout import _config_dict, _Table
from .read import LoraFormatError, _Layer, _Raw

if TYPE_CHECKING:
    import torch


def _scaled_layers(path: str | os.PathLike, alpha: float | None, family: str | None,
                   unet_config: Any) -> tuple[_Raw, dict[str, _Layer], _Table | None, str]:
    raw, layers, table, _ = _load(path, family, unet_config)
    assert layers is not None
    detected, reason, _ = _detect_family(layers, table, raw)
    if (family is not None and detected != "unknown"
            and detected not in FAMILIES[family].lora_accepts):
        raise LoraFormatError(raw.path, f"is a {detected} LoRA ({reason}), not for {family}")
    # Text encoders the model has (the registry's; a UNet that projects its text, as Kolors'
    # does, has one encoder): a LoRA for another one has nothing to attach to.
    encoders = set(FAMILIES[family].text_encoders) if family else None
    if encoders is None and unet_config is not None \
            and _config_dict(unet_config).get("encoder_hid_dim_type"):
        encoders = {"text_encoder"}
    if encoders is not None:
        extra = sorted({m.split(".", 1)[0] for m in layers if m.startswith("text_encoder")}
                       - encoders)
        if extra:
            raise LoraFormatError(raw.path, f"adapts {extra[0]}, which "
                                            f"{family or 'this model'} does not have")
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
    as for ``to_diffusers``. A new file's permissions follow the umask; a replaced file keeps
    its own."""
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
    atomic_write_via(dst, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return dst
