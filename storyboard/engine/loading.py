"""Find and load the diffusion pipeline a job names.

In: a ``ModelRef`` (from ``plan``) and ``RuntimeOptions`` (device, dtype, offload, VAE tiling).
Out: a frozen ``LoadedModel``: a diffusers pipeline on its device in its dtype, with its family,
resolved device and dtype recorded (and, on a GPU, how the warm-up that ran while the libraries
imported went: ``warmup``, and which components were built from weights read onto the GPU
meanwhile: ``prefetch``); or a ``ModelError`` that says how to get the model.

Every source goes through diffusers' own loaders: ``from_pretrained`` for Hugging Face repos
(with revision and variant; ``HF_HUB_OFFLINE`` and the Hugging Face cache are respected), local
diffusers folders and the built-in tiny models (on a GPU, given the components ``prefetch``
built from weights it read while the libraries imported, the same modules those loaders
make); ``from_single_file`` for one `.safetensors` / `.ckpt` checkpoint (SD1.5 and SDXL).
Which pipeline class and which single-file configs: from ``families``. A single file is checked
first (``check_checkpoint``: ``weightfiles``, and the globals a pickle asks for); a file
diffusers still cannot read is called unreadable, with the reason, never blamed on missing
configs.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import weightfiles
from ..errors import UserError
from ..families import (BUILTINS, FAMILIES, FAMILY_NAMES, family_of_checkpoint_keys,
                        family_of_pipeline)
from ..options import RuntimeOptions, resolve_dtype
from ..paths import builtin_model_folder
from ..plan.jobs import ModelRef
from .environment import prepare, quiet_loading
from .prefetch import Prefetch, PrefetchResult
from .warmup import Warmup, WarmupResult

# fp8 loads in bf16; the UNet's linear layers are then quantized (engine/speed/apply.py).
TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp8": "bfloat16"}


class ModelError(UserError):
    """The model cannot be found or loaded; the message says what to do about it."""


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline and the facts of how it was loaded. Frozen: what changes as a model renders
    (adapters, merged weights, compiled graphs) lives in the engine's ``ModelState``."""

    pipe: Any
    family: str
    device: str
    dtype: str  # fp16 | bf16 | fp32 | fp8
    ref: ModelRef
    offload: bool = False
    warmup: WarmupResult | None = None  # the GPU warm-up during loading (CUDA only)
    prefetch: PrefetchResult | None = None  # weights read while importing (engine/prefetch.py)


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {requested!r} was asked for, but torch sees no CUDA GPU "
                            f"(torch {torch.__version__})")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def detect_family(ref: ModelRef, folder: Path | None) -> str:
    if ref.family:
        return ref.family
    index = None
    if folder is not None:
        try:
            index = json.loads((folder / "model_index.json").read_text("utf-8"))
        except (OSError, ValueError):
            index = None
    elif ref.kind == "repo":
        index = _hub_model_index(ref)
    elif ref.kind == "file":
        return family_from_checkpoint(Path(ref.ref))
    family = family_of_pipeline((index or {}).get("_class_name"))
    if family is None:
        name = (index or {}).get("_class_name", "unknown")
        raise ModelError(
            f"cannot tell the pipeline family of {ref.ref} (its model_index.json names "
            f"{name!r}); set `model.family` to one of {', '.join(FAMILY_NAMES)}")
    return family


def _hub_model_index(ref: ModelRef) -> dict | None:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(ref.ref, "model_index.json", revision=ref.revision)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes the same advice
        raise _missing_repo(ref, exc) from None
    return json.loads(Path(path).read_text("utf-8"))


def family_from_checkpoint(path: Path) -> str:
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"cannot tell the family of {path.name}; set `model.family` "
                         "(sdxl or sd15)")
    header = check_checkpoint(path)
    family = family_of_checkpoint_keys([k for k in header or {} if k != "__metadata__"])
    if family is None:
        raise ModelError(f"{path.name} is not an SD1.5 or SDXL checkpoint (its keys match "
                         "neither); Kolors loads only from a diffusers folder or repo")
    return family


