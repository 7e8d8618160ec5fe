"""Saved compile artifacts (engine/speed/artifacts.py): built once, loaded by a later session
with the same results, rebuilt when damaged or when their guards do not match, and plain
torch.compile (with the reason) wherever an artifact cannot be made. On the CPU through
"aot_eager" (dynamo's capture and AOTAutograd without kernel generation), as the compiled
render tests do."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from test_render import (BATCH_TOLERANCE, LORA_STORY, PANELS4, QUIET, jobs_of,  # noqa: E402
                         make_lora, pixels, render_all, render_with, speed_up, write_story)

from storyboard.engine.loading import load_model  # noqa: E402
from storyboard.engine.speed import artifact_files as files  # noqa: E402
from storyboard.engine.speed import artifacts  # noqa: E402
from storyboard.engine.speed.artifact_files import MAGIC, read_artifact  # noqa: E402
from storyboard.engine.speed.artifacts import (CompiledMethod, install,  # noqa: E402
                                               model_fingerprint)
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.plan import ModelRef, Speedup  # noqa: E402
from storyboard.plan.speed import choose_speedups  # noqa: E402

pytestmark = pytest.mark.usefixtures("session_cache")


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x, extra=None, scale=None):
        y = self.b(torch.relu(self.a(x)))
        if extra:
            if extra.get("shift") is not None:
                y = y + extra["shift"]
            if extra.get("neg"):
                y = -y
        if scale is not None:
            y = y * scale
        return y


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small(folder):
    torch.manual_seed(0)
    module = Small()
    compiled = CompiledMethod(module, "forward", "small", backend="aot_eager", options=None,
                              folder=folder)
    module.forward = compiled
    return module, compiled


def hows(compiled):
    return [(o.how, o.reason) for o in compiled.outcomes]


def test_built_once_then_loaded_with_the_same_results_and_weights_read_at_each_call(tmp_path):
    x = torch.randn(2, 8)
    shift = {"shift": torch.ones(8)}
    module, compiled = small(tmp_path)
    with torch.no_grad():
        expected = Small.forward(module, x, extra=shift)
        first = module(x, extra=shift)
        again = module(x, extra=shift)
    assert hows(compiled) == [("built", None)]
    assert torch.equal(first, expected) and torch.equal(again, expected)
    (saved,) = tmp_path.glob("small-*.aot")
    assert saved.read_bytes().startswith(MAGIC)
    record, _ = read_artifact(saved)
    assert "torch.nn.modules.linear" in record["sources"]  # what it was traced from

    torch._dynamo.reset()
    other, loaded = small(tmp_path)  # what a later process does: same weights, new objects
    with torch.no_grad():
        assert torch.equal(other(x, extra=shift), expected)
        other.b.weight.mul_(2)  # weights changed in place (a LoRA merged) are seen
        assert torch.equal(other(x, extra=shift), Small.forward(other, x, extra=shift))
    assert [o.how for o in loaded.outcomes] == ["loaded"]
    assert loaded.outcomes[0].bytes == len(read_artifact(saved)[1])
    # Where the seconds went, for the `compiled` event: the load's parts and the first call.
    assert set(loaded.outcomes[0].parts) == {"read", "deserialize", "guards"}
    assert all(s >= 0 for s in loaded.outcomes[0].parts.values())
    assert loaded.outcomes[0].first_call >= 0 and compiled.outcomes[0].first_call >= 0


def test_each_input_signature_has_its_own_artifact(tmp_path):
    module, compiled = small(tmp_path)
    with torch.no_grad():
        module(torch.randn(2, 8))
        module(torch.randn(3, 8))  # another batch shape
        module(torch.randn(3, 8), extra={"shift": torch.ones(8)})  # another structure
        module(torch.randn(3, 8))
    assert [o.how for o in compiled.outcomes] == ["built"] * 3
    assert len(list(tmp_path.glob("small-*.aot"))) == 3


def test_inputs_that_differ_anywhere_get_their_own_artifacts(tmp_path):
    """None or a tensor, a flag, a shape, deep inside a dict: the portable guards check none
    but tensors' layouts, so each is part of the artifact's name, and every result is right."""
    x = torch.randn(2, 8)
    module, compiled = small(tmp_path)
    extras = [{"shift": None, "neg": False}, {"shift": torch.ones(8), "neg": False},
              {"shift": None, "neg": True}, {"shift": torch.ones(1), "neg": False}]
    with torch.no_grad():
        for extra in extras * 2:
            assert torch.equal(module(x, extra=extra), Small.forward(module, x, extra=extra))
    assert hows(compiled) == [("built", None)] * 4


def test_what_only_the_guards_see_falls_back_to_torch_compile(tmp_path):
    """The same shapes with other strides: each call is matched to its artifact without
    asking every tensor its strides, and the artifact's guards refuse it; plain torch.compile
    then, with the reason, and the right result."""
    x = torch.randn(2, 8)
    strided = torch.randn(8, 2).t()
    module, compiled = small(tmp_path)
    with torch.no_grad():
        module(x)
        assert torch.equal(module(strided), Small.forward(module, strided))
    (built, fallback) = hows(compiled)
    assert built == ("built", None)
    assert fallback[0] == "torch.compile" and "guards failed" in fallback[1]


def test_an_artifact_that_cannot_be_saved_still_serves_its_process(tmp_path, monkeypatch):
    x = torch.randn(2, 8)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path))

    monkeypatch.setattr(artifacts, "write_artifact", full_disk)
    module, compiled = small(tmp_path)
    with torch.no_grad():
        assert torch.equal(module(x), Small.forward(module, x))
        module(x)
    ((how, reason),) = hows(compiled)
    assert how == "built" and "not saved" in reason and "No space left" in reason
    assert not list(tmp_path.iterdir())


def test_an_artifact_traced_from_other_code_is_rebuilt(tmp_path, monkeypatch):
    """A library patched or reinstalled under the same version: its source's digest differs
    from the one the artifact recorded."""
    x = torch.randn(2, 8)
    module, _ = small(tmp_path)
    with torch.no_grad():
        module(x)
    torch._dynamo.reset()
    monkeypatch.setitem(files._SOURCES, "torch.nn.modules.linear", ("linear.py", "0" * 64))
    other, compiled = small(tmp_path)
    with torch.no_grad():
        assert torch.equal(other(x), Small.forward(other, x))
    ((how, reason),) = hows(compiled)
    assert how == "built" and "torch.nn.modules.linear" in reason


def test_a_loaded_artifact_that_fails_its_first_call_is_not_used(tmp_path, monkeypatch):
    x = torch.randn(2, 8)
    module, _ = small(tmp_path)
    with torch.no_grad():
        module(x)

    class Broken:
        def guard_check(self, *args, **kwargs):
            return True

        def __call__(self, *args, **kwargs):
            raise RuntimeError("CUDA driver error: device kernel image is invalid")

    monkeypatch.setattr(torch.compiler, "load_compiled_function", lambda f: Broken())
    torch._dynamo.reset()
    other, compiled = small(tmp_path)
    with torch.no_grad():
        assert torch.equal(other(x), Small.forward(other, x))
        assert torch.equal(other(x), Small.forward(other, x))
    assert [o.how for o in compiled.outcomes] == ["loaded", "torch.compile"]
    assert "its first call failed" in compiled.outcomes[1].reason


def test_a_damaged_artifact_is_rebuilt_never_loaded(tmp_path):
    x = torch.randn(2, 8)
    module, _ = small(tmp_path)
    with torch.no_grad():
        expected = module(x)
    (saved,) = tmp_path.glob("small-*.aot")
    data = bytearray(saved.read_bytes())
    data[-10] ^= 0xFF
    saved.write_bytes(bytes(data))
    torch._dynamo.reset()
    other, compiled = small(tmp_path)
    with torch.no_grad():
        assert torch.equal(other(x), expected)
    ((how, reason),) = hows(compiled)
    assert how == "built" and "damaged" in reason
    assert read_artifact(saved) is not None  # written again, whole


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file owners")
def test_another_users_file_is_neither_loaded_nor_replaced(tmp_path, monkeypatch):
    x = torch.randn(2, 8)
    module, _ = small(tmp_path)
    with torch.no_grad():
        expected = module(x)
    (saved,) = tmp_path.glob("small-*.aot")
    before = saved.read_bytes()
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)  # the file is now someone else's
    torch._dynamo.reset()
    other, compiled = small(tmp_path)
    with torch.no_grad():
        assert torch.equal(other(x), expected)
    ((how, reason),) = hows(compiled)
    assert how == "built" and "owned by another user" in reason
    assert saved.read_bytes() == before and list(tmp_path.iterdir()) == [saved]


def test_an_artifact_whose_guards_do_not_match_is_rebuilt(tmp_path):
    x2, x3 = torch.randn(2, 8), torch.randn(3, 8)
    module, _ = small(tmp_path)
    with torch.no_grad():
        module(x2)
    (for_two,) = tmp_path.glob("small-*.aot")
    torch._dynamo.reset()
    other, compiled = small(tmp_path)
    # The artifact made for 2 rows where the one for 3 rows would be: its guards say no.
    with torch.no_grad():
        key = compiled._key((x3,), {})
        for_two.rename(tmp_path / f"small-{key[:40]}.aot")
        assert torch.equal(other(x3), Small.forward(other, x3))
    ((how, reason),) = hows(compiled)
    assert how == "built" and "guards did not match" in reason


def test_inputs_it_cannot_name_and_code_it_cannot_save_fall_back_to_torch_compile(tmp_path):
    x = torch.randn(2, 8)
    module, compiled = small(tmp_path)
    with torch.no_grad():
        # A number would be a constant of the graph: one artifact per value.
        assert torch.equal(module(x, scale=0.5), Small.forward(module, x, scale=0.5))
    assert hows(compiled) == [("torch.compile", "inputs other than tensors and flags")]

    class Breaks(Small):
        def forward(self, x, extra=None, scale=None):
            y = self.a(x)
            torch._dynamo.graph_break()  # aot_compile needs one whole graph
            return self.b(y)

    torch._dynamo.reset()
    broken = Breaks()
    fallback = install(broken, "forward", "breaks", backend="aot_eager", options=None)
    fallback.folder = tmp_path
    with torch.no_grad():
        assert torch.equal(broken(x), Breaks.forward(broken, x))
    ((how, reason),) = hows(fallback)
    assert how == "torch.compile" and "could not be compiled as an artifact" in reason
    assert not list(tmp_path.glob("breaks-*"))


def test_switched_off_by_the_environment(monkeypatch):
    assert artifacts.supported()  # this torch has them
    monkeypatch.setenv("STORYBOARD_COMPILE_ARTIFACTS", "0")
    assert not artifacts.supported()


def test_the_fingerprint_covers_what_the_portable_guards_do_not():
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    unet = model.pipe.unet
    seen = {model_fingerprint(unet)}
    unet.to(memory_format=torch.channels_last)  # strides of the weights
    seen.add(model_fingerprint(unet))
    unet.fuse_qkv_projections()  # layers and processors
    seen.add(model_fingerprint(unet))
    attn = next(m for n, m in unet.named_modules() if n.endswith("attn1"))
    attn.heads = attn.heads  # the same setting: the same name
    seen_before = model_fingerprint(unet)
    assert seen_before in seen
    attn.rescale_output_factor = 2.0  # a plain setting of one layer
    seen.add(model_fingerprint(unet))
    unet.eval().train()  # training mode
    seen.add(model_fingerprint(unet))
    assert len(seen) == 5


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-kolors"])
def test_a_render_builds_its_artifacts_and_a_later_session_loads_them(tmp_path, monkeypatch,
                                                                       name):
    """The tiny SDXL UNet and VAE decoder through a session, as a build on a GPU does: the
    second session (what a later process does) loads instead of tracing, with the same pixels,
    and both match eager rendering within the batch tolerance."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile"))  # none yet
    jobs = jobs_of(write_story(tmp_path, PANELS4, model=name))
    eager = render_all(jobs, batch_size=2)
    # What a render on a GPU gets (the plan's choice is by device name), kernel tuning aside.
    wanted = [s for s in choose_speedups(device="cuda", dtype="fp16", loras=False, work={},
                                         options=RuntimeOptions(compile=True))
              if s is not Speedup.TUNED_KERNELS]
    runs = []
    for _ in range(2):
        torch._dynamo.reset()
        model = load_model(ModelRef("builtin", name), QUIET)
        state = speed_up(model, wanted, backend="aot_eager")
        assert len(state.speed.compiled) == 2
        events = []
        results = {r.job.panel: r for r in render_with(jobs, model=model, batch_size=2,
                                                        on_event=events.append)}
        runs.append((results, [(e["module"], e["how"]) for e in events
                               if e["event"] == "compiled"]))
    (first, built), (second, loaded) = runs
    assert built == [("unet", "built"), ("vae", "built")]
    assert loaded == [("unet", "loaded"), ("vae", "loaded")]
    for pid in eager:
        assert (pixels(first[pid]) == pixels(second[pid])).all(), pid
        assert abs(pixels(first[pid]) - pixels(eager[pid])).max() <= BATCH_TOLERANCE, pid


