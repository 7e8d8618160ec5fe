"""`storyboard lora`: look inside LoRA files and convert them.

In: a LoRA file (diffusers, PEFT, kohya or DiffSynth; ``loras``) and options. Out: what the file
is (format, family, ranks, alphas, modules; `--json` too; golden files in tests/golden/loras/),
or the same weights as a .safetensors file that diffusers or WebUI/ComfyUI load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import UserError, printable
from ..families import BUILTINS, FAMILY_NAMES
from . import cli
from .flags import user_paths


@cli.group()
def lora() -> None:
    """Look inside LoRA files and convert them (diffusers, PEFT, kohya, DiffSynth)."""


_LORA_MODEL = click.option(
    "--model", "model", default=None,
    help="A built-in model name or a diffusers folder whose UNet the LoRA is for (needed for "
         "kohya/DiffSynth files of UNets other than the released SDXL, Kolors and SD1.5).")


def _unet_config(model: str | None):
    if not model:
        return None
    if model in BUILTINS:
        from ..engine.builtin import builtin_folder

        return builtin_folder(model)
    folder = Path(model)
    if not (folder / "unet" / "config.json").is_file():
        raise UserError(f"--model {model}: not a built-in model or a diffusers folder with a "
                        "unet/config.json")
    return folder


@lora.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_LORA_MODEL
def lora_inspect(file: str, as_json: bool, model: str | None) -> None:
    """Say what FILE is: format, base model family, ranks, alphas, modules, size."""
    from dataclasses import asdict

    from ..loras import LoraFormatError, inspect_lora

    user_paths(file)
    try:
        info = inspect_lora(file, unet_config=_unet_config(model))
    except LoraFormatError as exc:
        raise UserError(_lora_message(exc)) from None
    if as_json:
        data = asdict(info) | {"path": str(info.path)}
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    alphas = ", ".join(f"{a:g}" for a in info.alphas) if info.alphas else "none stored"
    rows = [("format", info.format), ("family", f"{info.family} ({info.family_reason})"),
            ("rank", ", ".join(map(str, info.ranks))), ("alpha", alphas),
            ("modules", ", ".join(info.modules)),
            ("layers", f"{info.layers} ({info.tensors} tensors, {info.size_bytes / 1e6:.1f} MB,"
                       f" {info.dtype})"),
            ("text encoder", "yes" if info.text_encoder else "no")]
    for key, value in rows:
        click.echo(f"{key + ':':<14}{value}")
    if info.trained:  # storyboard's training recorded these; shown escaped like any text
        click.echo(f"{'trained:':<14}" + ", ".join(
            f"{key} {printable(value)}" for key, value in info.trained.items()))
    for note in info.notes:
        click.echo(f"{'note:':<14}{note}")


@lora.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["diffusers", "kohya"]), default="diffusers",
              show_default=True, help="diffusers (load_lora_weights) or kohya (WebUI/ComfyUI).")
@click.option("--alpha", type=float, default=None,
              help="LoRA alpha (scale = alpha / rank); default: the file's, else the rank.")
@click.option("--family", type=click.Choice(FAMILY_NAMES), default=None,
              help="The model the LoRA is for; refused if the file says otherwise.")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@_LORA_MODEL
def lora_convert(src: str, dst: str, to: str, alpha: float | None, family: str | None,
                 force: bool, model: str | None) -> None:
    """Convert SRC (any format) into a .safetensors DST that diffusers or WebUI/ComfyUI load."""
    from ..loras import LoraFormatError, convert_lora

    user_paths(src)
    if not dst.endswith(".safetensors"):
        raise UserError(f"{dst}: the output must be a .safetensors file")
    if os.path.lexists(dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            raise UserError(f"{dst} is the file being converted; give another output name")
        if not force:
            raise UserError(f"{dst} already exists; use --force to replace it, or give another "
                            "output name")
    try:
        out = convert_lora(src, dst, to=to, alpha=alpha, family=family,
                           unet_config=_unet_config(model))
    except (LoraFormatError, ValueError) as exc:
        raise UserError(_lora_message(exc)) from None
    click.echo(f"wrote {out} ({to})")


def _lora_message(exc: Exception) -> str:
    return str(exc).replace("pass unet_config", "pass --model (a built-in model name or a "
                                                "diffusers folder)")