def check_checkpoint(path: Path) -> dict | None:
    """Refuse a single-file checkpoint diffusers should not be given (``weightfiles``: not a
    regular file, a broken safetensors header, a legacy pickle or a zip bomb; a pickle asking
    for globals the weights-only loader refuses). Its safetensors header, or None."""
    try:
        header = weightfiles.check(path)
    except weightfiles.WeightFileError as exc:
        if exc.problem == "no such file":
            raise ModelError(f"checkpoint not found: {path}") from None
        raise ModelError(f"checkpoint {path} is unreadable: {exc.problem}") from None
    if header is not None:
        return header
    import torch

    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch 2.5+
    try:
        unsafe = scan(str(path)) if scan else []
    except Exception as exc:  # noqa: BLE001 - a damaged pickle
        raise ModelError(f"checkpoint {path} is unreadable: {_first_line(exc)}") from None
    if unsafe:
        raise ModelError(f"checkpoint {path}: {weightfiles.refused_global(sorted(unsafe)[0])}"
                         f"{f' (and {len(unsafe) - 1} more)' if len(unsafe) > 1 else ''}; "
                         "re-save its tensors where you trust it, preferably as .safetensors")
    return None


def _unreadable(exc: BaseException) -> str | None:
    """Why diffusers could not read a local checkpoint's weights (it wraps the reason in an
    OSError), or None when ``exc`` is about something else (the configs)."""
    if "Unable to load weights from checkpoint file" not in str(exc) and "git-lfs" not in str(exc):
        return None
    causes = []
    while exc is not None and len(causes) < 20:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    for cause in reversed(causes):
        if type(cause).__name__ == "UnpicklingError":
            return weightfiles.pickle_refusal(str(cause))
    deepest = next((c for c in reversed(causes) if not isinstance(c, UnicodeDecodeError)),
                   causes[0])
    return _first_line(deepest)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _missing_repo(ref: ModelRef, exc: BaseException) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    why = type(exc).__name__
    if offline:
        advice = (f"HF_HUB_OFFLINE is set and {ref.ref} is not in the Hugging Face cache; on a "
                  f"machine with network run `hf download {ref.ref}`"
                  + (f" --revision {ref.revision}" if ref.revision not in (None, "main") else "")
                  + ", or unset HF_HUB_OFFLINE")
    else:
        advice = ("check the repo id and revision, that you are logged in (`hf auth login`) if "
                  "it is gated, and your network; or download it and use `model: {path: ./...}`")
    return ModelError(f"model {ref.ref} could not be loaded ({why}): {advice}")


def _missing_configs(ref: ModelRef, config: str, exc: BaseException) -> ModelError:
    return ModelError(
        f"cannot load {Path(ref.ref).name}: a single-file checkpoint needs its pipeline's "
        f"configs (model layout, tokenizers, scheduler) from {config}, and they are not "
        f"available here ({type(exc).__name__}); on a machine with network run "
        f"`hf download {config} --include '*.json' '*.txt'`, or set `model.config` to a local "
        "diffusers folder of the same architecture")


def load_model(ref: ModelRef, options: RuntimeOptions | None = None) -> LoadedModel:
    """Load the pipeline ``ref`` names, on the requested device and dtype."""
    options = options or RuntimeOptions()
    prepare()
    # While diffusers and transformers import, the GPU's libraries start on one thread
    # (warmup) and a local folder's weights are read onto the GPU on another (prefetch).
    device = resolve_device(options.device)
    dtype = resolve_dtype(ref.dtype, options.dtype, device)
    warmup = Warmup.start(device, dtype)
    prefetch = Prefetch.start(_local_folder(ref), device, ref.variant, offload=options.offload)
    try:
        model = _load(ref, options, device, dtype, prefetch)
    finally:
        warmed = warmup.join() if warmup is not None else None
        if prefetch is not None:
            prefetch.close()  # a load that failed first leaves no tensors behind
    return replace(model, warmup=warmed)


def _local_folder(ref: ModelRef) -> Path | None:
    """The diffusers folder ``ref`` loads from when it is on this machine already, else None."""
    if ref.kind == "folder":
        folder = Path(ref.ref)
    elif ref.kind == "builtin" and ref.ref in BUILTINS:
        folder = builtin_model_folder(ref.ref, BUILTINS[ref.ref].recipe)
    else:
        return None
    return folder if (folder / "model_index.json").is_file() else None