def test_a_lora_after_compiled_fused_projections_acts_through_a_new_artifact(tmp_path,
                                                                             monkeypatch):
    """Compiled without LoRAs (fused projections), then a LoRA story on the same model: the
    projections are unfused and the LoRA layers get an artifact of their own (or plain
    torch.compile where the guards see the change); the panels are the eager LoRA panels
    within the batch tolerance."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile"))
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    lora_jobs = jobs_of(write_story(tmp_path, LORA_STORY))
    eager = render_all(lora_jobs, batch_size=2)
    wanted = [s for s in choose_speedups(device="cuda", dtype="fp16", loras=False, work={},
                                         options=RuntimeOptions(compile=True))
              if s is not Speedup.TUNED_KERNELS]
    assert Speedup.FUSED_QKV in wanted
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    state = speed_up(model, wanted, backend="aot_eager")
    (tmp_path / "plain").mkdir()
    plain = jobs_of(write_story(tmp_path / "plain", PANELS4))
    # Batches of one panel: the shape the LoRA story's batches have (one per LoRA set), so
    # only the description of the model can tell their artifacts apart.
    assert len(list(render_with(plain[:2], model=model, batch_size=1))) == 2
    unet = state.speed.compiled[0]
    before = set(unet._functions)
    fast = {r.job.panel: r for r in render_with(lora_jobs, model=model, batch_size=2)}
    assert Speedup.FUSED_QKV not in state.speed.applied
    assert set(unet._functions) - before  # the UNet with LoRA layers: an artifact of its own
    for pid in eager:
        assert fast[pid].status == "rendered"
        assert abs(pixels(fast[pid]) - pixels(eager[pid])).max() <= BATCH_TOLERANCE, pid


def test_clean_removes_artifacts_of_changed_libraries_and_damaged_ones_only(tmp_path,
                                                                           monkeypatch):
    """`storyboard clean`: an artifact traced from a source file that changed (a library
    upgraded) or is gone, and a damaged one, are removed; a sound one, another user's, and
    files of other names stay. Without importing torch's compiler (it reads the records)."""
    from storyboard.commands.clean import clean
    from storyboard.output.cache import PanelCache

    folder = tmp_path / "cache" / "inductor" / files.FOLDER  # beside the panel cache
    library = tmp_path / "lib"
    library.mkdir()
    sources = {}
    for name in ("kept", "upgraded", "removed"):
        (library / f"{name}.py").write_text(f"X = '{name}'\n")
        sources[name] = [str(library / f"{name}.py"),
                         files.file_digest(str(library / f"{name}.py"))]
    write = files.write_artifact
    write(folder / f"unet-{'1' * 40}.aot", {"sources": {"kept": sources["kept"]}}, b"ok")
    write(folder / f"unet-{'2' * 40}.aot", {"sources": {"upgraded": sources["upgraded"]}}, b"x")
    write(folder / f"vae-{'3' * 40}.aot", {"sources": {"removed": sources["removed"]}}, b"x")
    damaged = folder / f"vae-{'4' * 40}.aot"
    write(damaged, {"sources": {}}, b"payload")
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")
    other = folder / "notes-mine.aot"
    other.write_bytes(b"a file storyboard did not name")
    (library / "upgraded.py").write_text("X = 'new'\n")
    (library / "removed.py").unlink()
    stale = [folder / f"unet-{'2' * 40}.aot", folder / f"vae-{'3' * 40}.aot", damaged]
    assert files.stale_artifacts(folder) == sorted(stale)
    cache = PanelCache(tmp_path / "cache")
    assert clean([], dry_run=True, cache=cache).artifacts == 3 and all(p.exists() for p in stale)
    assert clean([], cache=cache).artifacts == 3
    assert sorted(p.name for p in folder.iterdir()) == [other.name, f"unet-{'1' * 40}.aot"]
    # Another user's file is never removed, whatever it holds.
    theirs = folder / f"unet-{'5' * 40}.aot"
    write(theirs, {"sources": {"removed": sources["removed"]}}, b"x")
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)
    assert clean([], cache=cache).artifacts == 0 and theirs.exists()


