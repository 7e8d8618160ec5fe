"""Render jobs straight into the panel cache, PNG writes overlapping the next batch.

In: the jobs to render, the cache, ``RuntimeOptions``, a progress callback and an engine
``Session``. Out: a ``PanelOutcome`` per job hash (identical jobs render once), the engine's
``RenderInfo`` (device, dtype, speed-ups), and every rendered panel in the cache the moment its
PNG is written, so an interrupted build keeps its work and the next one resumes.

PNG encoding and the cache writes happen on writer threads while the next batch renders
(Pillow's encoder releases the GIL): a 1024x1024 panel takes 0.03-0.15 s to encode, time the GPU
would otherwise sit idle for. Panel events still come in render order, each once its file is
safely written (checked at every step of the batch rendering meanwhile); a failed write stops
the build before the next batch starts; at most ``MAX_PENDING_WRITES`` images wait for the
writer; an interrupted build finishes and announces the writes already queued.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..options import RuntimeOptions
from ..output import pnginfo
from ..output.cache import PanelCache, cache_key
from ..plan import PanelJob
from ..plan.batches import unique_jobs

if TYPE_CHECKING:
    from ..engine.session import RenderInfo, Session

Event = Callable[[dict[str, Any]], None]

MAX_PENDING_WRITES = 16  # rendered panels waiting for the PNG writer (about 3 MB each at 1024²)
# A batch's panels are encoded side by side: one after another, the last of a batch of 8 SDXL
# panels landed 1.3 s after the first (0.17 s each on the H200 machine's CPU), and the build
# ends that much later. Their events still come in render order.
PNG_WRITERS = max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass
class PanelOutcome:
    """What became of one panel in a command."""

    job: PanelJob
    status: str  # rendered | cached | failed | missing (not selected and never rendered)
    seconds: float = 0.0
    error: str | None = None
    path: Path | None = None


def render_into_cache(jobs: list[PanelJob], cache: PanelCache, options: RuntimeOptions,
                      emit: Event, *, story: str | None, dtype_override: str | None = None,
                      session: Session | None = None,
                      on_panel: Callable[[PanelJob], None] | None = None,
                      ) -> tuple[dict[str, PanelOutcome], RenderInfo | None]:
    """Render ``jobs`` into ``cache``; outcomes by job hash, and what the engine did (None when
    there was nothing to render, and so no model was loaded). ``on_panel(job)``: called on
    this thread for each job whose panel is rendered and in the cache (a build composes its
    pages as their panels arrive)."""
    if any(job.awaiting for job in jobs):  # callers train first or refuse (commands.common)
        raise ValueError("a job waiting for a trained LoRA cannot render")
    if not jobs:
        return {}, None
    from ..engine.session import Session

    session = session or Session()
    twins: dict[str, list[PanelJob]] = {}
    for job in jobs:
        twins.setdefault(job.hash, []).append(job)
    outcomes: dict[str, PanelOutcome] = {}
    pending: deque[tuple[Future | None, Any]] = deque()  # (write, result), in render order

    def settle(wait: bool, errors: str = "raise") -> None:
        """Announce the panels at the head of the queue whose writes are done (all of them
        with ``wait``). A failed write is raised ("raise"), left at the head for the main
        loop to raise ("hold": from inside a pipeline call, where an exception would only
        fail the batch), or passed over ("skip": another exception is already on its way)."""
        while pending:
            write, result = pending[0]
            if write is not None:
                if not (wait or write.done()):
                    return
                if write.exception() is not None:
                    if errors == "hold":
                        return
                    pending.popleft()
                    if errors == "raise":
                        raise write.exception()
                    continue
            pending.popleft()
            job = result.job
            outcomes[job.hash] = PanelOutcome(job, result.status, result.seconds, result.error)
            for twin in twins[job.hash]:
                emit({"event": "panel", "panel": twin.panel, "seed": twin.seed,
                      "status": result.status, "seconds": round(result.seconds, 3),
                      "error": result.error})
                if on_panel is not None and result.status == "rendered":
                    on_panel(twin)

    def on_event(event: dict) -> None:
        # batch_start comes between pipeline calls: a failed write may stop the build there.
        settle(wait=False, errors="raise" if event["event"] == "batch_start" else "hold")
        emit(event)

    prepared = session.prepare(unique_jobs(jobs), options, on_event=on_event)
    info = prepared.info

    def store(result) -> None:
        # Looked up at call time, not import time, so tests can slow the encoder down.
        job = result.job
        key = cache_key(job.hash, dtype_override)
        cache.put(key, pnginfo.panel_png_bytes(
            result.image, job, story=story, sampler=result.sampler, device=info.device,
            dtype=info.dtype, cache_key=key))

    with ThreadPoolExecutor(max_workers=PNG_WRITERS, thread_name_prefix="storyboard-png") as writer:
        try:
            for result in prepared.results(on_event):
                rendered = result.status == "rendered"
                pending.append((writer.submit(store, result) if rendered else None, result))
                settle(wait=False)
                while len(pending) > MAX_PENDING_WRITES:  # the disk is slower than the GPU
                    oldest = pending[0][0]
                    if oldest is not None:
                        oldest.exception()  # blocks until that write is done
                    settle(wait=False)
        except BaseException:
            settle(wait=True, errors="skip")
            raise
        settle(wait=True)
    return outcomes, info
