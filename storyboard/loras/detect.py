"""Which model a LoRA is for, and ``inspect_lora``: what a LoRA file is.

In: a LoRA file and, optionally, the model it is meant for: a family name (``sdxl``, ``kolors``,
``sd15``; ``storyboard.families.FAMILY_NAMES``) or an exact UNet config. Out:
``inspect_lora`` -> ``LoraInfo`` (format, base family and the evidence for it, ranks, alphas,
module kinds, sizes, dtype, whether it touches a text encoder); and, for ``convert``,
``_load``: the parsed file (``read``) with its layers resolved to diffusers' names against the
first candidate UNet they fit (``layout``).

Family evidence, strongest first: Kolors-only parts (``encoder_hid_proj``, a ChatGLM text
encoder); SDXL-only parts (``text_encoder_2``); the added-conditioning input width of
``add_embedding.linear_1`` (each family's ``projection_class_embeddings_input_dim``: 2816 SDXL,
5632 Kolors); conflicting evidence gives ``unknown``. Then the cross-attention input width of
``attn2.to_k`` / ``to_v`` (``storyboard.families.CROSS_ATTENTION_WIDTHS``: 768 SD1.5, 1024 SD2,
2048 SDXL or Kolors, which share this UNet; a LoRA of only shared layers is
``sdxl-or-kolors``, made ``sdxl`` when it adapts a CLIP text encoder, since Kolors' is ChatGLM).
Then the block layout (SD1.5 has cross-attention in its first down block, SDXL does not), and
last kohya's SGM names, which kohya uses for SDXL only.

Candidate UNets. kohya and DiffSynth names only mean something against a layout, so such a file
is tried against each released family's UNet (``FAMILIES[name].unet``) in ``FAMILY_NAMES``
order, or only the one asked for; the first it fits wins. diffusers / PEFT files name their
layers already: they are checked against the released UNets their cross-attention width
points to, and otherwise taken as they are (a custom or test UNet).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import weightfiles
from ..families import CROSS_ATTENTION_WIDTHS, FAMILIES, FAMILY_NAMES
from .layout import _resolve, _Table, _table_for
from .read import LoraFormatError, _Layer, _parse, _Raw

# The input width of add_embedding.linear_1 (the added time/size conditioning) -> family.
_ADDED_CONDITIONING_WIDTHS = {f.unet["projection_class_embeddings_input_dim"]: f.name
                              for f in FAMILIES.values()
                              if "projection_class_embeddings_input_dim" in f.unet}


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
    # What `storyboard train` recorded in the header (base model, token, steps, dataset...),
    # without the "storyboard." prefix; empty for a LoRA trained elsewhere.
    trained: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int | None:
        return self.ranks[0] if len(self.ranks) == 1 else None

    @property
    def alpha(self) -> float | None:
        return self.alphas[0] if self.alphas and len(self.alphas) == 1 else None


# --- family detection ------------------------------------------------------------------------


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
    if add is not None and add.A.shape[1] in _ADDED_CONDITIONING_WIDTHS:
        by = _ADDED_CONDITIONING_WIDTHS[add.A.shape[1]]
        (sdxl if by == "sdxl" else kolors).append(
            f"added-conditioning input width {add.A.shape[1]}")
    if kolors and sdxl:
        return "unknown", "conflicting evidence: " + "; ".join(kolors + sdxl), cross_dim
    if kolors:
        return "kolors", "; ".join(kolors), cross_dim
    if sdxl:
        return "sdxl", "; ".join(sdxl), cross_dim
    if cross_dim in CROSS_ATTENTION_WIDTHS:
        family = CROSS_ATTENTION_WIDTHS[cross_dim]
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


# --- placing the layers in a UNet ------------------------------------------------------------


def _candidates(family: str | None, unet_config: Any) -> list[tuple[str, Any]]:
    if unet_config is not None:
        return [("the given UNet", unet_config)]
    if family is not None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILY_NAMES)}, "
                             f"got {family!r}")
        return [(family, FAMILIES[family].unet)]
    return [(f, FAMILIES[f].unet) for f in FAMILY_NAMES]


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
        fits = None if cross not in CROSS_ATTENTION_WIDTHS else [
            f for f in FAMILY_NAMES if detected in FAMILIES[f].lora_accepts]
        if not fits:
            return raw, layers, None, []
        candidates = [(f, FAMILIES[f].unet) for f in fits]
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


# --- inspect ---------------------------------------------------------------------------------


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
        cross_attention_dim=cross, notes=tuple(notes), trained=_trained_by(path))


def _trained_by(path: str | os.PathLike) -> dict[str, str]:
    """The ``storyboard.*`` entries of a safetensors file's metadata (bounded by
    ``weightfiles``: the header was checked before the tensors were read)."""
    header = weightfiles.check(path) or {}
    metadata = header.get("__metadata__") or {}
    return {key.removeprefix("storyboard."): value for key, value in sorted(metadata.items())
            if key.startswith("storyboard.")}


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
