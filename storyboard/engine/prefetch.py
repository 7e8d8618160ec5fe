"""Read a local model's weights onto the GPU on a thread while diffusers and transformers import.

In: a local diffusers folder (``model: {path: ...}``, or a built-in model already built), the
device, and the variant the load asks for (``Prefetch.start``, straight after torch is
imported). Out, after the imports: ``Prefetch.components(dtype)``, each component whose weights
were read, built from its ``model_index.json`` class and its config with the tensors put in
place, for ``from_pretrained`` to take as a given component (diffusers then loads only the
rest: tokenizers, scheduler, anything not read here); and a ``PrefetchResult`` saying which
components were built, how many bytes the thread read in how long, and why any was not.

Why: a new process loading a model spends seconds importing diffusers and transformers (pure
Python, holding the interpreter's lock) and then seconds copying the weights from the page cache
to the GPU (1.4 s for SDXL's 6.9 GB, 3.2-3.4 s for Kolors' 17.8 GB on an H200), which need the
lock only now and then. Read on a thread from the moment torch has imported, the weights are
on the GPU before the imports end. How they are read matters (round 6 of issue 17,
``bench/results/nvidia-h200-2026-12-02-e2e-round6.json``): tensor by tensor through
safetensors' ``safe_open``, the thread handed the lock back and forth thousands of times, took
6.8-7.5 s for SDXL and made its load slower than none (10.3 against 9.5 s); ``read_file`` copies
a file in 128 MB pieces, and the thread took 1.9-2.8 s (SDXL 8 panels, loads 6.5 and 9.5 s
against 9.2 and 8.6 s without: about 0.9 s saved on average, within a process's noise).

What it will not guess, falling back to the library's own loading from the files for that
component (so a load never fails or differs because of this module): a name that is not one of
the pipeline's component arguments, or that the load sets itself (a ``model_index.json`` entry
called ``trust_remote_code`` never becomes that argument); anything but one safetensors file
per component, or a sharded one with its index (with a variant: only the unsharded
``<name>.<variant>.safetensors``; a whole file beside a shard index neither, since diffusers and
transformers look for them in opposite orders); Python files in the component's folder (custom
code: diffusers' rules); a file whose header ``weightfiles`` refuses, or of a dtype it does not
know; a class that is not a diffusers ``ModelMixin`` or a transformers ``PreTrainedModel``, or
that keeps modules in float32; keys that do not match the model's exactly (a legacy layout the
library would convert), or a tensor of another kind or dtype than the model made; too little
free memory on the device. ``STORYBOARD_PREFETCH=0`` turns it off,
``=1`` turns it on for any device (CUDA only by default: elsewhere there are no copies to hide).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from .. import weightfiles

_STEMS = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' weight file names
_INDEX_LIMIT = 16 * 1024 * 1024  # a shard index is a few KB; model_index.json less
_HEADROOM = 1 << 30  # bytes left free on the device beside the weights
_CHUNK = 128 << 20  # bytes a copy from the mapped file: the reading thread's lock hand-offs
# safetensors' dtype names -> torch's; a file with any other is left to the library.
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class PrefetchResult:
    """What the prefetch did: components built from its tensors, and the rest with reasons."""

    seconds: float  # the reading thread, from start to its last tensor
    bytes: int
    built: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)


def mode() -> str:
    """``auto`` (CUDA only), ``on`` or ``off``, from ``STORYBOARD_PREFETCH``."""
    value = os.environ.get("STORYBOARD_PREFETCH", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    if value in ("1", "true", "yes", "on"):
        return "on"
    return "auto"


@dataclass(frozen=True)
class ComponentFiles:
    """One component to read: its ``model_index.json`` class and its weight files."""

    library: str
    class_name: str
    paths: tuple[Path, ...]


def weight_files(folder: Path, variant: str | None = None) -> tuple[dict[str, ComponentFiles],
                                                                     dict[str, str]]:
    """The safetensors files each component of the diffusers folder loads from, as the library
    would choose them, and the components left to the library with the reason."""
    index = weightfiles.bounded_json(folder / "model_index.json", _INDEX_LIMIT, "model index")
    files: dict[str, ComponentFiles] = {}
    skipped: dict[str, str] = {}
    if not isinstance(index, dict):
        return files, {"*": "model_index.json is not an object"}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 \
                or entry[0] is None:
            continue
        sub = folder / name
        if not name.isidentifier() or not sub.is_dir():  # never ".." or a path
            continue
        library, class_name = entry
        if not (isinstance(library, str) and library.isidentifier()
                and isinstance(class_name, str) and class_name.isidentifier()):
            skipped[name] = "an unusual class in model_index.json"
            continue
        if any(sub.glob("*.py")):  # custom code: diffusers' own rules decide what to do
            skipped[name] = "Python files in its folder"
            continue
        found = [(stem, _component_files(sub, stem, variant)) for stem in _STEMS]
        found = [(stem, f) for stem, f in found if f is not None]
        if len(found) == 1 and isinstance(found[0][1], list):
            files[name] = ComponentFiles(library, class_name, tuple(found[0][1]))
        elif any(isinstance(f, str) for _, f in found):
            skipped[name] = next(f for _, f in found if isinstance(f, str))
        elif found:
            skipped[name] = "weights under two names"
    return files, skipped


def _component_files(sub: Path, stem: str, variant: str | None) -> list[Path] | str | None:
    """One component's files under ``stem``: a list, a reason to leave it alone, or None.
    Where the libraries' choice depends on their own order of looking (a whole file and a
    shard index side by side, a sharded variant: diffusers looks for the index first,
    transformers for the file), the component is left to them."""
    single = sub / (f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors")
    index = sub / f"{stem}.safetensors.index.json"
    indexes = list(sub.glob(f"{stem}*.index*.json"))
    if single.exists() and not indexes:
        return [single]
    if single.exists() or (indexes and variant):
        return "weights both whole and sharded" if single.exists() else "a sharded variant"
    if not index.exists():
        others = list(sub.glob(f"{stem}*.safetensors*"))
        return "weights not in one safetensors file" if others or indexes else None
    try:
        shards = weightfiles.bounded_json(index, _INDEX_LIMIT, "shard index").get("weight_map")
    except (weightfiles.WeightFileError, AttributeError):
        return "unreadable shard index"
    if not isinstance(shards, dict) or not shards:
        return "unreadable shard index"
    if not all(isinstance(n, str) and Path(n).name == n and n.endswith(".safetensors")
               for n in shards.values()):
        return "a shard index naming other than safetensors files in its folder"
    return [sub / n for n in sorted(set(shards.values()))]


class Prefetch:
    """The reading thread: ``start`` it before importing diffusers, then ``components``."""

    def __init__(self, folder: Path, device: str, files: dict[str, ComponentFiles],
                 skipped: dict[str, str]) -> None:
        self.folder = folder
        self.device = device
        self._files = files
        self._skipped = dict(skipped)
        self._tensors: dict[str, dict[str, Any]] = {}
        self._bytes = 0
        self._seconds = 0.0
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storyboard-prefetch",
                                        daemon=True)

    @classmethod
    def start(cls, folder: Path | None, device: str, variant: str | None = None, *,
              offload: bool = False) -> Prefetch | None:
        """A started prefetch of ``folder``'s weights onto ``device``, or None (no local
        folder, offloading, turned off, or not CUDA in ``auto``)."""
        chosen = mode()
        if folder is None or offload or chosen == "off" or (
                chosen == "auto" and not device.startswith("cuda")):
            return None
        try:
            files, skipped = weight_files(folder, variant)
        except Exception:  # noqa: BLE001 - the library's loading says what is wrong with it
            return None
        if not files:
            return None
        prefetch = cls(folder, device, files, skipped)
        prefetch._thread.start()
        return prefetch

    def _run(self) -> None:
        import torch

        t0 = time.perf_counter()
        try:
            sizes: dict[str, int] = {}
            for name, component in self._files.items():
                try:
                    sizes[name] = sum(p.stat().st_size for p in component.paths)
                except OSError as exc:  # a shard missing: that component only
                    self._skipped[name] = _why(exc)
            if self.device.startswith("cuda") and sizes:
                # The weights, and the largest component twice while it is built.
                free, _ = torch.cuda.mem_get_info(torch.device(self.device))
                if sum(sizes.values()) + max(sizes.values()) + _HEADROOM > free:
                    self._skipped.update(dict.fromkeys(sizes, "too little free memory"))
                    return
            for name in sizes:
                if self._cancel.is_set():
                    return
                try:
                    tensors: dict[str, Any] = {}
                    for path in self._files[name].paths:
                        tensors.update(read_file(path, self.device, self._cancel))
                    self._tensors[name] = tensors
                    self._bytes += sizes[name]
                except Exception as exc:  # noqa: BLE001 - the library reads it instead
                    self._skipped[name] = _why(exc)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(torch.device(self.device))
        except Exception as exc:  # noqa: BLE001 - never fails a load: the library reads them
            self._tensors.clear()
            self._skipped.update(dict.fromkeys(self._files, _why(exc)))
        finally:
            self._seconds = time.perf_counter() - t0

    def components(self, torch_dtype: Any, accepted: Collection[str]) -> tuple[
            dict[str, Any], PrefetchResult]:
        """Wait for the thread, then build each component it read whose name is in
        ``accepted`` (the pipeline's own component arguments that nothing else sets: never a
        keyword such as ``trust_remote_code`` that a folder's model_index.json names)."""
        self._thread.join()
        built: dict[str, Any] = {}
        for name in list(self._tensors):
            component = self._files[name]
            tensors = self._tensors.pop(name)
            try:
                if name not in accepted:
                    raise _NotBuilt("not one of the pipeline's components")
                built[name] = build_component(self.folder / name, component.library,
                                              component.class_name, tensors, torch_dtype,
                                              self.device)
            except _NotBuilt as exc:
                self._skipped[name] = str(exc)
            except Exception as exc:  # noqa: BLE001 - the library loads it from its files
                self._skipped[name] = _why(exc)
            del tensors
        result = PrefetchResult(seconds=round(self._seconds, 3), bytes=self._bytes,
                                built=tuple(sorted(built)), skipped=dict(sorted(
                                    self._skipped.items())))
        return built, result

    def close(self) -> None:
        """Stop the thread at its next piece, wait for it, drop what nothing took."""
        self._cancel.set()
        self._thread.join()
        self._tensors.clear()


class _NotBuilt(Exception):
    """A component this module leaves to the library (the reason is the message)."""


def build_component(sub: Path, library: str, class_name: str, tensors: dict[str, Any],
                    torch_dtype: Any, device: str) -> Any:
    """The component class ``library.class_name`` built from its config in ``sub`` with
    ``tensors`` as its weights, as that library's ``from_pretrained`` builds it: initialised
    in ``torch_dtype`` without weights, then every parameter and buffer of the checkpoint put
    in place (cast to ``torch_dtype``), nothing missing and nothing left over, in eval mode.
    ``tensors`` is emptied as it is used."""
    import diffusers
    import torch
    import transformers
    from accelerate import init_empty_weights

    cls = _component_class(library, class_name)
    _refuse_float32_modules(cls)
    if isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin):
        config = cls.load_config(str(sub))
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)  # buffers made at init, as diffusers makes them
        try:
            with init_empty_weights():
                model = cls.from_config(config)
        finally:
            torch.set_default_dtype(previous)
    elif isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        config = cls.config_class.from_pretrained(str(sub))
        with init_empty_weights():
            model = cls._from_config(config, dtype=torch_dtype)
    else:
        raise _NotBuilt(f"{class_name} is not a diffusers or transformers model")
    _refuse_float32_modules(model)  # transformers gathers them from sub-models at init
    # Floating tensors are cast to the load's dtype, as both libraries cast them; where the
    # model made a tensor of another kind or dtype (an integer table stored as floats, a
    # float32 buffer), the libraries' rules differ, and they are left to decide.
    expected = {key: value.dtype for key, value in model.state_dict().items()}
    # Each tensor copied into an allocation of its own, as the libraries allocate them: a view
    # into the file's buffer can sit at any byte offset, and kernels choose their code by
    # alignment (an unaligned copy of the same weights rendered different bits on the CPU).
    cast = {}
    for key in list(tensors):
        value = tensors.pop(key)
        want = torch_dtype if value.is_floating_point() else value.dtype
        if key in expected and expected[key] != want:
            raise _NotBuilt(f"{key} is {str(value.dtype).removeprefix('torch.')} in the file "
                            f"and {str(expected[key]).removeprefix('torch.')} in the model")
        cast[key] = value.to(want, copy=True)
        del value
    try:
        model.load_state_dict(cast, strict=True, assign=True)
    except RuntimeError as exc:  # missing or unexpected keys, other shapes
        raise _NotBuilt(f"keys do not match {class_name}: {_why(exc)}") from None
    del cast
    # Buffers made at init and not saved (position ids, rotary tables) are real but on the CPU.
    torch.nn.Module.to(model, device=torch.device(device))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise _NotBuilt(f"{len(left)} tensors not in the checkpoint (first {left[0]})")
    if isinstance(model, diffusers.ModelMixin):  # where it came from, as from_pretrained says
        model.register_to_config(_name_or_path=str(sub))
    else:  # transformers copies it from the config at init, before this is known
        model.config._name_or_path = str(sub)
        model.name_or_path = str(sub)
    model.eval()
    return model


