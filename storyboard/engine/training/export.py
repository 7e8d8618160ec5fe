"""The trained LoRA as files: diffusers' format, and a kohya copy for WebUI / ComfyUI.

In: the pipeline whose UNet (and CLIP text encoders, when they train) carries the PEFT adapter,
the model family, a folder and the facts to record. Out: ``lora.safetensors``, written by the
pipeline class's own ``save_lora_weights`` from ``get_peft_model_state_dict``, with each
adapter's ``LoraConfig`` as ``lora_adapter_metadata`` (lora_B is not scaled: the alpha is in
the config); and ``lora-kohya.safetensors``, the same weights through
``storyboard.loras.convert_lora(to="kohya")`` (SGM names, ``.alpha`` tensors). Both carry
``storyboard.*`` metadata (base model, family, token, class word, steps, rank, alpha, picture
count, the job key as the dataset's hash) in the safetensors header, and both are written
atomically.

Names: PEFT's ``lora_A`` / ``lora_B`` under ``unet.``, as diffusers' newer training scripts
(Flux, SD3) save. diffusers 0.42's SDXL DreamBooth script also passes the state dict through
``convert_state_dict_to_diffusers``, which renames to the older ``lora.down`` / ``lora.up``;
diffusers reads both, but storyboard's LoRA reader takes those for the old attention-processor
format and ignores the stored alpha there, so a LoRA with alpha != rank would render at the
wrong strength.

Byte-stable files: safetensors writes its header's metadata in hash-map order, which changes
from one write to the next, and PEFT's config holds sets (whose order changes with
PYTHONHASHSEED). Here the sets become sorted lists and the header is rewritten in a canonical
order (the tensor bytes untouched), so the same weights always give the same file, and a
LoRA's sha256 (part of every panel's job hash) depends on its weights and facts only.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...paths import atomic_write_bytes
from ...training.store import KOHYA_FILE, LORA_FILE  # the names the store reads: one source

ADAPTER = "default"  # the adapter name diffusers' add_adapter gives


def lora_layers(module) -> dict[str, Any]:
    """A module's adapter weights (``<module>.lora_A.weight`` / ``lora_B.weight``; fp32,
    detached, on the CPU). A CLIP text encoder's under the names every LoRA file uses
    (``text_model.encoder.layers...``), also where transformers (5) has dropped ``text_model``
    from its own module names."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
    flat = hasattr(module, "encoder") and not hasattr(module, "text_model")
    return {(f"text_model.{k}" if flat and k.startswith("encoder.") else k):
            v.detach().to("cpu", copy=True) for k, v in state.items()}


def adapter_metadata(module) -> dict[str, Any]:
    """The adapter's ``LoraConfig`` as JSON-ready data, sets as sorted lists."""
    config = module.peft_config[ADAPTER].to_dict()
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.items()}


def save_diffusers(pipe, modules: Mapping[str, Any], path: Path,
                   facts: Mapping[str, str]) -> Path:
    """``modules``: component name (``unet``, ``text_encoder``, ``text_encoder_2``) -> the
    module with the adapter."""
    from safetensors import safe_open

    kwargs = {}
    for name, module in modules.items():
        kwargs[f"{name}_lora_layers"] = lora_layers(module)
        kwargs[f"{name}_lora_adapter_metadata"] = adapter_metadata(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _scratch(path) as work:
        type(pipe).save_lora_weights(work, weight_name=LORA_FILE, **kwargs)
        with safe_open(str(Path(work) / LORA_FILE), "pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            metadata = dict(fh.metadata() or {})
    write_safetensors(path, tensors, {**metadata, **facts})
    return path


def save_kohya(diffusers_file: Path, path: Path, family: str, unet_config: Any,
               facts: Mapping[str, str]) -> Path:
    """The kohya copy of ``diffusers_file``, through storyboard's own converter."""
    from safetensors import safe_open

    from ...loras import convert_lora

    with _scratch(path) as work:
        converted = convert_lora(diffusers_file, Path(work) / KOHYA_FILE, to="kohya",
                                 family=family, unet_config=unet_config)
        with safe_open(str(converted), "pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            metadata = dict(fh.metadata() or {})
    write_safetensors(path, tensors, {**metadata, **facts})
    return path


def _scratch(path: Path):
    """A temporary folder beside ``path``, named as ``paths.TEMPORARY`` expects, so one a kill
    leaves behind is swept like an atomic write's temporary file."""
    return tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def write_safetensors(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """``tensors`` and ``metadata`` as a safetensors file with a canonical header, atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, canonical_header(save(dict(tensors), metadata=dict(metadata))))


def canonical_header(data: bytes) -> bytes:
    """A safetensors file's bytes with its header in one fixed order (metadata sorted by key,
    tensors by offset); the data unchanged."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    metadata = header.pop("__metadata__", None) or {}
    ordered: dict[str, Any] = {}
    if metadata:
        ordered["__metadata__"] = dict(sorted(metadata.items()))
    ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # as safetensors pads: the data stays 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data[8 + size:]

