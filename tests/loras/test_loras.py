"""LoRA files in four formats (diffusers, PEFT, kohya, DiffSynth-Studio): inspected, converted,
and loaded into the built-in tiny SDXL and Kolors pipelines with ``load_lora_weights``.

The yardstick is arithmetic, not another converter: for every adapted Linear the UNet's weight
is merged by hand, ``W += w * (alpha / r) * B @ A``, on a copy of the base UNet, and one UNet
forward on fixed inputs must match the pipeline's UNet with the adapter loaded and set to
weight ``w``. diffusers/PEFT log messages about unexpected or missing keys fail a test.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from storyboard.engine import builtin as tiny  # noqa: E402
from storyboard.families import FAMILIES  # noqa: E402
from storyboard.loras import (  # noqa: E402
    LoraFormatError,
    convert_lora,
    diffsynth_names,
    inspect_lora,
    to_diffusers,
)

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


pytestmark = pytest.mark.usefixtures("session_cache")


@pytest.fixture(scope="module")
def pipes():
    """The tiny pipelines, and a pristine copy of each UNet (the hand-merge starts from it)."""
    from diffusers import KolorsPipeline, StableDiffusionXLPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {"sdxl": StableDiffusionXLPipeline.from_pretrained(tiny.builtin_folder("tiny-sdxl")),
               "kolors": KolorsPipeline.from_pretrained(tiny.builtin_folder("tiny-kolors"))}
    for pipe in out.values():
        pipe.set_progress_bar_config(disable=True)
    models = {}
    for name, pipe in out.items():
        base = copy.deepcopy(pipe.unet).eval()
        inputs = unet_inputs(base)
        models[name] = SimpleNamespace(pipe=pipe, base=base, inputs=inputs,
                                       base_out=forward(base, inputs),
                                       folder=tiny.builtin_folder(f"tiny-{name}"))
    return models


# --- helpers ---------------------------------------------------------------------------------


def targeted(unet) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and name.endswith(TARGETS)}


def make_truth(unet, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random LoRA factors (A: r x in, B: out x r) for every attention projection."""
    g = torch.Generator().manual_seed(seed)
    truth = {}
    for name, m in sorted(targeted(unet).items()):
        a = torch.randn(rank, m.in_features, generator=g) / m.in_features ** 0.5
        b = torch.randn(m.out_features, rank, generator=g) / rank ** 0.5
        truth[name] = (a, b)
    return truth


def hand_merged(base, truth, scale: float):
    unet = copy.deepcopy(base)
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, (a, b) in truth.items():
            w = modules[name].weight
            w += (scale * (b.double() @ a.double())).to(w.dtype)
    return unet


def unet_inputs(unet):
    g = torch.Generator().manual_seed(123)
    c = unet.config
    width = c.encoder_hid_dim or c.cross_attention_dim  # Kolors projects 32 -> 64 first
    extra = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor([700]),
                encoder_hidden_states=torch.randn(1, 7, width, generator=g),
                added_cond_kwargs={"text_embeds": torch.randn(1, extra, generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])})


