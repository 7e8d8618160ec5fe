"""engine/speed/timings.py: what this machine measured, kept beside its compile cache, and
what "auto" decides from it."""

from __future__ import annotations

import json

import pytest

from storyboard.engine.speed.timings import RECORD, Timings, read_record, record_path
from storyboard.plan import compile_story
from storyboard.plan.batches import plan_batches
from storyboard.plan.speed import compile_pays, unet_work
from storyboard.story import load_story



@pytest.fixture
def batches(tmp_path):
    panels = "".join(f"  - {{id: p{i}, prompt: cat {i}, seed: {i}}}\n" for i in range(40))
    story = tmp_path / "story.yaml"
    story.write_text("version: 1\nmodel: tiny-sdxl\ndefaults: {steps: 50, width: 64, "
                     f"height: 64}}\npanels:\n{panels}", encoding="utf-8")
    return plan_batches(compile_story(load_story(story)), 8)  # 5 batches of 8 x 50 steps


def test_the_record_lives_in_the_compile_cache_it_describes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert record_path() == tmp_path / "inductor" / RECORD


def test_eager_then_compiled_builds_teach_auto_to_compile(tmp_path, batches):
    path = tmp_path / RECORD
    work = unet_work(batches)
    shape = (8, 64, 64, True)
    # 1. A first build renders eagerly: 400 panel-steps a batch at 37.5 ms, after a first batch
    #    that also started the GPU's libraries (not counted).
    first = Timings("k", path)
    first.batch_done(batches[0], 19.0, compiled=False)
    assert first.measured() == {}
    for batch in batches[1:]:
        first.batch_done(batch, 15.0, compiled=False)
    assert first.measured()[shape].eager == pytest.approx(0.0375)
    assert not compile_pays(work, first.measured()), "never compiled here: not yet"
    # 2. `build --compile` (a new process): its first batch compiles (170 s more), the others
    #    run at 29 ms a panel-step.
    second = Timings("k", path)
    second.batch_done(batches[0], 15.0 + 170.0, compiled=True)
    for batch in batches[1:]:
        second.batch_done(batch, 11.6, compiled=True)
    t = second.measured()[shape]
    assert t.cold_compile == pytest.approx(170.0) and t.warm_compile is None
    assert t.compiled == pytest.approx(0.029)
    # 3. Now auto compiles 40 panels (17 s saved against the 7.5 s prior for a warm compile)...
    assert compile_pays(work, second.measured())
    # 4. ...and the warm compile it measures replaces the prior: 30 s does not pay.
    third = Timings("k", path)
    third.batch_done(batches[0], 11.6 + 30.0, compiled=True)
    assert third.measured()[shape].warm_compile == pytest.approx(30.0)
    assert not compile_pays(work, third.measured())
    # Other models, dtypes, GPUs or torch versions are other keys: nothing measured for them.
    assert Timings("other", path).measured() == {}


def test_building_an_artifact_is_a_cold_compile_even_on_a_warm_cache(tmp_path, batches):
    """A shape compiled here before (torch.compile's cache warm) whose saved artifact is built
    now (storyboard upgraded, a library changed): those seconds are not what a later process
    pays to load it, and must not stop auto from compiling; the next load measures that."""
    path = tmp_path / RECORD
    work = unet_work(batches)
    shape = (8, 64, 64, True)
    earlier = Timings("k", path)
    earlier.batches = 1
    earlier.batch_done(batches[1], 15.0, compiled=False)
    earlier.batch_done(batches[0], 11.6 + 170.0, compiled=True)
    earlier.batch_done(batches[1], 11.6, compiled=True)
    assert earlier.measured()[shape].compiled_here
    building = Timings("k", path)
    building.batch_done(batches[0], 11.6 + 45.0, compiled=True, built=True)
    t = building.measured()[shape]
    assert t.cold_compile == pytest.approx(45.0) and t.warm_compile is None
    assert compile_pays(work, building.measured())  # 17 s saved against the prior, as before
    loading = Timings("k", path)
    loading.batch_done(batches[0], 11.6 + 6.0, compiled=True)
    assert loading.measured()[shape].warm_compile == pytest.approx(6.0)


def test_a_compiled_batch_with_no_speed_to_compare_still_counts_as_compiled(tmp_path, batches):
    timings = Timings("k", tmp_path / RECORD)
    timings.batch_done(batches[0], 200.0, compiled=True)
    (t,) = timings.measured().values()
    assert t.compiled_here and t.cold_compile == 200.0


@pytest.mark.parametrize("damage", [
    b"", b"not json", b"[]", b'{"version": 99, "entries": {}}',
    b'{"version": 1, "entries": []}',
    b'{"version": 1, "entries": {"k": {"8x64x64-cfg": {"eager": "fast"}}}}',
    b'{"version": 1, "entries": {"k": {"8x64x64-cfg": {"eager": -1}}}}',
    b'{"version": 1, "entries": {"k": {"8x64x64-cfg": {"rm -rf": 1}}}}',
    b'{"version": 1, "entries": {"k": {"8x64x64-cfg": {"eager": true}}}}',
    b"\xff\xfe" * 10,
])
def test_a_damaged_record_counts_as_empty_and_is_written_again(tmp_path, batches, damage):
    path = tmp_path / RECORD
    path.write_bytes(damage)
    timings = Timings("k", path)
    assert timings.measured() == {}
    timings.batches = 1  # past the process's first batch
    timings.batch_done(batches[0], 15.0, compiled=False)
    assert json.loads(path.read_text())["entries"]["k"]["8x64x64-cfg"]["eager"] == 0.0375


def test_only_a_regular_bounded_file_is_read(tmp_path):
    (tmp_path / "dir").mkdir()
    assert read_record(tmp_path / "dir") == {}
    big = tmp_path / "big.json"
    big.write_bytes(b'{"version": 1, "entries": {}, "pad": "' + b"x" * (2 << 20) + b'"}')
    assert read_record(big) == {}
    assert read_record(tmp_path / "missing.json") == {}


def test_a_record_that_cannot_be_written_is_no_failure(tmp_path, batches):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    timings = Timings("k", blocker / RECORD)  # its folder is a file
    timings.batches = 1
    timings.batch_done(batches[0], 15.0, compiled=False)
    assert timings.measured() == {}


def test_off_cuda_nothing_is_measured():
    class Model:
        device, family, dtype = "cpu", "sdxl", "fp32"

    assert Timings.for_model(Model(), loras=False, tune=None) is None
