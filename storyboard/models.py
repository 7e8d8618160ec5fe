"""Find and load the diffusion pipeline a job names.

In: a ``ModelRef`` (from compile) and runtime options (device, dtype, offload, VAE tiling).
Out: a ``LoadedModel``: a diffusers pipeline on its device in its dtype, with its family,
resolved device and dtype recorded, or a ``ModelError`` that says how to get the model.

Every source goes through diffusers' own loaders: ``from_pretrained`` for Hugging Face repos
(with revision and variant; ``HF_HUB_OFFLINE`` and the Hugging Face cache are respected), local
diffusers folders and the built-in tiny models; ``from_single_file`` for one `.safetensors` /
`.ckpt` checkpoint (SD1.5 and SDXL). torch and diffusers are imported here, never on the
validate/plan path.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compile import ModelRef, checkpoint_family, checkpoint_keys
from .errors import UserError

# Library chatter (torchvision notices, deprecations, loading bars) is not for storyboard's
# users; an explicit setting in the environment still wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch.compile's caches live with storyboard's, so compiling is paid once per machine, not
# once per build (and survives /tmp being cleaned).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(os.environ.get(
    "STORYBOARD_CACHE", Path.home() / ".cache" / "storyboard")).expanduser() / "inductor"))
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")

PIPELINES = {
    "sdxl": "StableDiffusionXLPipeline",
    "kolors": "KolorsPipeline",
    "sd15": "StableDiffusionPipeline",
}
FAMILY_OF_PIPELINE = {v: k for k, v in PIPELINES.items()}
# Text-encoder token limits, for warnings about prompts that get cut.
TOKEN_LIMITS = {"sdxl": 77, "sd15": 77, "kolors": 256}
# fp8 loads in bf16; the UNet's linear layers are then quantized (see apply_speedups).
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp8": "bfloat16"}
# Where a single-file checkpoint's pipeline configs come from when the story names none.
SINGLE_FILE_CONFIGS = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
                       "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


class ModelError(UserError):
    """The model cannot be found or loaded; the message says what to do about it."""


@dataclass
class RuntimeOptions:
    """How to run, independent of the story: these never change what a panel should look like
    beyond the device's arithmetic, so they are not part of the job hash."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str | None = None  # overrides the story's dtype: fp16 | bf16 | fp32
    offload: bool = False  # model CPU offload, for GPUs with little memory
    vae_tiling: bool = False  # decode large images in tiles
    progress: bool = True  # diffusers' step progress bars
    # Speed-ups (see speedups_for). fuse: LoRAs merged into the weights for each batch, and on
    # CUDA the cross-attention K/V cache; compile: torch.compile of the UNet and VAE decoder on
    # CUDA, with channels_last and fused QKV projections (paid once per machine and shape, cached
    # on disk, then about 12 s per new process): True, False, or "auto" (when the render is
    # large enough to pay that back, see compile_pays), decided at a model's first render (its
    # speed-ups are applied once); tune: coordinate-descent tuning of the compiled UNet (see
    # tuning.py), None: the story's `render.tune` (default on).
    fuse: bool = True
    compile: bool | str = "auto"
    tune: bool | None = None

    def __post_init__(self) -> None:
        if self.compile not in (True, False, "auto"):  # "false" must not read as true
            raise ValueError(f"compile must be True, False or 'auto', not {self.compile!r}")


@dataclass
class LoadedModel:
    pipe: Any
    family: str
    device: str
    dtype: str  # fp16 | bf16 | fp32 | fp8
    ref: ModelRef
    speedups: list[str] | None = None  # None until apply_speedups has run
    cross_kv: Any = None  # crosskv.CrossKV once "cross_kv_once" is applied
    renderer: Any = None  # render.Renderer: adapters loaded and merged into this model

    @property
    def token_limit(self) -> int:
        return TOKEN_LIMITS[self.family]


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


def resolve_dtype(story_dtype: str, override: str | None, device: str) -> str:
    """fp16 on CUDA and MPS, fp32 on CPU, unless the story or the command line says otherwise."""
    choice = override or story_dtype
    if choice == "auto":
        return "fp32" if device == "cpu" else "fp16"
    return choice


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
        return _family_from_checkpoint(Path(ref.ref))
    family = FAMILY_OF_PIPELINE.get((index or {}).get("_class_name"))
    if family is None:
        name = (index or {}).get("_class_name", "unknown")
        raise ModelError(
            f"cannot tell the pipeline family of {ref.ref} (its model_index.json names "
            f"{name!r}); set `model.family` to one of {', '.join(PIPELINES)}")
    return family


def _hub_model_index(ref: ModelRef) -> dict | None:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(ref.ref, "model_index.json", revision=ref.revision)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes the same advice
        raise _missing_repo(ref, exc) from None
    return json.loads(Path(path).read_text("utf-8"))