def forward(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


class Catcher(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_clean(pipe, source, name: str, **kwargs) -> None:
    """``load_lora_weights``, failing on any unexpected/missing-key message (as render.py)."""
    catcher = Catcher()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
    saved = [(lg, lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [catcher], False
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe.load_lora_weights(source, adapter_name=name, **kwargs)
    finally:
        for lg, level, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
    bad = [m for m in catcher.messages
           if re.search(r"(unexpected|missing) keys?\b", m, re.IGNORECASE)]
    assert not bad, bad


def assert_matches_hand_merge(model, source, truth, scale: float, weights=(1.0,),
                              **load_kwargs) -> None:
    """Load ``source`` into the pipeline; at each LoRA weight ``w`` its UNet must compute what
    the hand-merged UNet (W + w * scale * B @ A) computes."""
    pipe, inputs = model.pipe, model.inputs
    load_clean(pipe, source, "x", **load_kwargs)
    try:
        for weight in weights:
            pipe.set_adapters(["x"], [weight])
            expected = forward(hand_merged(model.base, truth, weight * scale), inputs)
            got = forward(pipe.unet, inputs)
            effect = (expected - model.base_out).abs().max().item()
            error = (got - expected).abs().max().item()
            print(f"scale {weight * scale:g}: LoRA effect {effect:.3g}, error {error:.2g}")
            assert effect > 5e-3, f"the LoRA should change the output ({effect})"
            # float32 rounding only: a wrong alpha or a missing layer is off by >10% of effect
            assert error <= 1e-4 and error <= 2e-3 * effect, (error, effect)
    finally:
        pipe.unload_lora_weights()
    assert not any(hasattr(m, "lora_A") for m in pipe.unet.modules()), "LoRA layers left"


# --- writers for each format, from the same truth ------------------------------------------


def write_diffsynth(path: Path, truth, unet, *, wrap=True, prefix="") -> Path:
    """What DiffSynth-Studio's train_kolors_lora.py saves: PEFT's adapter "default" on
    DiffSynth's own UNet names, no alpha, in a Lightning checkpoint."""
    names = diffsynth_names(unet.config)  # diffusers -> DiffSynth, the inverse of the reader
    state = {}
    for module, (a, b) in truth.items():
        state[f"{prefix}{names[module]}.lora_A.default.weight"] = a
        state[f"{prefix}{names[module]}.lora_B.default.weight"] = b
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1500} if wrap else state, path)
    return path


# The tiny UNet's attention blocks in SGM (original LDM) numbering, worked out by hand from its
# layout (layers_per_block=1; down: Down, Down, CrossAttnDown; up: CrossAttnUp, Up, Up):
# input_blocks 1-2 = down block 0 (resnet, downsampler), 3-4 = block 1, 5 = block 2.
TINY_SGM = {"down_blocks.2.attentions.0": "input_blocks.5.1", "mid_block.attentions.0":
            "middle_block.1", "up_blocks.0.attentions.0": "output_blocks.0.1",
            "up_blocks.0.attentions.1": "output_blocks.1.1"}


def write_kohya(path: Path, truth, alpha: float) -> Path:
    state = {}
    for module, (a, b) in truth.items():
        block = ".".join(module.split(".")[:4 if module.startswith(("down", "up")) else 3])
        name = TINY_SGM[block] + module[len(block):]
        base = "lora_unet_" + name.replace(".", "_")
        state[f"{base}.lora_down.weight"] = a
        state[f"{base}.lora_up.weight"] = b
        state[f"{base}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))
    return path


def write_diffusers(path: Path, truth, alpha: float, rank: int) -> Path:
    """diffusers' own writer, with the adapter config (alpha) in the safetensors metadata."""
    from diffusers import StableDiffusionXLPipeline

    layers = {}
    for module, (a, b) in truth.items():
        layers[f"{module}.lora_A.weight"] = a
        layers[f"{module}.lora_B.weight"] = b
    folder = path.parent / (path.stem + "-dir")
    StableDiffusionXLPipeline.save_lora_weights(
        str(folder), unet_lora_layers=layers, unet_lora_adapter_metadata={
            "r": rank, "lora_alpha": alpha, "target_modules": sorted(truth)})
    shutil.move(folder / "pytorch_lora_weights.safetensors", path)
    shutil.rmtree(folder)
    return path


def write_peft(folder: Path, model, rank: int, alpha: float, seed: int):
    """PEFT's own save_pretrained (adapter_model.safetensors + adapter_config.json); the truth
    is read back from the PEFT model's layers."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(copy.deepcopy(model.base), LoraConfig(
            r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=list(TARGETS)))
        peft_model.save_pretrained(str(folder))
    truth = {}
    for name, m in peft_model.base_model.model.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            truth[name] = (m.lora_A["default"].weight.detach().clone(),
                           m.lora_B["default"].weight.detach().clone())
    return folder / "adapter_model.safetensors", truth


# --- the numbers: converted LoRAs do exactly W + (alpha/r) B A ------------------------------


def test_diffsynth_kolors_lora_as_the_course_loads_it(pipes, tmp_path):
    """The course's case: rank 16, no alpha stored, loaded with lora_alpha 2.0 -> scale 1/8."""
    kolors = pipes["kolors"]
    truth = make_truth(kolors.base, 16, seed=1)
    path = write_diffsynth(tmp_path / "epoch=3-step=1500.ckpt", truth, kolors.base)
    state = to_diffusers(path, alpha=2.0, family="kolors", unet_config=kolors.folder)
    assert set(state) == {f"unet.{m}.lora_{ab}.weight" for m in truth for ab in "AB"}
    assert_matches_hand_merge(kolors, state, truth, 2.0 / 16, weights=(1.0, 0.5))

    # No alpha given: alpha = rank (scale 1.0), the story's LoRA weight sets the strength.
    default = to_diffusers(path, unet_config=kolors.folder)
    assert_matches_hand_merge(kolors, default, truth, 1.0)
    for key, tensor in state.items():
        expected = default[key] * (2.0 / 16) if ".lora_B." in key else default[key]
        assert torch.equal(tensor, expected), key

    # The file written by convert_lora holds the same tensors and loads cleanly from disk.
    out = convert_lora(path, tmp_path / "course.safetensors", alpha=2.0,
                       unet_config=kolors.folder)
    written = load_file(str(out))
    assert written.keys() == state.keys() and all(torch.equal(written[k], state[k])
                                                  for k in state)
    load_clean(kolors.pipe, str(out), "x")
    kolors.pipe.unload_lora_weights()


def test_diffsynth_variants_flat_and_prefixed_read_the_same(pipes, tmp_path):
    kolors = pipes["kolors"]
    truth = make_truth(kolors.base, 4, seed=2)
    wrapped = to_diffusers(write_diffsynth(tmp_path / "a.ckpt", truth, kolors.base),
                           unet_config=kolors.folder)
    flat = to_diffusers(write_diffsynth(tmp_path / "b.ckpt", truth, kolors.base, wrap=False),
                        unet_config=kolors.folder)
    prefixed = to_diffusers(write_diffsynth(tmp_path / "c.pt", truth, kolors.base,
                                            prefix="pipe.unet."), unet_config=kolors.folder)
    for other in (flat, prefixed):
        assert other.keys() == wrapped.keys()
        assert all(torch.equal(other[k], wrapped[k]) for k in wrapped)


def test_kohya_lora(pipes, tmp_path):
    sdxl = pipes["sdxl"]
    truth = make_truth(sdxl.base, 4, seed=3)
    path = write_kohya(tmp_path / "kohya.safetensors", truth, alpha=8.0)
    # diffusers reads the hand-named kohya file natively, alpha included: the names are right.
    assert_matches_hand_merge(sdxl, str(path), truth, 8.0 / 4, weights=(1.0, 0.5))
    state = to_diffusers(path, unet_config=sdxl.folder)
    assert_matches_hand_merge(sdxl, state, truth, 2.0)
    # alpha= overrides the stored one: B scaled by 1/4 instead of 8/4.
    override = to_diffusers(path, alpha=1.0, unet_config=sdxl.folder)
    assert all(torch.allclose(override[k] * 8, state[k], rtol=0, atol=0) if ".lora_B." in k
               else torch.equal(override[k], state[k]) for k in state)


def test_kohya_lora_into_kolors(pipes, tmp_path):
    """KolorsPipeline.load_lora_weights does not remap SGM names unless given unet_config;
    to_diffusers does it itself."""
    kolors = pipes["kolors"]
    truth = make_truth(kolors.base, 4, seed=4)
    path = write_kohya(tmp_path / "kohya.safetensors", truth, alpha=2.0)
    assert_matches_hand_merge(kolors, to_diffusers(path, unet_config=kolors.folder), truth, 0.5)
    assert_matches_hand_merge(kolors, str(path), truth, 0.5, unet_config=kolors.pipe.unet.config)


def test_peft_lora(pipes, tmp_path):
    sdxl = pipes["sdxl"]
    path, truth = write_peft(tmp_path / "peft", sdxl, rank=4, alpha=8, seed=5)
    assert len(truth) == len(targeted(sdxl.base))
    assert_matches_hand_merge(sdxl, to_diffusers(path), truth, 8 / 4)


def test_diffusers_lora_with_alpha_metadata(pipes, tmp_path):
    kolors = pipes["kolors"]
    truth = make_truth(kolors.base, 4, seed=6)
    path = write_diffusers(tmp_path / "d.safetensors", truth, alpha=2.0, rank=4)
    assert_matches_hand_merge(kolors, str(path), truth, 0.5)  # diffusers honours the metadata
    state = to_diffusers(path)
    assert_matches_hand_merge(kolors, state, truth, 0.5)
    unscaled = to_diffusers(path, alpha=4.0)  # alpha = rank: the file's B as it is
    assert all(torch.equal(unscaled[k], a if k.endswith("lora_A.weight") else b)
               for m, (a, b) in truth.items() for k in (f"unet.{m}.lora_A.weight",
                                                        f"unet.{m}.lora_B.weight"))


def test_legacy_diffusers_names(pipes, tmp_path):
    sdxl = pipes["sdxl"]
    truth = make_truth(sdxl.base, 2, seed=7)
    state = {}
    for module, (a, b) in truth.items():
        head, _, proj = module.rpartition(".")
        if proj == "0":  # to_out.0
            head, proj = head.rsplit(".", 1)
        state[f"unet.{head}.processor.{proj}_lora.down.weight"] = a
        state[f"unet.{head}.processor.{proj}_lora.up.weight"] = b
    save_file(state, str(tmp_path / "old.safetensors"))
    assert inspect_lora(tmp_path / "old.safetensors").format == "diffusers"
    assert_matches_hand_merge(sdxl, to_diffusers(tmp_path / "old.safetensors"), truth, 1.0)


# --- round trips and diffusers' own kohya reader -------------------------------------------


def adapter_weights(unet, name="x"):
    out = {}
    for module_name, m in unet.named_modules():
        if hasattr(m, "lora_A") and name in m.lora_A:
            out[module_name] = (m.lora_A[name].weight.detach().clone(),
                                m.lora_B[name].weight.detach().clone(), m.scaling[name])
    return out


def test_round_trip_diffusers_kohya_diffusers_is_identical(pipes, tmp_path):
    for family in ("sdxl", "kolors"):
        model = pipes[family]
        truth = make_truth(model.base, 4, seed=8)
        src = write_diffusers(tmp_path / f"{family}.safetensors", truth, alpha=2.0, rank=4)
        kohya = convert_lora(src, tmp_path / f"{family}-kohya.safetensors", to="kohya",
                             unet_config=model.folder)
        written = load_file(str(kohya))
        assert all(k.startswith("lora_unet_") for k in written)
        assert any("input_blocks_5_1_transformer_blocks_1_attn2_to_out_0" in k for k in written)
        assert {written[k].item() for k in written if k.endswith(".alpha")} == {2.0}
        back = convert_lora(kohya, tmp_path / f"{family}-back.safetensors",
                            unet_config=model.folder)
        direct, again = to_diffusers(src), load_file(str(back))
        assert direct.keys() == again.keys()
        assert all(torch.equal(direct[k], again[k]) for k in direct)

    # DiffSynth -> kohya -> diffusers equals DiffSynth -> diffusers (alpha carried in .alpha).
    kolors = pipes["kolors"]
    truth = make_truth(kolors.base, 16, seed=9)
    ds = write_diffsynth(tmp_path / "ds.ckpt", truth, kolors.base)
    kohya = convert_lora(ds, tmp_path / "ds-kohya.safetensors", to="kohya", alpha=2.0,
                         unet_config=kolors.folder)
    direct = to_diffusers(ds, alpha=2.0, unet_config=kolors.folder)
    again = to_diffusers(kohya, unet_config=kolors.folder)
    assert direct.keys() == again.keys() and all(torch.equal(direct[k], again[k]) for k in direct)


def test_kohya_file_written_here_is_read_by_diffusers_to_the_same_weights(pipes, tmp_path):
    sdxl = pipes["sdxl"]
    truth = make_truth(sdxl.base, 4, seed=10)
    ds = write_diffsynth(tmp_path / "ds.ckpt", truth, sdxl.base)
    kohya = convert_lora(ds, tmp_path / "k.safetensors", to="kohya", alpha=3.0,
                         unet_config=sdxl.folder)
    load_clean(sdxl.pipe, str(kohya), "x")  # diffusers' own kohya -> diffusers conversion
    try:
        loaded = adapter_weights(sdxl.pipe.unet)
    finally:
        sdxl.pipe.unload_lora_weights()
    assert loaded.keys() == truth.keys()
    for module, (a, b) in truth.items():
        la, lb, scaling = loaded[module]
        assert torch.equal(la, a) and torch.equal(lb, b) and scaling == 3.0 / 4, module


def test_real_sdxl_diffsynth_names(tmp_path):
    """DiffSynth's SDXLUNet block list (diffsynth 1.1.2, models/sdxl_unet.py): attention blocks
    at 7, 10, 15, 18 (down), 21 (mid), 25...41 (up). Real widths, rank 1, a few layers."""
    layers = {  # DiffSynth name -> (diffusers name, in, out)
        "blocks.7.transformer_blocks.0.attn1.to_q":
            ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 640, 640),
        "blocks.18.transformer_blocks.9.attn2.to_k":
            ("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k", 2048, 1280),
        "blocks.21.transformer_blocks.3.attn1.to_out":
            ("mid_block.attentions.0.transformer_blocks.3.attn1.to_out.0", 1280, 1280),
        "blocks.25.transformer_blocks.0.attn2.to_v":
            ("up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v", 2048, 1280),
        "blocks.41.transformer_blocks.1.attn2.to_k":
            ("up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_k", 2048, 640),
    }
    g = torch.Generator().manual_seed(0)
    state = {}
    for ds, (_, width_in, width_out) in layers.items():
        state[f"{ds}.lora_A.default.weight"] = torch.randn(1, width_in, generator=g)
        state[f"{ds}.lora_B.default.weight"] = torch.randn(width_out, 1, generator=g)
    path = tmp_path / "real.ckpt"
    torch.save({"state_dict": state, "epoch": 0, "global_step": 10}, path)

    info = inspect_lora(path)
    assert (info.format, info.family, info.rank, info.cross_attention_dim) == (
        "diffsynth", "sdxl-or-kolors", 1, 2048)
    converted = to_diffusers(path)
    assert set(converted) == {f"unet.{d}.lora_{ab}.weight" for d, _, _ in layers.values()
                              for ab in "AB"}
    names = diffsynth_names()
    assert all(names[d] == ds for ds, (d, _, _) in layers.items())
    for family in ("sdxl", "kolors"):
        assert to_diffusers(path, family=family).keys() == converted.keys()
    with pytest.raises(LoraFormatError, match="real.ckpt"):
        to_diffusers(path, family="sd15")

    # As kohya: SGM names, which diffusers' own converter maps back to the same modules.
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    kohya = convert_lora(path, tmp_path / "real-kohya.safetensors", to="kohya")
    keys = set(load_file(str(kohya)))
    for sgm in ("input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "input_blocks_8_1_transformer_blocks_9_attn2_to_k",
                "middle_block_1_transformer_blocks_3_attn1_to_out_0",
                "output_blocks_0_1_transformer_blocks_0_attn2_to_v",
                "output_blocks_5_1_transformer_blocks_1_attn2_to_k"):
        assert f"lora_unet_{sgm}.lora_down.weight" in keys, sgm
    state_dict, alphas = StableDiffusionXLPipeline.lora_state_dict(
        str(kohya), unet_config=SimpleNamespace(layers_per_block=2))
    theirs = convert_unet_state_dict_to_peft(
        {k[len("unet."):]: v for k, v in state_dict.items()})
    assert {f"unet.{k}" for k in theirs} == set(converted)
    assert all(torch.equal(theirs[k[len("unet."):]], converted[k]) for k in converted)


# --- inspect -----------------------------------------------------------------------------------


def test_inspect_each_format(pipes, tmp_path):
    kolors, sdxl = pipes["kolors"], pipes["sdxl"]
    truth16 = make_truth(kolors.base, 16, seed=11)
    ds = write_diffsynth(tmp_path / "ds.ckpt", truth16, kolors.base)
    info = inspect_lora(ds, unet_config=kolors.folder)
    assert (info.format, info.family, info.ranks, info.alphas, info.text_encoder) == (
        "diffsynth", "sdxl-or-kolors", (16,), None, False)
    assert info.modules == ("to_k", "to_out", "to_q", "to_v")
    assert info.layers == len(truth16) and info.tensors == 2 * len(truth16)
    assert info.size_bytes == sum(4 * (a.numel() + b.numel()) for a, b in truth16.values())
    assert info.cross_attention_dim == 64 and info.dtype == "float32"
    assert any("alpha = rank" in n for n in info.notes)
    # Without the UNet's layout the tiny model's DiffSynth blocks cannot be placed.
    blind = inspect_lora(ds)
    assert blind.format == "diffsynth" and blind.family == "unknown" and blind.rank == 16
    with pytest.raises(LoraFormatError, match=r"ds\.ckpt.*unet_config"):
        to_diffusers(ds)

    truth = make_truth(sdxl.base, 4, seed=12)
    kohya = inspect_lora(write_kohya(tmp_path / "k.safetensors", truth, 8.0),
                         unet_config=sdxl.folder)
    assert (kohya.format, kohya.family, kohya.rank, kohya.alpha, kohya.text_encoder) == (
        "kohya", "sdxl-or-kolors", 4, 8.0, False)
    assert kohya.modules == ("to_k", "to_out", "to_q", "to_v") and kohya.tensors == 3 * len(truth)
    assert inspect_lora(tmp_path / "k.safetensors").family == "sdxl-or-kolors"  # SGM names

    peft_path, _ = write_peft(tmp_path / "peft", sdxl, rank=4, alpha=8, seed=13)
    peft = inspect_lora(peft_path)
    assert (peft.format, peft.family, peft.rank, peft.alpha, peft.cross_attention_dim) == (
        "peft", "sdxl-or-kolors", 4, 8.0, 80)

    diff = inspect_lora(write_diffusers(tmp_path / "d.safetensors", truth, 2.0, 4))
    assert (diff.format, diff.family, diff.rank, diff.alpha, diff.text_encoder) == (
        "diffusers", "sdxl-or-kolors", 4, 2.0, False)


def test_inspect_text_encoder_and_family_evidence(tmp_path):
    g = torch.Generator().manual_seed(0)
    # A kohya SDXL LoRA that also adapts both CLIP text encoders: SDXL, not Kolors.
    state = {}
    for base, width in (("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768),
                        ("lora_te2_text_model_encoder_layers_0_mlp_fc1", 1280),
                        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048)):
        state[f"{base}.lora_down.weight"] = torch.randn(2, width, generator=g)
        state[f"{base}.lora_up.weight"] = torch.randn(640, 2, generator=g)
        state[f"{base}.alpha"] = torch.tensor(1.0)
    save_file(state, str(tmp_path / "te.safetensors"))
    info = inspect_lora(tmp_path / "te.safetensors")
    assert info.text_encoder and info.family == "sdxl" and "second text encoder" in \
        info.family_reason
    assert set(info.modules) == {"q_proj", "fc1", "to_k"}
    converted = to_diffusers(tmp_path / "te.safetensors")
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in converted
    assert "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight" in converted
    with pytest.raises(LoraFormatError, match="te.safetensors.*not for kolors"):
        to_diffusers(tmp_path / "te.safetensors", family="kolors")

    # Only the first CLIP encoder: still not Kolors, whose text encoder is ChatGLM.
    te1 = {k: v for k, v in state.items() if not k.startswith("lora_te2_")}
    save_file(te1, str(tmp_path / "te1.safetensors"))
    assert inspect_lora(tmp_path / "te1.safetensors").family == "sdxl"
    with pytest.raises(LoraFormatError, match="te1.safetensors.*not for kolors"):
        to_diffusers(tmp_path / "te1.safetensors", family="kolors")

    # An SD1.5 LoRA (cross-attention width 768).
    sd15 = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
            torch.randn(2, 768, generator=g),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight":
            torch.randn(320, 2, generator=g)}
    save_file(sd15, str(tmp_path / "sd15.safetensors"))
    assert inspect_lora(tmp_path / "sd15.safetensors").family == "sd15"
    assert to_diffusers(tmp_path / "sd15.safetensors", family="sd15").keys() == sd15.keys()
    kohya = load_file(str(convert_lora(tmp_path / "sd15.safetensors",
                                       tmp_path / "sd15-kohya.safetensors", to="kohya")))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha" in kohya


# --- refusals ----------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs ``open(marker, "w")``: creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    state = {"blocks.9.transformer_blocks.0.attn1.to_q.lora_A.default.weight": torch.zeros(2, 2)}
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "epoch": 0, "hyper_parameters": Payload(marker)}, path)
    for call in (inspect_lora, to_diffusers,
                 lambda p: convert_lora(p, tmp_path / "out.safetensors")):
        with pytest.raises(LoraFormatError, match=r"evil\.ckpt.*(refused|tensors)") as info:
            call(path)
        assert "builtins.open" in str(info.value) or "open" in str(info.value)
        assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "out.safetensors").exists()
    # The payload is live: an unrestricted unpickler would have created the file.
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


