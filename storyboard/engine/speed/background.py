"""Compile while rendering: the compiled UNet (and VAE decoder) made on a thread of its own
while the first batches render eagerly, then used from the first batch after it is ready.

In: a loaded model with its other speed-ups applied (channels_last, fused QKV, the
cross-attention K/V cache), the batch shape to compile for (``plan.speed.batch_shape``),
torch.compile's backend and options. Out: ``BackgroundCompile``: ``start()``; before each batch
``use_for(batch)`` says whether it renders compiled (it switches once the graphs are ready, for
batches of that shape only: a compiled graph is static); ``finish()`` lets go of a thread still
waiting and waits for one still compiling (only where the render ended first);
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
memory for a second batch at once, which the plan checked (``plan.speed``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...plan.batches import Batch
from ...plan.speed import batch_shape


def _clone(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone()  # preserve_format: the same strides for a dense tensor
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


@dataclass
class _Target:
    """One function compiled in the background: ``owner.name`` (``unet.forward``)."""

    label: str
    owner: Any
    name: str
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
            self.args = _clone((args, kwargs))
            self.recorded.set()
        return self.original(*args, **kwargs)


class BackgroundCompile:
    """The UNet's forward (and the VAE's decode, with ``vae=True``) compiled on a thread for
    batches of ``shape``."""

    def __init__(self, model: Any, shape: tuple, *, backend: str = "inductor",
                 options: dict | None = None, vae: bool = True) -> None:
        import torch

        self.shape = shape
        self.device = model.device
        self.targets: list[_Target] = []
        pairs = [("unet", model.pipe.unet, "forward")]
        if vae:
            pairs.append(("vae", model.pipe.vae, "decode"))
        for label, owner, name in pairs:
            original = getattr(owner, name)
            compiled = torch.compile(original, backend=backend, options=options,
                                     dynamic=False)
            target = _Target(label, owner, name, original, compiled)
            setattr(owner, name, target)  # an attribute of the object: found before the class's
            self.targets.append(target)
        self.error: str | None = None
        self.told = False  # the render has said that it failed
        self.done = threading.Event()  # the thread has ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storyboard-compile",
                                        daemon=False)

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

    def finish(self) -> None:
        """After the render: a thread still waiting for a call stops; one compiling is waited
        for (its graphs go into the compile cache for the next build)."""
        for target in self.targets:
            target.record = False
        self._stop.set()
        for target in self.targets:
            target.recorded.set()  # wakes a waiting thread, which sees _stop
        if self._thread.is_alive():
            self._thread.join()

    def restore(self) -> None:
        """Put the original functions back (tests; a model let go)."""
        self.finish()
        for target in self.targets:
            setattr(target.owner, target.name, target.original)

    def _run(self) -> None:
        import torch

        try:
            if self.device.startswith("cuda"):
                torch.cuda.set_device(torch.device(self.device))  # per thread
            for target in self.targets:
                target.recorded.wait()
                if target.args is None or self._stop.is_set():  # the render has ended
                    return
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
