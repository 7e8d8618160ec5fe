"""Compiled UNet and VAE decoder kept as files: compiled once per machine and batch shape, then
loaded by later processes without tracing the model again.

In: a module of a loaded pipeline (the UNet, the VAE), the method the pipeline calls on it
(``forward``, ``decode``), torch.compile's backend and options, and the folder of artifacts (in
the compile cache). Out: a ``CompiledMethod`` installed in place of that method, and its
``outcomes``: for each (module, input signature) whether the artifact was loaded, built (and
saved), or left to plain torch.compile, and why.

Why: with a warm compile cache a new process still spent about 9-12 s before its first compiled
SDXL step on an H200, most of it dynamo tracing the UNet again. torch's ``aot_compile`` saves the
traced and compiled function whole, guards and kernels included; a new process loaded an SDXL
UNet's artifact (40 MB) in 3.9 s and its first call took 1.3 s, against 0.23 s for later ones
and 0.30 s eager (bench/aot_compile_probe.py, round 8).

What is compiled is ``call_method(module, name, ...)``: the module is an argument, so its weights
are read at every call (a LoRA merged into them is seen), and the function is importable by
name, which the artifact needs. The artifact keeps only torch's portable guards (input shapes,
strides, dtypes, dispatch keys): diffusers' attention inspects its processor at every call,
which makes guards on code objects that cannot be saved. What those guards no longer check (the
module tree, its layers' settings and hooks, the attention processors, the weights' layout, the
libraries, the GPU) goes into the artifact's name instead (``model_fingerprint`` and
``environment``); the renderer calls ``invalidate()`` before every pipeline call, so the next
call looks at the module again (a LoRA loaded, projections unfused, anything else changed).
A saved artifact also lists the modules its code was traced from with their sources' digests:
a library patched or reinstalled under the same version makes it be built again. Any failure
to load or to build falls back to plain torch.compile, the way storyboard compiled before,
never to a failed render; one that cannot be saved is still used by the process that built it.
The folder is kept within a size limit, the least recently used artifacts removed first.

The files themselves (their format, the checks on reading them, which are stale) are
``artifact_files``'s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact_files import (ForeignFile, artifacts_dir, changed_source, prune, read_artifact,
                             touch, traced_sources, write_artifact)

FORMAT = 1
# Plain constants an input may be: anything else (a number, above all, which a compiled graph
# specialises on) leaves that call to plain torch.compile.
_CONSTANTS = (type(None), bool, str)


def supported() -> bool:
    """Whether this torch saves and loads compiled functions (2.11 and later), and the user
    has not turned them off (``STORYBOARD_COMPILE_ARTIFACTS=0``)."""
    if os.environ.get("STORYBOARD_COMPILE_ARTIFACTS", "1") == "0":
        return False
    import torch
    import torch._inductor.config as inductor

    # Freezing makes the weights constants of the graph: an artifact would keep them, and the
    # file name does not cover their values.
    return not inductor.freezing and all(hasattr(torch.compiler, name) for name in (
        "load_compiled_function", "keep_portable_guards_unsafe"))


def call_method(module: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """What is compiled: the class's own ``name`` on ``module`` (not the instance attribute,
    which is the ``CompiledMethod`` itself)."""
    return getattr(type(module), name)(module, *args, **kwargs)


@dataclass
class ArtifactOutcome:
    """What one (module, input signature) got in this process."""

    module: str  # "unet", "vae"
    how: str  # "loaded", "built", "torch.compile"
    seconds: float  # loading (checks included) or compiling and saving; not the first call
    reason: str | None = None  # why plain torch.compile, or why an artifact was rebuilt
    bytes: int | None = None
    # Where a load's seconds went: "read" (file, checksum, sources), "deserialize" (torch's
    # loader: the graph and its kernels), "guards"; filled in as it happens.
    parts: dict | None = None
    # The first call's seconds on the host (kernels launched, not waited for): a loaded
    # artifact's lazy set-up, or a built one's kernel tuning.
    first_call: float | None = None
    pruned: int | None = None  # least recently used artifacts removed to stay within the limit


def signature(value: Any, out: list) -> bool:
    """Append ``value``'s structure to ``out`` (tensors by shape, strides, dtype, device and
    flags; containers by their items; constants by value); False if it holds anything else."""
    import torch

    if isinstance(value, torch.Tensor):
        out.append(("T", tuple(value.shape), tuple(value.stride()), str(value.dtype),
                    str(value.device), value.requires_grad, value.is_inference()))
        return True
    if isinstance(value, dict):
        out.append(("D", len(value)))
        for key, item in value.items():
            if not isinstance(key, str):
                return False
            out.append(key)
            if not signature(item, out):
                return False
        return True
    if isinstance(value, (tuple, list)):
        out.append((type(value).__name__, len(value)))
        return all(signature(item, out) for item in value)
    if isinstance(value, _CONSTANTS):
        out.append(("C", repr(value)))
        return True
    return False


def _simple(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_simple(v) for v in value)
    return isinstance(value, (type(None), bool, int, float, str))


def _describe(obj: Any, depth: int = 0) -> str:
    """An attention processor (or what it wraps): its class and plain settings."""
    parts = [f"{type(obj).__module__}.{type(obj).__qualname__}"]
    for key, value in sorted(getattr(obj, "__dict__", {}).items()):
        if _simple(value):
            parts.append(f"{key}={value!r}")
        elif depth < 3 and callable(value) and not hasattr(value, "parameters"):
            parts.append(f"{key}=<{_describe(value, depth + 1)}>")
    return "(" + " ".join(parts) + ")"


def model_fingerprint(module: Any) -> str:
    """Everything of ``module`` that its traced code depends on and the portable guards do not
    check: every submodule's name, class, plain settings (peft's adapter switches, attention's
    heads and scale, ``training``) and hooks; the attention processors; every parameter's and
    buffer's name, shape, strides, dtype and device; the config."""
    h = hashlib.sha256()
    for name, m in module.named_modules():
        plain = sorted((k, repr(v)) for k, v in vars(m).items()
                       if not k.startswith("_") or k in ("_disable_adapters", "_active_adapter"))
        plain = [(k, v) for k, v in plain if _simple(getattr(m, k, None))]
        hooks = [len(getattr(m, attr, ())) for attr in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks")] if name else []
        h.update(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{plain}|{hooks}\n"
                 .encode())
        processor = getattr(m, "processor", None)
        if processor is not None:
            h.update(f"  processor {_describe(processor)}\n".encode())
    for kind, named in (("p", module.named_parameters()), ("b", module.named_buffers())):
        for name, t in named:
            h.update(f"{kind} {name} {tuple(t.shape)} {t.stride()} {t.dtype} {t.device} "
                     f"{t.requires_grad}\n".encode())
    config = getattr(module, "config", None)
    if config is not None:
        h.update(json.dumps(dict(config), sort_keys=True, default=repr).encode())
    return h.hexdigest()


def environment(backend: str, options: dict | None) -> str:
    """The libraries, Python, the GPU and the compile settings an artifact was made with."""
    import diffusers
    import torch

    from ... import __version__
    from ..attention import crosskv

    gpu = ""
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        gpu = f"{torch.cuda.get_device_name(index)} {torch.cuda.get_device_capability(index)}"
    try:
        peft = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        peft = None
    source = Path(crosskv.__file__).read_bytes()  # its processor's code is traced into the graph
    import torch._inductor.config as inductor

    return json.dumps({
        "format": FORMAT, "python": sys.version, "torch": torch.__version__,
        "cuda": torch.version.cuda, "diffusers": diffusers.__version__, "peft": peft,
        "storyboard": __version__, "crosskv": hashlib.sha256(source).hexdigest(), "gpu": gpu,
        "backend": backend, "options": sorted((k, repr(v)) for k, v in (options or {}).items()),
        "inductor": hashlib.sha256(repr(sorted(inductor.save_config_portable().items()))
                                   .encode()).hexdigest(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }, sort_keys=True)


class CompiledMethod:
    """Stands in for ``module.<name>``: each call runs the compiled artifact for its inputs'
    signature, loading or building it on the first such call."""

    def __init__(self, module: Any, name: str, label: str, *, backend: str,
                 options: dict | None, folder: Path | None = None) -> None:
        self.module, self.name, self.label = module, name, label
        self.backend, self.options = backend, dict(options or {})
        self.folder = folder or artifacts_dir()
        self.outcomes: list[ArtifactOutcome] = []
        self._functions: dict[str, Any] = {}  # artifact key -> loaded function
        self._fingerprint: str | None = None
        self._environment: str | None = None
        self._fallback: Any = None
        self._fallback_keys: set[str | None] = set()
        self._keys: dict[tuple, str | None] = {}  # _quick -> _key
        self._reported = 0

    def new_outcomes(self) -> list[ArtifactOutcome]:
        """The outcomes since the last time this was asked (for progress events)."""
        new = self.outcomes[self._reported:]
        self._reported = len(self.outcomes)
        return new

    def invalidate(self) -> None:
        """Describe the module again at the next call (it may have changed since: a LoRA
        loaded, projections unfused)."""
        self._fingerprint = None
        self._keys.clear()

    def _key(self, args: tuple, kwargs: dict) -> str | None:
        import torch

        inputs: list = [torch.is_grad_enabled(), torch.is_inference_mode_enabled()]
        if not signature((args, kwargs), inputs):
            return None
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.module)
        if self._environment is None:
            self._environment = environment(self.backend, self.options)
        text = json.dumps([self._environment, self.label, self.name, self._fingerprint,
                           repr(inputs)])
        return hashlib.sha256(text.encode()).hexdigest()

    def _quick(self, args: tuple, kwargs: dict) -> tuple:
        """A cheaper stand-in for ``_key`` at every step (the full one asks every cached K/V
        tensor its strides and flags: about 0.5 ms a call on SDXL's inputs, this 0.1 ms):
        the whole structure of the inputs, every constant by value, every tensor by shape,
        dtype and device. What it leaves out, the artifact's own guards check (strides,
        dispatch keys)."""
        import torch

        def quick(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return (value.shape, value.dtype, value.device)
            if isinstance(value, dict):
                return ("D", *((k, quick(v)) for k, v in value.items()))
            if isinstance(value, (tuple, list)):
                return (type(value), *map(quick, value))
            return value if isinstance(value, _CONSTANTS) else type(value)

        return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                self._fingerprint, quick(args), quick(kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        quick = self._quick(args, kwargs)
        if quick in self._keys:
            key = self._keys[quick]
        else:
            try:
                key = self._key(args, kwargs)
            except Exception as exc:  # noqa: BLE001 - a module it cannot describe
                return self._plain(None, f"not described: {type(exc).__name__}: {exc}"[:300])(
                    *args, **kwargs)
            self._keys[self._quick(args, kwargs)] = key  # with the fingerprint now known
        if key is None or key in self._fallback_keys:
            return self._plain(key, "inputs other than tensors and flags")(*args, **kwargs)
        fn = self._functions.get(key)
        first = fn is None
        if first:
            fn = self._obtain(key, args, kwargs)
            if fn is None:
                return self._plain(key, None)(*args, **kwargs)
            self._functions[key] = fn
        try:
            if not first:
                return fn(self.module, self.name, *args, **kwargs)
            t0 = time.perf_counter()
            out = fn(self.module, self.name, *args, **kwargs)
            self.outcomes[-1].first_call = round(time.perf_counter() - t0, 3)
            return out
        except RuntimeError as exc:
            import torch

            # The guards are checked before anything runs: something the name does not cover
            # changed. And an artifact that fails its first call (a driver, a kernel it cannot
            # load) is not used again. Either way, plain torch.compile from here on for these
            # inputs; running out of memory is the caller's to handle (it splits the batch).
            guards = "GuardManager check failed" in str(exc)
            if isinstance(exc, torch.OutOfMemoryError) or not (guards or first):
                raise
            del self._functions[key]
            what = "the artifact's guards failed" if guards else "its first call failed"
            return self._plain(key, f"{what}: {str(exc)[:200]}")(*args, **kwargs)

    def _plain(self, key: str | None, reason: str | None) -> Any:
        """torch.compile of the bound method, as storyboard compiled before artifacts."""
        if self._fallback is None:
            import torch

            bound = getattr(type(self.module), self.name).__get__(self.module)
            self._fallback = torch.compile(bound, backend=self.backend,
                                           options=self.options or None, dynamic=False)
        if key not in self._fallback_keys:
            self._fallback_keys.add(key)
            if reason is not None:
                self.outcomes.append(ArtifactOutcome(self.label, "torch.compile", 0.0, reason))
        return self._fallback

    def _obtain(self, key: str, args: tuple, kwargs: dict) -> Any:
        """The artifact for ``key``: loaded if saved and sound, else built (and saved where
        it can be); None (with an outcome saying why) where neither works."""
        path = self.folder / f"{self.label}-{key[:40]}.aot"
        fn, reason, save = self._load(path, args, kwargs)
        if fn is not None:
            return fn
        import torch

        t0 = time.perf_counter()
        try:
            if hasattr(torch._dynamo.config, "enable_aot_compile"):  # torch 2.11's switch
                torch._dynamo.config.enable_aot_compile = True
            options = {**self.options,
                       "guard_filter_fn": torch.compiler.keep_portable_guards_unsafe}
            # Without this stand-in on the module while it is traced: the state saved with
            # the module would reach the functions loaded before, which cannot be pickled.
            mine = self.module.__dict__.pop(self.name, None)
            try:
                fn = torch.compile(call_method, fullgraph=True, dynamic=False,
                                   backend=self.backend, options=options).aot_compile(
                    ((self.module, self.name, *args), kwargs))
            finally:
                if mine is not None:
                    self.module.__dict__[self.name] = mine
        except Exception as exc:  # noqa: BLE001 - a graph break, an unsupported part
            self._plain(key, f"could not be compiled as an artifact: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            return None
        size = pruned = None
        try:  # compiled now, for this process, whether or not it can be kept
            payload = type(fn).serialize(fn).serialized_data
            size = len(payload)
            if save:
                write_artifact(path, {"sources": traced_sources(fn)}, payload)
                pruned = len(prune(self.folder, keep=path)) or None
        except Exception as exc:  # noqa: BLE001 - the next process builds it again
            reason = f"not saved: {type(exc).__name__}: {exc}"[:300]
        self.outcomes.append(ArtifactOutcome(self.label, "built",
                                             round(time.perf_counter() - t0, 3), reason, size,
                                             pruned=pruned))
        return fn

    def _load(self, path: Path, args: tuple, kwargs: dict) -> tuple[Any, str | None, bool]:
        """(the saved artifact if it is sound and fits these inputs, else None; why not;
        whether a new one may be saved in its place)."""
        import torch

        t0 = time.perf_counter()
        parts: dict = {}
        try:
            saved = read_artifact(path)
        except (OSError, ValueError) as exc:
            # Another user's file is never replaced: storyboard may not have written it.
            return None, f"the saved artifact was not used: {exc}", \
                not isinstance(exc, ForeignFile)
        if saved is None:
            return None, None, True
        record, payload = saved
        changed = changed_source(record["sources"])
        if changed is not None:
            return None, f"the code it was traced from has changed ({changed})", True
        touch(path)
        parts["read"] = round(time.perf_counter() - t0, 3)
        try:
            t1 = time.perf_counter()
            fn = torch.compiler.load_compiled_function(io.BytesIO(payload))
            t2 = time.perf_counter()
            if not fn.guard_check(self.module, self.name, *args, **kwargs):
                return None, "the saved artifact's guards did not match these inputs", True
            parts.update(deserialize=round(t2 - t1, 3), guards=round(time.perf_counter() - t2, 3))
        except Exception as exc:  # noqa: BLE001 - any failure: build it again
            return None, f"the saved artifact did not load: {type(exc).__name__}: {exc}"[:300], \
                True
        self.outcomes.append(ArtifactOutcome(self.label, "loaded",
                                             round(time.perf_counter() - t0, 3),
                                             bytes=len(payload), parts=parts))
        return fn, None, True


def install(module: Any, name: str, label: str, *, backend: str,
            options: dict | None) -> CompiledMethod:
    """Put a ``CompiledMethod`` in place of ``module.<name>`` (the module's hooks still run
    around it, outside the compiled code)."""
    compiled = CompiledMethod(module, name, label, backend=backend, options=options)
    setattr(module, name, compiled)
    return compiled
