"""UNet layouts: every UNet layer's diffusers, SGM (kohya SDXL) and DiffSynth name and shape.

In: a UNet's config (a mapping, a ``UNet2DConditionModel``, or a diffusers folder; the released
families' layouts are ``storyboard.families.FAMILIES[name].unet``), and a ``_Raw`` LoRA from
``read``. Out: ``_table_for(config)`` -> ``_Table`` (diffusers name -> kind, in/out width and
kernel; diffusers -> SGM name; diffusers -> DiffSynth name), ``diffsynth_names(config)`` (the
public view of the last), and ``_resolve(raw, table)``: the LoRA's layers under diffusers'
names (``unet.<module>``, ``text_encoder[_2].<module>``), each checked against the table's
widths. A layer the UNet lacks, or one of the wrong width, raises ``LoraFormatError``.

The table is derived from the actual diffusers UNet, built on the "meta" device from its config
(no memory, ~0.1 s for SDXL) and walked in execution order, so any UNet of that shape maps,
including the built-in tiny ones.

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
  ``blocks.21`` and ``up_blocks.1.attentions.2`` is ``blocks.41``.
- inside a block the names are diffusers' except: ``to_out`` is a bare ``Linear`` (diffusers
  ``to_out.0``), the feed-forward is ``act_fn.proj`` / ``ff`` (diffusers ``ff.net.0.proj`` /
  ``ff.net.2``); outside: ``time_embedding.0/.2`` (``linear_1/2``), ``add_time_embedding.0/.2``
  (``add_embedding.linear_1/2``), ``text_intermediate_proj`` (Kolors' ``encoder_hid_proj``).
- PEFT injected the LoRA (``inject_adapter_in_model``, adapter "default"), so keys end in
  ``lora_A.default.weight`` / ``lora_B.default.weight``; no alpha is saved. The Lightning
  checkpoint is either those tensors alone (1.1.x clears the checkpoint) or wrapped under
  ``"state_dict"`` (possibly with a module prefix such as ``pipe.unet.``); both are read
  (``read``).

SGM (kohya SDXL) names are derived from the same walk: ``input_blocks.0.0`` is ``conv_in``, then
one ``input_blocks.N`` per down-block layer (``.0`` resnet, ``.1`` attention) and per
downsampler (``.0.op``); ``middle_block.0/1/2``; one ``output_blocks.N`` per up-block layer, the
upsampler in the block of the layer before it; resnet parts ``in_layers.2`` (conv1),
``emb_layers.1`` (time_emb_proj), ``out_layers.3`` (conv2), ``skip_connection``; top-level
``time_embed.0/2``, ``label_emb.0.0/2``, ``out.0/2``. This agrees with diffusers' reader
(``diffusers/loaders/lora_conversion_utils.py``, ``_maybe_map_sgm_blocks_to_diffusers`` and
``_convert_unet_lora_key``); the tests load files written here with diffusers itself and compare
every adapted weight. kohya files of SD1.5 use diffusers' names with underscores, which the
table also resolves. kohya text-encoder names (``lora_te[12]_text_model_encoder_layers_N_...``)
need no table.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..families import FAMILIES
from .read import LoraFormatError, _Layer, _Raw


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
    return dict(_table_for(unet_config if unet_config is not None
                           else FAMILIES["sdxl"].unet).diffsynth)


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
