"""The built-in offline models `tiny-sdxl` and `tiny-kolors`.

In: a model name and a cache folder. Out: a diffusers pipeline folder (``save_pretrained``
layout with ``model_index.json``), built once, deterministically, and then loaded by the same
``from_pretrained`` code as any real model.

They are the real architectures (diffusers' ``StableDiffusionXLPipeline`` / ``KolorsPipeline``,
``UNet2DConditionModel``, ``AutoencoderKL``, transformers' CLIP text encoders, diffusers'
ChatGLM text encoder) at toy width with random weights, and tokenizers made locally: a byte-level
BPE CLIP vocabulary and a sentencepiece model trained here for ChatGLM. No download is involved.
Their pictures are abstract; they exist so `storyboard build` and the tests run anywhere.

Changing a recipe must bump its version in ``families.BUILTINS`` (part of job hashes).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..families import BUILTINS, FAMILIES
from ..paths import builtin_model_folder, naming

SEED = 0

# Words merged into single CLIP tokens, so ordinary English prompts tokenize roughly a word per
# token (as with real CLIP) instead of a byte per token.
_WORDS = """
a an the of and in on with at to for from by under over into is are his her their its one two
panel comic hero city night day morning evening sunset sunrise storm rain snow sky sun moon star
cat dog bird boat ship sea ocean wave waves cliff lighthouse house room window door table chair
sofa garden park street forest tree trees flower flowers river lake mountain field road bridge
girl boy woman man old young child friends robot keeper lamp oil light lights stair stairs spiral
red blue green yellow purple pink black white grey gray gold silver brown orange copper
small big huge tiny little round long short curly hair braid scarf dress coat raincoat eye eyes
sitting standing walking running climbing jumping waving looking reading singing watching holding
painting drawing illustration watercolor gouache ink oil sketch anime manga cartoon style photo
portrait close up wide shot detailed background soft warm cold dark bright palette colors color
lighting rim glow blurry ugly low quality bad hands extra fingers watermark text lowres anatomy
masterpiece best cinematic dramatic calm happy sad alone together safe home stage concert
""".split()

_CORPUS = [
    "a comic panel of a hero standing on a rooftop at night",
    "a girl with red hair reading a book in the rain",
    "watercolor painting of a cat sleeping on a blue sofa",
    "ink drawing, manga style, dramatic lighting, close up portrait",
    "low quality, blurry, ugly, bad hands, extra fingers, watermark",
    "二次元，一个紫色短发小女孩，在家中沙发上坐着，双手托着腮，很无聊，全身，粉色连衣裙",
    "日系动漫，演唱会的观众席，人山人海，舞台上衣着华丽的歌星们在唱歌",
    "露出憧憬的神情，对着流星许愿，闭着眼睛，十指交叉，侧面",
    "在练习室练习唱歌，手持话筒，紫色长发少女，穿着黑色连衣裙，试衣间，心情忐忑",
    "穿着黑色礼服，在台上唱歌。丑陋、变形、嘈杂、模糊、低对比度，色情擦边，扭曲的手指，多余的手指",
    "一只可爱的小猫坐在窗台上，阳光明媚。漫画风格，一个女孩在雨中奔跑，城市夜景。",
    "高质量，细节丰富，电影光效，水彩画。中国山水画，山川河流，云雾缭绕，古典风格。",
    "0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
]


def builtin_folder(name: str) -> Path:
    """The folder of built-in model ``name``, building it first if it is not there yet."""
    builtin = BUILTINS[name]
    folder = builtin_model_folder(name, builtin.recipe)
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination and rename: a crash or a concurrent build never leaves a
    # half-written model where a complete one is expected.
    # (Named like an atomic write's temporary file, so `clean` finds one a kill left behind.)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        try:
            _RECIPES[name](tmp)
        except OSError as exc:  # a full disk, say: name the folder it could not fill
            raise naming(exc, folder) from exc
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- tokenizers ------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_tokenizer(work: Path):
    """A CLIP tokenizer from a vocabulary written here: all bytes, merges for common words,
    and the special tokens last (as in real CLIP, where end-of-text is the highest id)."""
    from transformers import CLIPTokenizer

    work.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    merges: list[str] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            merge = f"{current} {nxt}"
            if merge not in merges:
                merges.append(merge)
            current += nxt
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (work / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return CLIPTokenizer(vocab=str(work / "vocab.json"), merges=str(work / "merges.txt"),
                         model_max_length=FAMILIES["sdxl"].token_limit)


def _sentencepiece_model(path: Path) -> Path:
    import sentencepiece as spm

    spm.set_random_generator_seed(SEED)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=buf, model_type="bpe",
        vocab_size=800, character_coverage=1.0, byte_fallback=True, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True, hard_vocab_limit=False,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


# --- shared components -----------------------------------------------------------------------

_UNET = dict(
    sample_size=16,  # latent pixels: 128-pixel images by default
    in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
    # Attention only at the lowest resolution keeps 1024-pixel panels fast on a CPU.
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 2),
    use_linear_projection=True, norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=8,
)


def _vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    # Four blocks, like the real VAE: 8 image pixels per latent pixel, so a 1024-pixel story
    # runs the UNet at the same latent size as SDXL does.
    return AutoencoderKL(
        block_out_channels=[16, 16, 32, 32], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=128, scaling_factor=0.13025,
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    # SDXL's and Kolors' own scheduler settings.
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def _build_sdxl(folder: Path) -> None:
    import torch
    import diffusers
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with tempfile.TemporaryDirectory() as work:
        tok = clip_tokenizer(Path(work) / "a")
        tok2 = clip_tokenizer(Path(work) / "b")
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               max_position_embeddings=FAMILIES["sdxl"].token_limit, layer_norm_eps=1e-5,
               hidden_act="gelu",
               num_attention_heads=4, projection_dim=32)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, **ids))
    # The second encoder differs in width (as ViT-bigG does from ViT-L) and has 10 layers:
    # single-file loaders tell SDXL's two encoders apart by width and recognise SDXL by depth.
    torch.manual_seed(SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=48, intermediate_size=37, num_hidden_layers=10, **ids))
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**_UNET, cross_attention_dim=32 + 48,
                                projection_class_embeddings_input_dim=6 * 8 + 32)
    pipeline = getattr(diffusers, FAMILIES["sdxl"].pipeline)
    pipe = pipeline(
        vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
        tokenizer_2=tok2, unet=unet, scheduler=_scheduler(), image_encoder=None,
        feature_extractor=None, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder, safe_serialization=True)


def _build_kolors(folder: Path) -> None:
    import torch
    import diffusers
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, RMSNorm

    with tempfile.TemporaryDirectory() as work:
        tokenizer = ChatGLMTokenizer(vocab_file=str(_sentencepiece_model(
            Path(work) / "tokenizer.model")), model_max_length=FAMILIES["kolors"].token_limit)
        hidden = 32
        config = ChatGLMConfig(
            num_layers=2, padded_vocab_size=tokenizer.vocab_size, hidden_size=hidden,
            ffn_hidden_size=64, kv_channels=8, num_attention_heads=4,
            seq_length=FAMILIES["kolors"].token_limit,
            multi_query_attention=True, multi_query_group_num=2, add_qkv_bias=True,
            add_bias_linear=False, rmsnorm=True, post_layer_norm=True,
            original_rope=True,  # read by ChatGLMModel but missing from ChatGLMConfig defaults
            use_cache=False, torch_dtype="float32")
        torch.manual_seed(SEED)
        # empty_init=True (the default) leaves weights uninitialised: non-deterministic, NaN.
        text_encoder = ChatGLMModel(config, empty_init=False)
        with torch.no_grad():
            for module in text_encoder.modules():
                if isinstance(module, RMSNorm):  # created with torch.empty and never initialised
                    module.weight.fill_(1.0)
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(**_UNET, encoder_hid_dim=hidden,
                                    encoder_hid_dim_type="text_proj", cross_attention_dim=64,
                                    projection_class_embeddings_input_dim=6 * 8 + hidden)
        pipeline = getattr(diffusers, FAMILIES["kolors"].pipeline)
        pipe = pipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                              unet=unet, scheduler=_scheduler(), image_encoder=None,
                              feature_extractor=None, force_zeros_for_empty_prompt=False)
        pipe.save_pretrained(folder, safe_serialization=True)


# Each built-in model's recipe, by name (``families.BUILTINS`` holds its family and version).
_RECIPES = {"tiny-sdxl": _build_sdxl, "tiny-kolors": _build_kolors}