def _family_from_checkpoint(path: Path) -> str:
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"cannot tell the family of {path.name}; set `model.family` "
                         "(sdxl or sd15)")
    if checkpoint_keys(path) is None:
        raise ModelError(f"{path}: not a readable safetensors checkpoint")
    family = checkpoint_family(path)
    if family is None:
        raise ModelError(f"{path.name} is not an SD1.5 or SDXL checkpoint (its keys match "
                         "neither); Kolors loads only from a diffusers folder or repo")
    return family


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
    import diffusers
    import torch

    from . import tiny

    # 1. Where the weights are.
    folder: Path | None = None
    if ref.kind == "builtin":
        with _quiet_loading():
            folder = tiny.builtin_folder(ref.ref)
    elif ref.kind == "folder":
        folder = Path(ref.ref)
        if not (folder / "model_index.json").is_file():
            raise ModelError(f"{folder} is not a diffusers model folder (no model_index.json)")
    elif ref.kind == "file" and not Path(ref.ref).is_file():
        raise ModelError(f"checkpoint not found: {ref.ref}")

    # 2. Which pipeline class, device and dtype.
    family = detect_family(ref, folder)
    pipeline_cls = getattr(diffusers, PIPELINES[family])
    device = resolve_device(options.device)
    dtype = resolve_dtype(ref.dtype, options.dtype, device)
    torch_dtype = getattr(torch, DTYPES[dtype])
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
    with _quiet_loading():
        try:
            if ref.kind == "file":
                # Without `config`, diffusers guesses the model type from key names and fetches
                # that repo's configs; naming them from the family is both offline-friendly
                # and right for unusual files.
                config = ref.config or SINGLE_FILE_CONFIGS[family]
                try:
                    pipe = pipeline_cls.from_single_file(ref.ref, config=config, **kwargs)
                except OSError as exc:
                    raise _missing_configs(ref, config, exc) from None
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
    return LoadedModel(pipe=pipe, family=family, device=device, dtype=dtype, ref=ref)


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
    with _quiet_loading():
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


def _fp8_layer(module: Any, fqn: str) -> bool:
    import torch

    # torch._scaled_mm needs both dimensions to be multiples of 16. The time and added-condition
    # embeddings see one row per image: nothing to gain, and cuBLAS refuses some of their FP8
    # shapes (Kolors' 5632-wide add_embedding, on an H200). LoRA factors (merged into the base
    # weights by then, and disabled) stay as they are.
    return (isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0
            and module.out_features % 16 == 0 and "lora_" not in fqn
            and not fqn.startswith(("time_embedding", "add_embedding")))


# A new `storyboard build` process with a warm compile cache reached steady speed 12.1-12.4 s
# later than one that does not compile, and a compiled step then saves about 6-7 ms per panel
# (28.5-28.8 ms tuned, 8 panels per call, against about 36 ms eager): compiling pays back from
# about 2000 panel-steps per batch shape, 40 panels of 50 steps (cold_start_* in
# bench/results/nvidia-h200-2026-11-21-{sdxl,kolors}.json). Each shape is a graph of its own.
COMPILE_PAYS_FROM = 2000  # panel-steps per distinct batch shape


def compile_pays(work: dict[tuple, int]) -> bool:
    """Whether compiling pays back in one render: ``work`` maps each batch shape the UNet will
    see to the panel-steps rendered in it."""
    return bool(work) and sum(work.values()) >= COMPILE_PAYS_FROM * len(work)