def _load(ref: ModelRef, options: RuntimeOptions, device: str, dtype: str,
          prefetch: Prefetch | None = None) -> LoadedModel:
    import diffusers
    import torch
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from . import builtin

    # 1. Where the weights are.
    folder: Path | None = None
    if ref.kind == "builtin":
        with quiet_loading():
            folder = builtin.builtin_folder(ref.ref)
    elif ref.kind == "folder":
        folder = Path(ref.ref)
        if not (folder / "model_index.json").is_file():
            raise ModelError(f"{folder} is not a diffusers model folder (no model_index.json)")
    elif ref.kind == "file":
        check_checkpoint(Path(ref.ref))

    # 2. Which pipeline class, and the dtype's torch name.
    family = detect_family(ref, folder)
    pipeline_cls = getattr(diffusers, FAMILIES[family].pipeline)
    torch_dtype = getattr(torch, TORCH_DTYPES[dtype])
    if dtype == "fp8":
        problem = fp8_problem(device, options)
        if problem:
            raise ModelError(f"dtype fp8 {problem}; use fp16 or bf16 instead")

    # 3. Load through diffusers' own loaders.
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if ref.variant:
        kwargs["variant"] = ref.variant
    if device == "cuda" and not options.offload and ref.kind != "file":
        # Straight from the safetensors files onto the GPU, without a stop in CPU memory.
        kwargs["device_map"] = "cuda"
    prefetched = None
    if prefetch is not None and folder is not None:
        # Only the pipeline's own component arguments, and none this load sets itself.
        accepted = set(inspect.signature(pipeline_cls.__init__).parameters) - {"self", *kwargs}
        with quiet_loading():
            components, prefetched = prefetch.components(torch_dtype, accepted)
        kwargs.update(components)  # given components: diffusers loads only the others
    with quiet_loading():
        try:
            if ref.kind == "file":
                # Without `config`, diffusers guesses the model type from key names and fetches
                # that repo's configs; naming them from the family is both offline-friendly
                # and right for unusual files.
                config = ref.config or FAMILIES[family].single_file_config
                try:
                    pipe = pipeline_cls.from_single_file(ref.ref, config=config, **kwargs)
                except OSError as exc:
                    reason = _unreadable(exc)
                    if reason is None:
                        raise _missing_configs(ref, config, exc) from None
                    raise ModelError(f"checkpoint {ref.ref} is unreadable: {reason}") from None
                except SingleFileComponentError as exc:
                    raise ModelError(f"checkpoint {ref.ref} is not a whole {family} pipeline: "
                                     f"{_first_line(exc)}") from None
            elif ref.kind == "repo":
                pipe = pipeline_cls.from_pretrained(ref.ref, revision=ref.revision, **kwargs)
            else:
                pipe = pipeline_cls.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError) as exc:
            if ref.kind == "repo":
                raise _missing_repo(ref, exc) from None
            raise ModelError(f"cannot load {ref.ref}: {exc}") from None

    # 4. Place it.
    if options.offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=not options.progress, leave=False)
    return LoadedModel(pipe=pipe, family=family, device=device, dtype=dtype, ref=ref,
                       offload=options.offload and device.startswith("cuda"),
                       prefetch=prefetched)


def fp8_problem(device: str, options: RuntimeOptions) -> str | None:
    """Why the opt-in FP8 path cannot run here, or None."""
    import torch

    if not device.startswith("cuda"):
        return (f"needs an NVIDIA GPU with FP8 matrix units (compute capability 8.9+: Ada, "
                f"Hopper or newer); this run is on {device}")
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9):
        return (f"needs compute capability 8.9+ (Ada, Hopper or newer); "
                f"{torch.cuda.get_device_name(torch.device(device))} has {major}.{minor}")
    if options.offload:
        return "does not combine with --offload"
    with quiet_loading():
        try:
            quantization = importlib.import_module("torchao.quantization")
            for name in ("Float8DynamicActivationFloat8WeightConfig", "PerRow", "quantize_"):
                getattr(quantization, name)
        except ImportError:
            return "needs torchao: pip install 'storyboard[fp8]' (or pip install torchao)"
        except Exception as exc:  # noqa: BLE001 - a torchao built for another torch, too old...
            return (f"needs a torchao that works with this torch ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); pip install -U "
                    "torchao")
    return None

