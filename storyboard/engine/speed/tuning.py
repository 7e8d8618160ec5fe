"""Coordinate-descent tuning of the compiled UNet's Triton kernels, kept by the compile cache.

In: the installed torch. Out: ``warm_cache_keeps_tuning()``, true when inductor (after the
backport below, where needed) reuses coordinate-descent results from a warm compile cache
instead of tuning every kernel again in each new process; and ``COMPILE_OPTIONS``, what
``torch.compile`` is given when tuning is on.

Measured on an H200 with an SDXL UNet (docs/speed-experiments.md, round 4c): tuning takes a step
from 29.03 to 28.40 ms per panel (-2.2%), costs about 100 s more on the first compile of each shape on a
machine (157 s instead of 55 s), and, with the backport, loads from a warm cache in 9.6 s (9.3 s
untuned). In bench/speed.py runs, storyboard's steady time per panel went from 1.464 to 1.437 s
(SDXL) and from 1.516 to 1.455 s (Kolors: from 1.57x to 1.64x the notebook loop's speed, the
1.6x aimed for lying between). So it is on whenever
storyboard compiles, which it does only for renders large enough to pay a compile back (see
``plan.speed.compile_pays``); ``--no-tune`` / ``render: {tune: false}`` leave it out.

Why a backport: torch 2.11 finds the tuned config in the cache but drops its "found by
coordinate descent" mark, and re-scales reduction blocks after a cache hit, so every new process
tunes again (pytorch/pytorch#172819; a warm cache then loaded in 18.5-31 s). The fixes are
upstream: #173391 (torch 2.12) and the reduction part of #181789 (torch 2.13). This module
applies the same two changes to torch 2.11's inductor (the second also to 2.12's, whose method
is the same), and only when the functions it replaces are exactly the ones it was written
against (sha256 of their source). A torch whose source shows the fixes needs nothing; any other
is left alone, with tuning off.

The patch is process-wide by nature (inductor tunes kernels lazily, when they first run, long
after a compile call returns), so it is applied explicitly, once, only when a render asks for
tuned kernels (``speed.apply``), never on import.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

COMPILE_OPTIONS = {"coordinate_descent_tuning": True}

# CachingAutotuner method -> (sha256 prefixes of the sources with the bug, text of the fix).
_METHODS = {
    "recheck_autotune_cache": ({"2ac93d62014207b1"},  # torch 2.11.0
                               "compile_result.config.found_by_coordesc = found_by_coordesc"),
    "_dynamic_scale_rblock": ({"a495cea0386f26b3"},  # torch 2.11.0 and 2.12.0
                              '"autotune_cache_state"'),
}
_state: bool | None = None


def warm_cache_keeps_tuning() -> bool:
    """Whether tuned kernels survive into the next process (patching torch 2.11 once)."""
    global _state
    if _state is None:
        _state = _check_and_patch()
    return _state


def _check_and_patch() -> bool:
    try:
        import torch._inductor.runtime.triton_heuristics as th

        cls = th.CachingAutotuner
        sources = {name: inspect.getsource(getattr(cls, name)) for name in _METHODS}
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    todo = []
    for name, source in sources.items():
        buggy, fixed = _METHODS[name]
        if fixed in source or getattr(getattr(cls, name), "storyboard_backport", False):
            continue
        if hashlib.sha256(source.encode()).hexdigest()[:16] not in buggy:
            return False  # a version this was not written against: leave it alone
        todo.append(name)
    backports = {"recheck_autotune_cache": _recheck_autotune_cache(th),
                 "_dynamic_scale_rblock": _dynamic_scale_rblock(cls._dynamic_scale_rblock)}
    for name in todo:
        backports[name].storyboard_backport = True  # so a second check finds it done
        setattr(cls, name, backports[name])
    return True


def _recheck_autotune_cache(th: Any):
    """torch 2.12's ``CachingAutotuner.recheck_autotune_cache`` (pytorch#173391): on a cache hit
    the compiled config keeps the mark that coordinate descent found it."""

    def recheck_autotune_cache(self, reload_kernel_from_src):
        assert self.is_statically_launchable()
        configs = [result.config for result in self.compile_results]
        cached, _, info = th.check_autotune_cache(configs, self.filename, self.inductor_meta)
        self.autotune_cache_info = info
        if len(cached) == 1 and info.get("autotune_cache_state") == "hit":
            best = cached[0]
            found_by_coordesc = getattr(best, "found_by_coordesc", False)
            best_hash = th.triton_config_to_hashable(best)
            for result in self.compile_results:
                if th.triton_config_to_hashable(result.config) == best_hash:
                    result.config.found_by_coordesc = found_by_coordesc
                    self.compile_results = [result]
                    return
            if found_by_coordesc:  # tuned past every heuristic config: compile that one
                with th.dynamo_timed("CachingAutotuner.slow_precompile_config"):
                    if self.fn.fn is None:
                        self.fn = reload_kernel_from_src().fn
                    self.compile_results = [self._precompile_config(best)]

    return recheck_autotune_cache


def _dynamic_scale_rblock(original: Any):
    """torch 2.13's early return (pytorch#181789): after a cache hit the cached config is final;
    adding a scaled reduction block would make a second config to benchmark and tune again."""

    def _dynamic_scale_rblock(self):
        info = self.autotune_cache_info
        if info and info.get("autotune_cache_state") == "hit":
            return None
        return original(self)

    return _dynamic_scale_rblock
