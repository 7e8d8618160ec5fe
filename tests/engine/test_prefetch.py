"""Weights read on a thread while the libraries import (engine/prefetch.py).

What it saves is a GPU measurement (bench/overlap_probe.py; bench/e2e.py's build-noprefetch);
here, on the CPU with ``STORYBOARD_PREFETCH=1``: a model loaded through it is the model the
libraries load themselves, tensor for tensor, buffers and dtypes included, for both built-in
models in fp16, bf16 and fp32; sharded and variant files are read as the libraries choose them;
anything it should not guess (mismatched keys, a class that keeps float32 modules, a broken file,
a shard index naming files elsewhere) is left to the library, with the reason recorded; it is
off where it should be, and a load that fails leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from storyboard.engine import loading, prefetch  # noqa: E402
from storyboard.engine.builtin import builtin_folder  # noqa: E402
from storyboard.engine.loading import ModelError, load_model  # noqa: E402
from storyboard.engine.prefetch import Prefetch, weight_files  # noqa: E402
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.plan import ModelRef  # noqa: E402

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae")


@pytest.fixture(autouse=True)
def _test_cache(session_cache):
    """The built-in models these tests copy are built in the test session's cache."""


@pytest.fixture
def on(monkeypatch):
    """Prefetching on the CPU; ``on[name]`` is the component it built last under that name."""
    monkeypatch.setenv("STORYBOARD_PREFETCH", "1")
    built: dict = {}
    original = prefetch.build_component

    def spy(sub, *args, **kwargs):
        built[sub.name] = original(sub, *args, **kwargs)
        return built[sub.name]

    monkeypatch.setattr(prefetch, "build_component", spy)
    return built


def assert_uses_built(model, built: dict) -> None:
    """The pipeline holds the very objects the prefetch built, under their names."""
    assert model.prefetch.built and set(model.prefetch.built) <= set(built)
    for name in model.prefetch.built:
        assert getattr(model.pipe, name) is built[name], name


def _load(ref: ModelRef, dtype: str = "fp32") -> loading.LoadedModel:
    return load_model(ref, RuntimeOptions(progress=False, device="cpu", dtype=dtype))


def _library_load(ref: ModelRef, monkeypatch, dtype: str = "fp32") -> loading.LoadedModel:
    with monkeypatch.context() as m:
        m.setenv("STORYBOARD_PREFETCH", "0")
        model = _load(ref, dtype)
    assert model.prefetch is None
    return model


def assert_same_model(a, b) -> None:
    """The same components, classes, tensors (values and dtypes), buffers, configs, modes."""
    for name in COMPONENTS:
        ca, cb = getattr(a.pipe, name, None), getattr(b.pipe, name, None)
        if cb is None:
            assert ca is None
            continue
        assert type(ca) is type(cb), name
        sa, sb = ca.state_dict(), cb.state_dict()
        assert list(sa) == list(sb), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), (name, key)
        ba, bb = dict(ca.named_buffers()), dict(cb.named_buffers())
        assert list(ba) == list(bb), name
        for key in ba:
            assert ba[key].dtype == bb[key].dtype and torch.equal(ba[key], bb[key]), (name, key)
        assert ca.training is cb.training is False, name
        config_a = dict(ca.config) if hasattr(ca.config, "items") else ca.config.to_dict()
        config_b = dict(cb.config) if hasattr(cb.config, "items") else cb.config.to_dict()
        assert config_a == config_b, name
        assert getattr(ca.config, "_name_or_path") == getattr(cb.config, "_name_or_path"), name
        assert getattr(ca, "name_or_path", None) == getattr(cb, "name_or_path", None), name


@pytest.mark.parametrize("name,dtype", [("tiny-sdxl", "fp32"), ("tiny-sdxl", "bf16"),
                                        ("tiny-kolors", "fp16"), ("tiny-kolors", "fp32")])
def test_a_prefetched_model_is_the_model_the_libraries_load(on, monkeypatch, name, dtype):
    ref = ModelRef("builtin", name)
    builtin_folder(name)
    model = _load(ref, dtype)
    weighted = [c for c in COMPONENTS if (builtin_folder(name) / c).is_dir()]
    assert model.prefetch is not None and model.prefetch.built == tuple(weighted)
    assert_uses_built(model, on)
    assert model.prefetch.skipped == {} and model.prefetch.bytes > 0
    assert_same_model(model, _library_load(ref, monkeypatch, dtype))


def test_a_prefetched_model_renders_the_same_pixels(on, monkeypatch):
    ref = ModelRef("builtin", "tiny-sdxl")
    pictures = []
    first = _load(ref)
    assert_uses_built(first, on)
    for model in (first, _library_load(ref, monkeypatch)):
        out = model.pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="pt",
                         generator=torch.Generator().manual_seed(3)).images
        pictures.append(out)
    assert torch.equal(*pictures)


def _copy(tmp_path, name: str = "tiny-sdxl"):
    folder = tmp_path / name
    shutil.copytree(builtin_folder(name), folder)
    return folder


