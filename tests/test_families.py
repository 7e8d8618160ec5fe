"""The family registry (families.py) against the libraries it describes: every entry names a
real pipeline class, a UNet layout that builds, limits its tokenizers really have."""

from __future__ import annotations

import json

import pytest

from storyboard.families import (BUILTINS, CROSS_ATTENTION_WIDTHS, FAMILIES, FAMILY_NAMES,
                                 family_of_checkpoint_keys, family_of_pipeline)

pytest.importorskip("torch")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_names_real_diffusers_parts(name):
    import diffusers
    import torch

    family = FAMILIES[name]
    pipeline = getattr(diffusers, family.pipeline)
    assert family_of_pipeline(family.pipeline) == name
    # The pipeline has the text encoders the registry lists.
    components = set(pipeline._get_signature_keys(pipeline)[0])
    assert set(family.text_encoders) <= components
    # The released UNet layout builds (on the meta device: no memory), and its cross-attention
    # width tells a LoRA's family as the registry says.
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(family.unet)
    assert unet.config.cross_attention_dim == family.unet["cross_attention_dim"]
    assert CROSS_ATTENTION_WIDTHS[family.unet["cross_attention_dim"]] in family.lora_accepts
    attention = {n.rsplit(".", 1)[-1] for n, _ in unet.named_modules()
                 if ".attn1." in n or ".attn2." in n}
    assert {t.split(".")[0] for t in family.lora_targets} <= attention
    assert (family.single_file_config is None) == (family.single_file_marker is None)


@pytest.mark.parametrize("builtin", BUILTINS.values(), ids=list(BUILTINS))
def test_builtin_tokenizers_have_their_familys_token_limit(builtin, session_cache):
    from storyboard.engine.builtin import builtin_folder

    folder = builtin_folder(builtin.name)
    index = json.loads((folder / "model_index.json").read_text("utf-8"))
    assert family_of_pipeline(index["_class_name"]) == builtin.family
    config = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text("utf-8"))
    assert config["model_max_length"] == FAMILIES[builtin.family].token_limit


def test_checkpoints_are_told_apart_by_their_markers():
    assert family_of_checkpoint_keys(["conditioner.embedders.1.model.x"]) == "sdxl"
    assert family_of_checkpoint_keys(["cond_stage_model.transformer.x"]) == "sd15"
    assert family_of_checkpoint_keys(["model.diffusion_model.x"]) is None
    assert family_of_pipeline("SomeOtherPipeline") is None
