"""Compile while rendering: the compiled UNet (and VAE decoder) made on a thread of its own
while the first batches render eagerly, then used from the first batch after it is ready.

In: a loaded model with its other speed-ups applied (channels_last, fused QKV, the
cross-attention K/V cache), the batch shape to compile for (``plan.speed.batch_shape``),
torch.compile's backend and options. Out: ``BackgroundCompile``: ``start()``; before each batch
``use_for(batch)`` says whether it renders compiled (it switches once the graphs are ready, for
batches of that shape only: a compiled graph is static); ``finish()`` lets go of a thread still
waiting and, after a render that ended as planned, waits for one still compiling (only where
the render ended first, which the plan avoids);
``ready_seconds`` and ``error`` say what happened.

How: the compiled functions replace ``unet.forward`` and ``vae.decode`` on the objects
themselves, behind a switch, so the pipeline and the K/V cache's hook (which runs outside
``forward``) see one module whichever way it renders, and a build that compiles before its
first batch (``apply``) traces the same graphs into the same cache. The first eager call of a
batch of the shape is recorded: its arguments cloned (the same shapes, strides, dtypes and
Python values, so the compiled graph's guards hold for every later call). The thread calls the
compiled function once with them, in inference mode: that compiles, from the compile cache
where this machine compiled the shape before, and runs it once; its output is dropped.

Why a thread can compile while the main thread renders: dynamo's frame hook, grad and
inference mode and the dispatch modes are per thread; only this thread compiles; the eager
forward changes no module state (the K/V cache is filled by its hook, before ``forward``, on
the main thread). dynamo saves and restores the global random state around tracing; panels draw
their noise from generators of their own (``runner``), never from it. The warm-up call needs
memory for a second batch at once, which the plan checked (``plan.speed``). One thing is not
per thread: while AOTAutograd traces a graph (a compile that misses its cache), torch.fx
patches ``nn.Module.__call__`` on the class, and the eager batches' module calls go through
the patch meanwhile: the same results, more slowly (those batches are not timed). The plan
compiles in the background only shapes this machine has compiled before, whose traced graphs
the compile cache holds.

A VAE that diffusers casts to float32 around every decode (``force_upcast`` in float16) is
left eager: its weights change dtype on the main thread while the thread would trace them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...plan.batches import Batch
from ...plan.speed import Speedup, batch_shape


def _clone(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone()  # preserve_format: the same strides for a dense tensor
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_clone(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


@dataclass
class _Target:
    """One function compiled in the background (``unet.forward``), standing in its place."""

    label: str
    speedup: Speedup  # what it is on the record once in use
    original: Any
    compiled: Any
    record: bool = False  # the main thread is rendering a batch of the shape, eagerly
    use: bool = False  # the main thread renders compiled
    ready: bool = False  # set by the thread
    seconds: float | None = None  # the compiling call's, on the thread
    args: Any = None  # (args, kwargs) of the first recorded call
    recorded: threading.Event = field(default_factory=threading.Event)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.use:
            return self.compiled(*args, **kwargs)
        if self.record and not self.recorded.is_set():
            try:
                self.args = _clone((args, kwargs))
            except Exception:  # noqa: BLE001 - out of memory, say: the thread says it failed
                self.args = None
            self.recorded.set()
        return self.original(*args, **kwargs)


class BackgroundCompile:
    """The UNet's forward (and the VAE's decode, with ``vae=True``) compiled on a thread for
    batches of ``shape``."""

    def __init__(self, model: Any, shape: tuple, *, backend: str = "inductor",
                 options: dict | None = None, vae: bool = True) -> None:
        import torch

        self.shape = shape
        # The thread's CUDA device is its own: set there to the model's, by index ("cuda"
        # alone means the current one, which set_device does not take).
        self.cuda_index: int | None = None
        if model.device.startswith("cuda"):
            index = torch.device(model.device).index
            self.cuda_index = torch.cuda.current_device() if index is None else index
        self.targets: list[_Target] = []
        pairs = [("unet", Speedup.TORCH_COMPILE, model.pipe.unet, "forward")]
        if vae:
            pairs.append(("vae", Speedup.VAE_COMPILE, model.pipe.vae, "decode"))
        for label, speedup, owner, name in pairs:
            original = getattr(owner, name)
            compiled = torch.compile(original, backend=backend, options=options,
                                     dynamic=False)
            target = _Target(label, speedup, original, compiled)
            setattr(owner, name, target)  # an attribute of the object: found before the class's
            self.targets.append(target)
        self.error: str | None = None
        self.told = False  # the render has said that it failed
        self.done = threading.Event()  # the thread has ended
        self._stop = threading.Event()
        # A daemon: an interrupted build exits without waiting for it (finish(wait=False)).
        self._thread = threading.Thread(target=self._run, name="storyboard-compile",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def unet(self) -> _Target:
        return self.targets[0]

    @property
    def compiling(self) -> bool:
        """Whether the thread is working (not merely waiting for a call to record)."""
        return self._thread.is_alive() and any(t.recorded.is_set() and not t.ready
                                               for t in self.targets)

    def use_for(self, batch: Batch) -> bool:
        """Before a batch: whether it renders compiled. Batches of another shape render
        eagerly, and are not recorded."""
        mine = batch_shape(batch) == self.shape
        for target in self.targets:  # each as soon as it is ready: the UNet is most of a step
            target.use = mine and target.ready
            target.record = mine and not target.ready
        return self.unet.use

    def finish(self, wait: bool = True) -> None:
        """After the render: a thread still waiting for a call stops. One still compiling is
        waited for with ``wait`` (a render that ended as planned: the compile goes on into the
        cache, and no thread is left inside the compiler as the process exits), and left to
        end with the process without it (an error or an interrupt: nothing waits for a
        compile the render will not use)."""
        for target in self.targets:
            target.record = False
        self._stop.set()
        for target in self.targets:
            target.recorded.set()  # wakes a waiting thread, which sees _stop
        if wait and self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        import torch

        try:
            if self.cuda_index is not None:
                torch.cuda.set_device(self.cuda_index)
            for target in self.targets:
                target.recorded.wait()
                if self._stop.is_set():  # the render has ended
                    return
                if target.args is None:
                    raise RuntimeError(f"the {target.label}'s first call could not be kept")
                args, kwargs = target.args
                t0 = time.perf_counter()
                with torch.inference_mode():
                    target.compiled(*args, **kwargs)
                target.seconds = time.perf_counter() - t0
                target.args = None  # its memory
                target.ready = True
        except Exception as exc:  # noqa: BLE001 - the render goes on eagerly; the error is told
            # dynamo wraps what the compiler raised (BackendCompilerFailed.inner_exception).
            exc = getattr(exc, "inner_exception", None) or exc
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            self.done.set()