def _rewrite(path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_sharded_weights_are_read_whole(on, monkeypatch, tmp_path):
    folder = _copy(tmp_path)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(str(folder / "unet"), max_shard_size="100KB")
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    files, skipped = weight_files(folder)
    assert len(files["unet"].paths) > 1 and skipped == {}
    ref = ModelRef("folder", str(folder))
    model = _load(ref)
    assert "unet" in model.prefetch.built
    assert_uses_built(model, on)
    assert_same_model(model, _library_load(ref, monkeypatch))


def test_a_variant_is_read_only_from_its_own_file(tmp_path):
    folder = _copy(tmp_path)
    for sub in ("unet", "vae"):
        (folder / sub / "diffusion_pytorch_model.safetensors").rename(
            folder / sub / "diffusion_pytorch_model.fp16.safetensors")
    files, skipped = weight_files(folder, "fp16")
    assert files["unet"].paths == (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors",)
    assert "text_encoder" not in files  # no model.fp16.safetensors: the library's business
    files, skipped = weight_files(folder)
    assert "unet" not in files and skipped["unet"] == "weights not in one safetensors file"


@pytest.mark.parametrize("shard", ["../vae/diffusion_pytorch_model.safetensors",
                                   ["part.safetensors"], "part.bin"])
def test_a_shard_index_naming_files_elsewhere_is_left_alone(tmp_path, shard):
    folder = _copy(tmp_path)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "part.safetensors")
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"conv_in.weight": shard}}))
    files, skipped = weight_files(folder)
    assert "unet" not in files
    assert skipped["unet"] == "a shard index naming other than safetensors files in its folder"


def test_keys_the_model_does_not_have_are_left_to_the_library(on, monkeypatch, tmp_path):
    folder = _copy(tmp_path)
    _rewrite(folder / "unet" / "diffusion_pytorch_model.safetensors",
             lambda t: t.update(extra=torch.zeros(2)))
    ref = ModelRef("folder", str(folder))
    model = _load(ref)
    assert "unet" not in model.prefetch.built
    assert model.prefetch.skipped["unet"].startswith("keys do not match UNet2DConditionModel")
    assert set(model.prefetch.built) == {"text_encoder", "text_encoder_2", "vae"}
    assert_same_model(model, _library_load(ref, monkeypatch))


def test_a_class_keeping_float32_modules_is_left_to_the_library(on, monkeypatch):
    from diffusers import AutoencoderKL

    monkeypatch.setattr(AutoencoderKL, "_keep_in_fp32_modules", ["decoder"], raising=False)
    model = _load(ModelRef("builtin", "tiny-sdxl"), "bf16")
    assert model.prefetch.skipped == {"vae": "keeps modules in float32"}
    assert model.pipe.vae.decoder.conv_in.weight.dtype == torch.float32  # the library kept it


def test_a_broken_file_fails_the_load_as_it_does_without_prefetch(on, monkeypatch, tmp_path):
    folder = _copy(tmp_path)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    ref = ModelRef("folder", str(folder))
    with pytest.raises(ModelError) as with_prefetch:
        _load(ref)
    monkeypatch.setenv("STORYBOARD_PREFETCH", "0")
    with pytest.raises(ModelError) as without:
        _load(ref)
    assert str(with_prefetch.value) == str(without.value)


def test_the_reading_thread_records_a_refused_file(on, tmp_path):
    folder = _copy(tmp_path)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    components, result = Prefetch.start(folder, "cpu").components(torch.float32, COMPONENTS)
    assert "vae" not in components and result.skipped["vae"].startswith("WeightFileError")
    assert set(result.built) == {"text_encoder", "text_encoder_2", "unet"}


def test_off_when_turned_off_on_other_devices_and_for_other_sources(monkeypatch, tmp_path):
    folder = _copy(tmp_path)
    monkeypatch.delenv("STORYBOARD_PREFETCH", raising=False)
    assert Prefetch.start(folder, "cpu") is None  # auto: CUDA only
    monkeypatch.setenv("STORYBOARD_PREFETCH", "0")
    assert Prefetch.start(folder, "cuda") is None
    monkeypatch.setenv("STORYBOARD_PREFETCH", "1")
    assert Prefetch.start(folder, "cuda", offload=True) is None
    assert Prefetch.start(None, "cuda") is None
    assert loading._local_folder(ModelRef("repo", "someone/model")) is None
    assert loading._local_folder(ModelRef("folder", str(tmp_path / "nothing"))) is None
    assert loading._local_folder(ModelRef("folder", str(folder))) == folder


def test_a_load_that_fails_leaves_no_tensors_behind(on, monkeypatch, tmp_path):
    folder = _copy(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "Unknown"}))
    started: list[Prefetch] = []
    original = Prefetch.start.__func__

    def record(cls, *args, **kwargs):
        started.append(original(cls, *args, **kwargs))
        return started[-1]

    monkeypatch.setattr(loading.Prefetch, "start", classmethod(record))
    with pytest.raises(ModelError, match="cannot tell the pipeline family"):
        _load(ModelRef("folder", str(folder)))
    assert started and started[0] is not None and started[0]._tensors == {}
    assert not started[0]._thread.is_alive()