def test_unreadable_and_foreign_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraFormatError, match="junk.safetensors"):
        inspect_lora(tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(LoraFormatError, match="list.pt.*not a state dict"):
        inspect_lora(tmp_path / "list.pt")
    save_file({"model.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(LoraFormatError, match="model.safetensors.*unrecognised key"):
        inspect_lora(tmp_path / "model.safetensors")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(LoraFormatError, match="unsupported file type"):
        inspect_lora(tmp_path / "x.txt")
    with pytest.raises(LoraFormatError, match="no such file"):
        inspect_lora(tmp_path / "missing.safetensors")
    assert issubclass(LoraFormatError, ValueError)


def test_wrong_family_is_named(pipes, tmp_path):
    sdxl, kolors = pipes["sdxl"], pipes["kolors"]
    truth = make_truth(sdxl.base, 4, seed=14)
    path = write_diffusers(tmp_path / "for-sdxl.safetensors", truth, 4.0, 4)
    # tiny SDXL cross-attention is 80 wide, tiny Kolors' 64.
    with pytest.raises(LoraFormatError, match=r"for-sdxl\.safetensors.*attn2\.to_[kv].*80"):
        to_diffusers(path, unet_config=kolors.folder)
    with pytest.raises(LoraFormatError, match=r"for-sdxl\.safetensors"):
        convert_lora(path, tmp_path / "o.safetensors", family="sd15")
    ds = write_diffsynth(tmp_path / "for-sdxl.ckpt", truth, sdxl.base)
    with pytest.raises(LoraFormatError, match=r"for-sdxl\.ckpt"):
        to_diffusers(ds, unet_config=kolors.folder)
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_writes_atomically_and_checks_arguments(pipes, tmp_path):
    sdxl = pipes["sdxl"]
    truth = make_truth(sdxl.base, 2, seed=15)
    src = write_diffusers(tmp_path / "src.safetensors", truth, 2.0, 2)
    out = convert_lora(src, tmp_path / "sub" / "out.safetensors")
    assert out == tmp_path / "sub" / "out.safetensors"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.safetensors"]  # no temp left
    with pytest.raises(ValueError, match=".safetensors"):
        convert_lora(src, tmp_path / "out.ckpt")
    with pytest.raises(ValueError, match="to must be"):
        convert_lora(src, tmp_path / "o.safetensors", to="comfy")
    with pytest.raises(LoraFormatError, match="family or unet_config"):
        convert_lora(src, tmp_path / "o.safetensors", to="kohya")  # tiny UNet: layout unknown
    with pytest.raises(ValueError, match="overwrite"):
        convert_lora(src, src)


def test_family_configs_are_the_released_shapes():
    names = diffsynth_names(FAMILIES["sd15"].unet)
    # SDUNet (diffsynth 1.1.2, models/sd_unet.py): CrossAttnDownBlock2D first, so block 1.
    assert names["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] == \
        "blocks.1.transformer_blocks.0.attn1.to_q"
    assert names["up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2"] == \
        "blocks.66.transformer_blocks.0.ff"
    kolors = diffsynth_names(FAMILIES["kolors"].unet)
    assert kolors["encoder_hid_proj"] == "text_intermediate_proj"
    assert kolors["add_embedding.linear_1"] == "add_time_embedding.0"
    assert json.dumps({f.name: f.unet for f in FAMILIES.values()})  # plain data


def test_rslora_and_half_precision(tmp_path):
    """PEFT's rsLoRA scales by alpha / sqrt(r); fp16 factors stay fp16."""
    g = torch.Generator().manual_seed(0)
    module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    a = torch.randn(4, 640, generator=g).half()
    b = torch.randn(640, 4, generator=g).half()
    folder = tmp_path / "rs"
    folder.mkdir()
    save_file({f"base_model.model.{module}.lora_A.weight": a,
               f"base_model.model.{module}.lora_B.weight": b},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["to_q"]}))
    info = inspect_lora(folder / "adapter_model.safetensors")
    assert (info.format, info.alpha, info.dtype) == ("peft", 8.0, "float16")
    state = to_diffusers(folder / "adapter_model.safetensors")
    assert state[f"unet.{module}.lora_B.weight"].dtype == torch.float16
    torch.testing.assert_close(state[f"unet.{module}.lora_B.weight"],
                               (b.float() * 8 / 4 ** 0.5).half())
    assert torch.equal(state[f"unet.{module}.lora_A.weight"], a)


# --- in a story: what storyboard users do ----------------------------------------------------


def test_kolors_story_with_a_diffsynth_ckpt_builds_end_to_end(pipes, tmp_path):
    """The course's LoRA file, as is, in a story: converted once (cached by its sha256), loaded
    as the character's adapter, and changing exactly the panels the character is in."""
    import hashlib

    from storyboard.commands import build
    from storyboard.options import RuntimeOptions
    from storyboard.output.cache import PanelCache
    from storyboard.paths import converted_loras_dir

    kolors = pipes["kolors"]
    ckpt = write_diffsynth(tmp_path / "epoch=0-step=500.ckpt", make_truth(kolors.base, 16, 3),
                           kolors.base)
    story = tmp_path / "story.yaml"
    story.write_text(
        "version: 1\nmodel: tiny-kolors\ndefaults: {steps: 2, width: 64, height: 64}\n"
        "characters:\n  xiaozi:\n    description: 紫色头发的小女孩\n"
        "    loras:\n      - file: epoch=0-step=500.ckpt\n        weight: 0.125\n"
        "panels:\n  - {id: with, characters: [xiaozi], prompt: 唱歌, seed: 1}\n"
        "  - {id: without, prompt: 紫色头发的小女孩，唱歌, seed: 1}\n", encoding="utf-8")
    cache = PanelCache(tmp_path / "panels-cache")
    report = build(story, options=RuntimeOptions(progress=False), cache=cache)
    assert {o.job.panel: o.status for o in report.outcomes} == {"with": "rendered",
                                                                "without": "rendered"}
    job = report.outcomes[0].job
    assert job.loras[0].sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert job.loras[0].weight == 0.125
    converted = converted_loras_dir() / f"{job.loras[0].sha256}-kolors.safetensors"
    assert converted.is_file()
    with_lora = np.asarray(Image.open(report.outcomes[0].path)).astype(int)
    plain = np.asarray(Image.open(report.outcomes[1].path)).astype(int)
    assert np.abs(with_lora - plain).max() > 3, "the LoRA changes its character's panel"

    # Same prompt, no LoRA: what the panel looks like without the character's adapter.
    story.write_text(story.read_text("utf-8").replace("        weight: 0.125\n",
                                                      "        weight: 0\n"), encoding="utf-8")
    zero = build(story, options=RuntimeOptions(progress=False), cache=cache)
    assert zero.outcomes[0].status == "rendered", "the weight is part of the job hash"


def test_cli_lora_inspect_and_convert(pipes, tmp_path):
    from click.testing import CliRunner

    from storyboard.cli import cli

    kolors = pipes["kolors"]
    ckpt = write_diffsynth(tmp_path / "course.ckpt", make_truth(kolors.base, 16, 5), kolors.base)
    runner = CliRunner()
    result = runner.invoke(cli, ["lora", "convert", str(ckpt), str(tmp_path / "y.safetensors")])
    assert result.exit_code == 2, "a tiny-UNet DiffSynth file cannot be placed without --model"
    assert "--model" in result.output and "unet_config" not in result.output
    result = runner.invoke(cli, ["lora", "inspect", "--model", "tiny-kolors", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert "format:       diffsynth" in result.output and "rank:         16" in result.output
    assert "alpha:        none stored" in result.output
    out = tmp_path / "course-kohya.safetensors"
    result = runner.invoke(cli, ["lora", "convert", str(ckpt), str(out), "--to", "kohya",
                                 "--alpha", "2", "--model", "tiny-kolors"])
    assert result.exit_code == 0, result.output
    data = json.loads(runner.invoke(cli, ["lora", "inspect", "--json", "--model", "tiny-kolors",
                                          str(out)]).output)
    assert data["format"] == "kohya" and data["alphas"] == [2.0]

    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    result = runner.invoke(cli, ["lora", "inspect", str(bad)])
    assert result.exit_code == 2 and "evil.ckpt" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["lora", "convert", str(ckpt), str(tmp_path / "x.bin")])
    assert result.exit_code == 2 and ".safetensors" in result.output
    # An existing output is not replaced without --force, and never the input itself.
    before = out.read_bytes()
    args = ["lora", "convert", str(ckpt), str(out), "--to", "kohya", "--model", "tiny-kolors"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "--force" in result.output and out.read_bytes() == before
    assert runner.invoke(cli, args + ["--force"]).exit_code == 0
    result = runner.invoke(cli, ["lora", "convert", str(out), str(out), "--force"])
    assert result.exit_code == 2 and "being converted" in result.output