def speedups_for(model: LoadedModel, options: RuntimeOptions, *, adapters: bool,
                 work: dict[tuple, int] | None = None) -> list[str]:
    """Which speed-ups suit this model on this device (see ``apply_speedups``).

    Measured on an H200 (bench/levers.py, bench/levers3.py): channels_last and fused QKV
    projections alone do not pay in eager mode (so they come only with torch.compile), but with
    torch.compile they take an SDXL UNet step from 44 to 29 ms per panel in batches of 8; a UNet
    with a LoRA merged into its weights compiles to the same speed (29.2 ms, against 39.8 ms with
    the adapter live and eager). Fused projections replace the layers LoRA adapters attach to,
    so they are left out when a story has LoRAs. Cross-attention K/V once per batch (crosskv.py) saves 0.8% (SDXL) to 1.9%
    (Kolors) of a compiled step, and more eager (bench/levers5.py). Coordinate-descent tuning
    (tuning.py) takes a compiled step 2% lower, for about 100 s more on a shape's first compile
    on a machine. Only on CUDA, where they were measured; ``--no-fuse`` / ``--no-compile`` /
    ``--no-tune`` and the story's ``render:`` section turn them off. ``compile="auto"``
    compiles only a render whose ``work`` (see ``compile_pays``) pays the compile back.
    """
    fast = model.device.startswith("cuda") and options.fuse
    # Offloading moves weights in and out of the GPU around every call: not measured with
    # torch.compile, and live adapters there must stay reachable for set_adapters.
    if options.compile == "auto":
        # FP8 was measured compiled only: its quantisation kernels need the compiler's fusion.
        wanted = model.dtype == "fp8" or compile_pays(work or {})
    else:
        wanted = options.compile
    compiled = fast and wanted and not options.offload
    names = []
    if compiled:
        # Eager, channels_last made a step 7% slower (36.3 to 38.8 ms per panel at 8 panels)
        # and fused projections gained nothing: both pay only through the compiler.
        names += ["channels_last"] + ([] if adapters else ["fused_qkv"])
    if model.dtype == "fp8":  # a precision the story chose, not a speed switch
        names.append("fp8")
    if compiled:
        # Tuning was not measured with FP8, whose own inductor settings (torchao's) that
        # include it did not finish compiling in 5 minutes.
        tune = options.tune is not False and model.dtype != "fp8"
        names += ["tuned_kernels"] * tune + ["torch.compile", "vae.compile"]
    # Its cache is filled by calling the UNet's layers directly, which offloading's hooks on
    # the UNet as a whole would not see.
    if fast and not options.offload:
        names.append("cross_kv_once")
    return names


def apply_speedups(model: LoadedModel, names: list[str], *, backend: str = "inductor") -> list[str]:
    """Apply the speed-ups ``names`` (from ``speedups_for``) once per loaded model; returns what
    is in effect. ``backend`` is torch.compile's: tests use "aot_eager" on CPU, which traces the
    same graphs without generating kernels."""
    if model.speedups is not None:
        return model.speedups
    model.speedups = []  # filled as each one takes effect, so a failure leaves it truthful
    if not names:
        return model.speedups
    import torch

    unet = model.pipe.unet
    if "channels_last" in names:
        unet.to(memory_format=torch.channels_last)
        model.speedups.append("channels_last")
    if "fused_qkv" in names:
        unet.fuse_qkv_projections()
        model.speedups.append("fused_qkv")
    if "fp8" in names:
        # After fusing (fusion concatenates plain weights) and before compiling. torchao's own
        # inductor settings are left off: they made the SDXL UNet compile for over 5 minutes.
        with _quiet_loading():
            from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, PerRow,
                                              quantize_)
        quantize_(unet, Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=False), filter_fn=_fp8_layer)
        model.speedups.append("fp8")
    compile_options = None
    if "tuned_kernels" in names and "torch.compile" in names and backend == "inductor":
        from .tuning import COMPILE_OPTIONS, warm_cache_keeps_tuning

        # Only where a warm cache keeps the tuning: otherwise every build would tune again.
        if warm_cache_keeps_tuning():
            compile_options = COMPILE_OPTIONS
            model.speedups.append("tuned_kernels")
    if "torch.compile" in names:
        # Static shapes: each batch shape gets its own graph, cached on disk like the first;
        # dynamic ones would be slower, and recorded shape profiles would make the next
        # process compile a dynamic graph from scratch.
        model.pipe.unet = torch.compile(unet, backend=backend, options=compile_options,
                                        dynamic=False)
        model.speedups.append("torch.compile")
    if "vae.compile" in names:
        # The VAE decodes every panel once: a few percent of a panel, compiled the same way.
        vae = model.pipe.vae
        vae.to(memory_format=torch.channels_last)
        vae.decode = torch.compile(vae.decode, backend=backend, dynamic=False)
        model.speedups.append("vae.compile")
    if "cross_kv_once" in names:
        # Last: its hook goes on the module the pipeline calls, compiled or not.
        from .crosskv import install

        model.cross_kv = install(getattr(unet, "_orig_mod", unet), model.pipe.unet)
        model.speedups.append("cross_kv_once")
    return model.speedups


def unfuse_qkv(model: LoadedModel) -> None:
    """Undo fused QKV projections (before a LoRA is loaded: adapters attach to to_q/to_k/to_v)."""
    if model.speedups and "fused_qkv" in model.speedups:
        getattr(model.pipe.unet, "_orig_mod", model.pipe.unet).unfuse_qkv_projections()
        model.speedups.remove("fused_qkv")
        if model.cross_kv is not None:  # unfusing put the old processors back
            model.cross_kv.wrap()


class _quiet_loading:
    """Keep transformers/diffusers chatter (torchvision notices, deprecations) off the user's
    terminal while loading; real problems still raise."""

    def __enter__(self):
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging

        dlogging.disable_progress_bar()
        tlogging.disable_progress_bar()
        self._levels = {}
        for name in ("transformers", "diffusers"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        return False