def read_file(path: Path, device: str, cancel: threading.Event | None = None) -> dict[str, Any]:
    """The tensors of one safetensors file, on ``device``: its data copied in a few large
    pieces from the mapped file into one buffer there, each tensor a view of its bytes.

    Why not the safetensors library's ``safe_open``: it copies tensor by tensor, and each copy
    gives the interpreter's lock back to the importing main thread and waits to take it again;
    over an SDXL's 2,500 tensors that made the thread take 6.8-7.5 s for 6.9 GB and the imports
    slower (round 6). Here the thread takes the lock once per ``_CHUNK`` (a copy of 128 MB
    runs without it). The header is validated first (``weightfiles``: offsets inside the data,
    no gaps or overlaps), on the descriptor that is then mapped."""
    import mmap

    import torch

    with weightfiles.opened(path) as (fh, header):
        if header is None:
            raise _NotBuilt("not a safetensors file")
        length = int.from_bytes(os.pread(fh.fileno(), 8, 0), "little")
        start = 8 + length
        data = os.fstat(fh.fileno()).st_size - start
        tensors_info = {k: v for k, v in header.items() if k != "__metadata__"}
        kinds = {key: _DTYPES.get(info["dtype"]) for key, info in tensors_info.items()}
        unknown = sorted({tensors_info[k]["dtype"] for k, v in kinds.items() if v is None})
        if unknown:
            raise _NotBuilt(f"tensors of dtype {unknown[0]}")
        buffer = torch.empty(data, dtype=torch.uint8, device=device)
        if data:
            # A private mapping: writable for torch.frombuffer, never written back to the file.
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
                source = torch.frombuffer(mapped, dtype=torch.uint8, offset=start, count=data)
                for offset in range(0, data, _CHUNK):
                    if cancel is not None and cancel.is_set():
                        raise _NotBuilt("cancelled")
                    buffer[offset:offset + _CHUNK].copy_(source[offset:offset + _CHUNK])
                del source  # before the mapping closes
    tensors = {}
    for key, info in tensors_info.items():
        dtype = getattr(torch, kinds[key])
        begin, end = info["data_offsets"]
        raw = buffer[begin:end]
        if begin % dtype.itemsize:  # a view must start on its element size: own a copy
            raw = raw.clone()
        tensors[key] = raw.view(dtype).reshape(info["shape"])
    return tensors


def _refuse_float32_modules(model_or_class: Any) -> None:
    """A model that keeps some modules in float32 is left to its library, whose loader knows
    which (diffusers' ``_keep_in_fp32_modules``, transformers' and its ``_strict`` variant)."""
    for attribute in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"):
        if getattr(model_or_class, attribute, None):
            raise _NotBuilt("keeps modules in float32")


def _component_class(library: str, class_name: str) -> Any:
    """The class ``model_index.json`` names, found where diffusers looks for it."""
    if library in ("diffusers", "transformers"):
        module = importlib.import_module(library)
    else:  # a pipeline's own module, as diffusers reads ["kolors", "ChatGLMModel"]
        module = importlib.import_module(f"diffusers.pipelines.{library}")
    cls = getattr(module, class_name, None)
    if cls is None:
        raise _NotBuilt(f"no class {library}.{class_name}")
    return cls


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
