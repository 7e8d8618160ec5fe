"""Coordinate-descent tuning (engine/speed/tuning.py): the torch 2.11 backport does what the
upstream fixes do, and is applied only to the exact sources it was written against."""

from __future__ import annotations

import hashlib
import inspect
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from storyboard.engine.speed import tuning  # noqa: E402


class Config(SimpleNamespace):
    pass


def fake_inductor(state: str, best: Config):
    """The two functions of torch's triton_heuristics the backport calls."""
    def check_autotune_cache(configs, filename, meta):
        info = {"autotune_cache_state": state}
        return ([best] if state == "hit" else configs), None, info

    return SimpleNamespace(check_autotune_cache=check_autotune_cache,
                           triton_config_to_hashable=lambda c: c.block,
                           dynamo_timed=lambda name: pytest.fail("nothing to compile"))


def autotuner(*blocks):
    return SimpleNamespace(is_statically_launchable=lambda: True, filename="k.py",
                           inductor_meta={}, autotune_cache_info=None,
                           compile_results=[SimpleNamespace(config=Config(block=b))
                                            for b in blocks])


def test_a_cache_hit_keeps_the_mark_that_coordinate_descent_found_the_config():
    # torch 2.11 narrowed to the cached config only with several candidates, and never carried
    # the mark over, so the first run of every kernel tuned it again.
    tuned = Config(block=64, found_by_coordesc=True)
    recheck = tuning._recheck_autotune_cache(fake_inductor("hit", tuned))
    one = autotuner(64)
    recheck(one, reload_kernel_from_src=None)
    assert [r.config.block for r in one.compile_results] == [64]
    assert one.compile_results[0].config.found_by_coordesc is True
    several = autotuner(32, 64, 128)
    recheck(several, reload_kernel_from_src=None)
    assert [r.config.block for r in several.compile_results] == [64]
    assert several.compile_results[0].config.found_by_coordesc is True
    # A miss changes nothing: tuning runs, as it must.
    missed = autotuner(32, 64)
    tuning._recheck_autotune_cache(fake_inductor("miss", tuned))(missed, None)
    assert [r.config.block for r in missed.compile_results] == [32, 64]
    assert not hasattr(missed.compile_results[0].config, "found_by_coordesc")


def test_no_scaled_reduction_block_after_a_cache_hit():
    calls = []
    scale = tuning._dynamic_scale_rblock(lambda self: calls.append(self))
    hit = SimpleNamespace(autotune_cache_info={"autotune_cache_state": "hit"})
    miss = SimpleNamespace(autotune_cache_info={"autotune_cache_state": "miss"})
    none = SimpleNamespace(autotune_cache_info=None)
    for autotuner_ in (hit, miss, none):
        scale(autotuner_)
    assert calls == [miss, none]


def test_patches_only_the_sources_it_was_written_against(monkeypatch):
    import torch._inductor.runtime.triton_heuristics as th

    cls = th.CachingAutotuner
    originals = {name: getattr(cls, name) for name in tuning._METHODS}
    for name, method in originals.items():
        monkeypatch.setattr(cls, name, method)  # restored after the test, patched or not
    sources = {name: inspect.getsource(m) for name, m in originals.items()}
    digests = {name: hashlib.sha256(src.encode()).hexdigest()[:16]
               for name, src in sources.items()}
    # This torch as it is: a method whose source shows the fix is left as it is, one with the
    # exact buggy source is replaced, and then a second check finds nothing more to do.
    assert tuning._check_and_patch() is True
    for name, method in originals.items():
        fixed = tuning._METHODS[name][1] in sources[name]
        assert (getattr(cls, name) is method) == fixed, name
    patched = {name: getattr(cls, name) for name in originals}
    assert tuning._check_and_patch() is True
    assert all(getattr(cls, n) is m for n, m in patched.items())
    for name, method in originals.items():
        monkeypatch.setattr(cls, name, method)
    # A source it does not know, without the fix: left alone, tuning off.
    monkeypatch.setattr(tuning, "_METHODS", {n: ({"0" * 16}, "no such fix") for n in digests})
    assert tuning._check_and_patch() is False
    assert all(getattr(cls, n) is m for n, m in originals.items())
    # The exact buggy source (pretend this torch's is it): both methods replaced.
    monkeypatch.setattr(tuning, "_METHODS", {n: ({d}, "no such fix") for n, d in digests.items()})
    assert tuning._check_and_patch() is True
    assert all(getattr(cls, n) is not m for n, m in originals.items())
    assert all(getattr(getattr(cls, n), "storyboard_backport", False) for n in originals)


def test_the_sources_it_knows_are_torch_2_11s():
    # sha256 of CachingAutotuner's two methods as torch 2.11.0 ships them (the rblock one is
    # unchanged in 2.12.0); computed from the wheels, pinned here so an edit is deliberate.
    assert tuning._METHODS["recheck_autotune_cache"][0] == {"2ac93d62014207b1"}
    assert tuning._METHODS["_dynamic_scale_rblock"][0] == {"a495cea0386f26b3"}