def test_a_change_only_the_description_sees_is_seen_at_the_next_render(tmp_path, monkeypatch):
    """A layer's plain setting changed between renders (here one self-attention's output
    rescale): the artifact's guards do not check it, the description of the model does, and
    it is taken again before every pipeline call; the panels follow the change as eager ones
    do."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile"))
    jobs = jobs_of(write_story(tmp_path, PANELS4))[:2]
    wanted = [s for s in choose_speedups(device="cuda", dtype="fp16", loras=False, work={},
                                         options=RuntimeOptions(compile=True))
              if s is not Speedup.TUNED_KERNELS]
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    state = speed_up(model, wanted, backend="aot_eager")
    before = {r.job.panel: r for r in render_with(jobs, model=model, batch_size=2)}

    def rescale(unet):
        attn = next(m for n, m in unet.named_modules() if n.endswith("attn1"))
        attn.rescale_output_factor = 0.25

    rescale(model.pipe.unet)
    after = {r.job.panel: r for r in render_with(jobs, model=model, batch_size=2)}
    eager_model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    rescale(eager_model.pipe.unet)
    eager = {r.job.panel: r for r in render_with(jobs, model=eager_model, batch_size=2)}
    assert [o.how for o in state.speed.compiled[0].outcomes] == ["built", "built"]
    for pid in eager:
        assert abs(pixels(after[pid]) - pixels(before[pid])).max() > BATCH_TOLERANCE, pid
        assert abs(pixels(after[pid]) - pixels(eager[pid])).max() <= BATCH_TOLERANCE, pid


def _artifact(folder, n: int, size: int, mtime: int):
    path = folder / f"unet-{n:040x}.aot"
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_prune_removes_the_least_recently_used_until_the_folder_fits(tmp_path):
    old, mid, new = (_artifact(tmp_path, n, 100, 1_000 + n) for n in range(3))
    other = tmp_path / "notes.aot"  # not a name storyboard gives: never touched
    other.write_bytes(b"y" * 1000)
    (tmp_path / f"vae-{'f' * 40}.aot").symlink_to(other)  # not a regular file: left alone
    assert files.prune(tmp_path, keep=new, limit=250) == [old]
    assert files.prune(tmp_path, keep=new, limit=0) == [mid]  # never the one just written
    assert new.exists() and other.exists() and (tmp_path / f"vae-{'f' * 40}.aot").is_symlink()
    assert files.prune(tmp_path / "missing", keep=new, limit=0) == []


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file owners")
def test_prune_never_removes_another_users_artifacts(tmp_path, monkeypatch):
    theirs = [_artifact(tmp_path, n, 100, 1_000 + n) for n in range(2)]
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)  # the files are now someone else's
    assert files.prune(tmp_path, keep=tmp_path / "none.aot", limit=0) == []
    assert all(path.exists() for path in theirs)


def test_a_loaded_artifact_counts_as_recently_used(tmp_path, monkeypatch):
    """Builds keep the folder within STORYBOARD_COMPILE_ARTIFACTS_MB: loading an artifact
    marks it used, so the one pruned is the one no build asked for."""
    module, compiled = small(tmp_path)
    with torch.no_grad():
        module(torch.randn(2, 8))
        module(torch.randn(3, 8))
    two, three = (sorted(tmp_path.glob("small-*.aot"), key=lambda p: p.stat().st_mtime_ns))
    for path in (two, three):
        os.utime(path, (1_000, 1_000))
    torch._dynamo.reset()
    monkeypatch.setenv(files.LIMIT_ENV, "0")  # room for only the newest
    other, loaded = small(tmp_path)
    with torch.no_grad():
        other(torch.randn(2, 8))  # loads (and so marks) the first
    assert [o.how for o in loaded.outcomes] == ["loaded"] and two.stat().st_mtime > 1_000
    with torch.no_grad():
        other(torch.randn(4, 8))  # a new shape: built, and the folder pruned
    assert [(o.how, o.pruned) for o in loaded.outcomes] == [("loaded", None), ("built", 2)]
    assert len(list(tmp_path.glob("small-*.aot"))) == 1