def test_the_mode_reads_the_environment(monkeypatch):
    for value, expected in (("", "auto"), ("auto", "auto"), ("0", "off"), ("off", "off"),
                            ("1", "on"), ("yes", "on")):
        monkeypatch.setenv("STORYBOARD_PREFETCH", value)
        assert prefetch.mode() == expected


def _handmade(path, entries: list[tuple[str, str, list[int], bytes]]) -> None:
    """A safetensors file laid out exactly as given (names, dtypes, shapes, bytes in order)."""
    header, offset = {}, 0
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(e[3] for e in entries))


def test_a_tensor_at_an_odd_offset_is_read_right(tmp_path):
    import numpy as np

    halves = np.array([1.5, -2.25, 3.0, 0.125], dtype="<f2")
    path = tmp_path / "odd.safetensors"
    _handmade(path, [("bytes", "U8", [3], b"\x01\x02\x03"),
                     ("halves", "F16", [2, 2], halves.tobytes())])
    tensors = prefetch.read_file(path, "cpu")
    assert tensors["bytes"].tolist() == [1, 2, 3]
    assert tensors["halves"].dtype == torch.float16
    assert tensors["halves"].tolist() == [[1.5, -2.25], [3.0, 0.125]]


def test_a_dtype_it_does_not_know_leaves_the_file_to_the_library(tmp_path):
    path = tmp_path / "other.safetensors"
    _handmade(path, [("x", "F4", [2], b"\x00")])
    with pytest.raises(prefetch._NotBuilt, match="dtype F4"):
        prefetch.read_file(path, "cpu")


def test_a_component_named_like_a_keyword_is_never_passed_as_one(on, monkeypatch, tmp_path):
    """model_index.json naming a component ``trust_remote_code`` (or ``dtype``...) must not
    set that argument of from_pretrained: the entry is left to diffusers, which ignores it."""
    folder = _copy(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    for key in ("trust_remote_code", "dtype", "custom_pipeline"):
        index[key] = ["diffusers", "AutoencoderKL"]
        shutil.copytree(folder / "vae", folder / key)
    (folder / "model_index.json").write_text(json.dumps(index))
    ref = ModelRef("folder", str(folder))
    model = _load(ref)
    for key in ("trust_remote_code", "dtype", "custom_pipeline"):
        assert model.prefetch.skipped[key] == "not one of the pipeline's components"
    assert set(model.prefetch.built) == {"text_encoder", "text_encoder_2", "unet", "vae"}
    assert_same_model(model, _library_load(ref, monkeypatch))


def test_a_whole_file_beside_a_shard_index_is_left_to_the_library(tmp_path):
    folder = _copy(tmp_path)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"conv_in.weight": "diffusion_pytorch_model-00001.safetensors"}}))
    files, skipped = weight_files(folder)
    assert "unet" not in files and skipped["unet"] == "weights both whole and sharded"
    (unet / "diffusion_pytorch_model.safetensors.index.json").rename(
        unet / "diffusion_pytorch_model.safetensors.index.fp16.json")
    files, skipped = weight_files(folder, "fp16")
    assert "unet" not in files and skipped["unet"] == "a sharded variant"


def test_a_component_with_python_files_is_left_to_the_library(tmp_path):
    folder = _copy(tmp_path)
    (folder / "unet" / "diffusers.py").write_text("raise SystemExit('never imported here')\n")
    files, skipped = weight_files(folder)
    assert "unet" not in files and skipped["unet"] == "Python files in its folder"


def test_a_missing_shard_leaves_only_its_component(on, tmp_path):
    folder = _copy(tmp_path)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "part.safetensors")
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"conv_in.weight": "part.safetensors",
                        "conv_out.weight": "gone.safetensors"}}))
    components, result = Prefetch.start(folder, "cpu").components(torch.float32, COMPONENTS)
    assert result.skipped["unet"].startswith("FileNotFoundError")
    assert set(result.built) == {"text_encoder", "text_encoder_2", "vae"}


def test_a_tensor_of_another_kind_than_the_models_is_left_to_the_library(on, monkeypatch,
                                                                          tmp_path):
    """Kolors' rotary table stored as integers: the libraries convert it, so they load it."""
    folder = _copy(tmp_path, "tiny-kolors")
    path = folder / "text_encoder" / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        key = next(k for k in fh.keys() if k.endswith("inv_freq"))
    _rewrite(path, lambda t: t.update({key: t[key].round().to(torch.int64)}))
    ref = ModelRef("folder", str(folder))
    model = _load(ref, "fp16")
    assert model.prefetch.skipped["text_encoder"] == (
        f"{key} is int64 in the file and float16 in the model")
    assert set(model.prefetch.built) == {"unet", "vae"}
    assert_same_model(model, _library_load(ref, monkeypatch, "fp16"))


def test_close_stops_the_reading_thread(on, tmp_path, monkeypatch):
    folder = _copy(tmp_path)
    monkeypatch.setattr(prefetch, "_CHUNK", 1024)  # many pieces: a chance to stop between
    started = Prefetch.start(folder, "cpu")
    started.close()
    assert not started._thread.is_alive() and started._tensors == {}
