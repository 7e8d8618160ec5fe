"""A training step's two ways of not waiting for the GPU: its loss read late, and the whole
step replayed as a CUDA graph.

In: each step's loss tensor (``Losses.push``), or a function from a step's parts (``(inputs,
noise, timesteps)`` per batch, ``data.UNetInputs``) to its loss with the ``state.Trainable``
it trains (``GraphedStep``). Out: the losses as floats, in step order, a step or two behind the
GPU (``Losses.ready``); the step's loss tensor, after forward, backward, clipping and the
optimizer step ran eagerly or as a replayed graph (``GraphedStep.step``). Used by
``trainer.train_lora`` on CUDA; on the CPU the loss is read at once and nothing is captured.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from . import data, state

Event = Callable[[dict[str, Any]], None]
MAX_GRAD_NORM = 1.0  # gradient clipping, as diffusers' DreamBooth scripts clip


class Losses:
    """Each step's loss, read without waiting for the GPU: on CUDA a non-blocking copy into
    pinned memory and an event per step, read once the event has passed, so the CPU queues the
    next steps while the GPU works (``float(loss)`` at every step kept the GPU idle while the CPU
    queued each step's first kernels); progress is reported a step or two late. On the CPU,
    read at once."""

    def __init__(self, deferred: bool, ahead: int = 2):
        self.deferred = deferred
        self.ahead = ahead  # steps the CPU may queue ahead of the GPU (a CUDA graph step is
        # queued in microseconds: unbounded, progress would come in at the end)
        self.queue: deque = deque()

    def push(self, step: int, loss) -> None:
        import torch

        if not self.deferred:
            self.queue.append((step, float(loss.detach()), None))
            return
        host = torch.empty((), dtype=torch.float32, pin_memory=True)
        host.copy_(loss.detach(), non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(loss.device))
        self.queue.append((step, host, event))

    def ready(self, wait: bool = False) -> list[tuple[int, float]]:
        """The (step, loss) pairs that are in, in order; with ``wait``, all of them."""
        out = []
        while self.queue:
            step, value, event = self.queue[0]
            if event is not None:
                if wait or len(self.queue) > self.ahead:
                    event.synchronize()
                elif not event.query():
                    break
                value = float(value)
            self.queue.popleft()
            out.append((step, value))
        return out


class GraphedStep:
    """The training step as CUDA graphs: with LoRA on every attention projection, a step is
    thousands of small kernels, and on an H200 queueing them from Python took ~4x as long as
    the GPU took to run them (bench/train.py's profile). A CUDA graph queues them all at once.

    One graph per batch shape (aspect-ratio buckets): the first step of a shape runs eagerly
    (on a side stream, as capture wants: it also makes cuDNN's plans and AdamW's state), the
    second is captured and every later one replays it. A new shape's eager step first drops
    the graphs made so far (they are captured again when their shape comes back), so that at
    most one step's activations are on the GPU. The graphs share one memory pool and are
    replayed one at a time, each step's loss copied out before the next. The step's inputs
    (batch, noise, timesteps: drawn outside, so the generator advances exactly as without
    graphs) are copied into the graph's own input tensors. The gradients are allocated once and
    zeroed inside the step (the graphs write into them), and AdamW is ``capturable``."""

    def __init__(self, step_loss: Callable, trainable: state.Trainable, emit: Event):
        import torch

        self.step_loss = step_loss
        self.emit = emit
        self.broken = False  # a capture failed: eager from then on
        self.optimizer = trainable.optimizer
        self.parameters = list(trainable.parameters.values())
        for p in self.parameters:
            p.grad = torch.zeros_like(p)
        self.grads = [p.grad for p in self.parameters]
        self.graphs: dict[Any, tuple[Any, Any, Any]] = {}
        self.seen: set = set()
        self.pool = None
        self.side = torch.cuda.Stream()

    def _run(self, parts):
        import torch

        torch._foreach_zero_(self.grads)
        loss = self.step_loss(parts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, MAX_GRAD_NORM)
        self.optimizer.step()
        return loss.detach()

    def step(self, parts):
        import torch

        key = tuple(tuple(t.shape) for t in tensors(parts))
        if self.broken:
            return self._run(parts)
        if key not in self.seen:  # the shape's first step: eager, on a side stream
            self.seen.add(key)
            # The graphs' pool and this step's activations would be on the GPU at once: the
            # graphs go (capturing one again costs about an eager step).
            current = torch.cuda.current_stream()
            if self.graphs:
                current.synchronize()  # none of them still running
                self.graphs.clear()
                self.pool = None
                torch.cuda.empty_cache()
            self.side.wait_stream(current)
            with torch.cuda.stream(self.side):
                loss = self._run(parts)
            current.wait_stream(self.side)
            # Its activations stay cached for the side stream otherwise, next to the graphs'.
            torch.cuda.empty_cache()
            return loss
        if key not in self.graphs:
            static = clone(parts)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self.pool):
                    out = self._run(static)
            except Exception as exc:  # noqa: BLE001 - capture runs nothing: train eagerly
                self.broken = True
                self.graphs.clear()
                self.emit({"event": "warning", "message": "could not capture the training "
                           f"step as a CUDA graph ({type(exc).__name__}: {exc}); eager steps"})
                return self._run(parts)
            self.pool = graph.pool()
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for mine, theirs in zip(tensors(static), tensors(parts)):
            mine.copy_(theirs)
        graph.replay()
        return out

    def close(self) -> None:
        self.graphs.clear()
        for p in self.parameters:
            p.grad = None


def tensors(parts) -> list[Any]:
    """The tensors of a step's parts, in a fixed order."""
    out = []
    for inputs, noise, timesteps in parts:
        out += [inputs.latents, inputs.prompt_embeds, noise, timesteps]
        if inputs.added_cond is not None:
            out += [inputs.added_cond[k] for k in sorted(inputs.added_cond)]
    return out


def clone(parts):
    return [(data.UNetInputs(inputs.latents.clone(), inputs.prompt_embeds.clone(),
                             None if inputs.added_cond is None else
                             {k: v.clone() for k, v in inputs.added_cond.items()}),
             noise.clone(), timesteps.clone()) for inputs, noise, timesteps in parts]
