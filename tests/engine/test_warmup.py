"""The GPU warm-up that runs while a model's libraries import (engine/warmup.py).

What it saves is a GPU measurement (bench/first_batch.py with STORYBOARD_WARMUP=0 and without);
here: it runs the operations it names, draws no random numbers, never fails a load, is off on
other devices and when turned off, and load_model starts it before loading and joins it on every
path, failures included.
"""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from storyboard.engine import loading, warmup  # noqa: E402
from storyboard.engine.loading import ModelError, load_model  # noqa: E402
from storyboard.engine.warmup import Warmup, WarmupResult, run_operations  # noqa: E402
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.plan import ModelRef  # noqa: E402

QUIET = RuntimeOptions(progress=False)


def test_the_operations_run_and_draw_no_random_numbers():
    # A render's noise comes from its own generators, but the default ones must not move
    # either: a warm-up that drew from them would change whatever else uses them.
    cpu = torch.random.get_rng_state()
    run_operations("cpu", "fp32", prompts=1, latent=8)
    assert torch.equal(torch.random.get_rng_state(), cpu)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8"])
def test_every_dtype_has_its_operations(dtype):
    run_operations("cpu", dtype, prompts=1, latent=8)


def test_off_for_other_devices_and_when_turned_off(monkeypatch):
    assert Warmup.start("cpu", "fp32") is None
    assert Warmup.start("mps", "fp16") is None
    monkeypatch.setenv("STORYBOARD_WARMUP", "0")
    assert Warmup.start("cuda", "fp16") is None
    monkeypatch.setenv("STORYBOARD_WARMUP", "off")
    assert not warmup.enabled()
    monkeypatch.setenv("STORYBOARD_WARMUP", "1")
    assert warmup.enabled()


def test_a_failing_warm_up_is_recorded_not_raised(monkeypatch):
    def broken(device, dtype):
        raise RuntimeError("no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(warmup, "run_operations", broken)
    result = Warmup.start("cuda", "fp16").join()
    assert result.error == ("RuntimeError: no kernel image is available for execution on the "
                            "device")
    assert result.seconds >= 0


def test_runs_on_its_own_thread(monkeypatch):
    seen = {}

    def record(device, dtype):
        seen["thread"] = threading.current_thread().name
        seen["args"] = (device, dtype)

    monkeypatch.setattr(warmup, "run_operations", record)
    result = Warmup.start("cuda:1", "bf16").join()
    assert result.error is None
    assert seen == {"thread": "storyboard-warmup", "args": ("cuda:1", "bf16")}


class _Recorder:
    """Stands in for Warmup.start: what load_model asked for, and whether it joined."""

    def __init__(self):
        self.started: list[tuple] = []
        self.joined = 0

    def start(self, device, dtype):
        self.started.append((device, dtype))
        return self

    def join(self):
        self.joined += 1
        return WarmupResult(0.25)


def test_load_model_starts_it_with_the_resolved_device_and_dtype(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(loading.Warmup, "start", recorder.start)
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    assert recorder.started == [("cpu", "fp32")] and recorder.joined == 1
    assert model.warmup == WarmupResult(0.25)


def test_load_model_joins_it_when_loading_fails(monkeypatch, tmp_path):
    recorder = _Recorder()
    monkeypatch.setattr(loading.Warmup, "start", recorder.start)
    with pytest.raises(ModelError):
        load_model(ModelRef("folder", str(tmp_path)), QUIET)
    assert recorder.started and recorder.joined == 1


def test_no_warm_up_on_the_cpu():
    assert load_model(ModelRef("builtin", "tiny-sdxl"), QUIET).warmup is None
