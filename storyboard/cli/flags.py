"""The options every rendering command shares, and the one place they become ``RuntimeOptions``.

In: click parameters (``runtime_flags`` adds them to a command). Out: ``runtime_options``, a
``RuntimeOptions`` from the parsed values, and the other shared values (`--model`, `--quiet`,
`--json`). The story's own ``render:`` settings are merged later, once, by the command
(``RuntimeOptions.with_story``).
"""

from __future__ import annotations

from typing import Any

import click

from ..constants import DTYPES
from ..errors import UserError
from ..options import RuntimeOptions
from ..paths import file_problem

_FLAGS = [
    click.option("--model", "model", default=None,
                 help="Render with this model instead of the story's (e.g. tiny-kolors)."),
    click.option("--device", default="auto", show_default=True,
                 help="auto, cpu, cuda, cuda:N or mps."),
    click.option("--dtype", type=click.Choice(DTYPES), default=None,
                 help="Override the story's dtype (default: fp16 on GPU, fp32 on CPU; fp8: "
                      "opt-in FP8 UNet on Ada/Hopper GPUs, needs torchao)."),
    click.option("--batch-size", type=click.IntRange(1, 64), default=None,
                 help="Most panels per pipeline call (default: the story's render.batch_size, "
                      "else 8, 4 or 2 by free GPU memory; 2 on CPU)."),
    click.option("--offload", is_flag=True, help="Model CPU offload, for small GPUs."),
    click.option("--vae-tiling", is_flag=True, help="Decode large images in tiles."),
    click.option("--compile/--no-compile", "compile", default=None,
                 help="torch.compile the UNet and VAE decoder, or not (default: the story's "
                      "render.compile, else auto: when the render has enough panels to pay it "
                      "back, about 40 of 50 steps per batch shape; `storyboard plan` says)."),
    click.option("--tune/--no-tune", "tune", default=None,
                 help="Coordinate-descent tuning of the compiled UNet's kernels (default: the "
                      "story's render.tune, else on): about 2% faster steps; the first compile "
                      "of each shape on a machine takes 100-200 s longer (cached after)."),
    click.option("--no-fuse", is_flag=True,
                 help="LoRAs as live adapters, no channels_last / fused QKV / cached "
                      "cross-attention K/V (and so no compile either)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress output."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print machine-readable events, one JSON object per line."),
]


def runtime_flags(func):
    """Add the shared rendering options to a command; it receives them as keyword arguments
    (read them with ``runtime_options`` and ``flag``)."""
    for decorator in reversed(_FLAGS):
        func = decorator(func)
    return func


def runtime_options(flags: dict[str, Any]) -> RuntimeOptions:
    """The caller's ``RuntimeOptions`` from the parsed shared flags (unset ones: the
    defaults, so the story's ``render:`` settings apply)."""
    quiet, as_json = flags.get("quiet", False), flags.get("as_json", False)
    return RuntimeOptions(
        device=flags.get("device") or "auto", dtype=flags.get("dtype"),
        offload=bool(flags.get("offload")), vae_tiling=bool(flags.get("vae_tiling")),
        progress=not (quiet or as_json), fuse=not flags.get("no_fuse"),
        compile="auto" if flags.get("compile") is None else flags["compile"],
        tune=flags.get("tune"), batch_size=flags.get("batch_size"))


def only_list(only: str | None) -> list[str] | None:
    """`--only a,b` -> ["a", "b"]."""
    return [x.strip() for x in only.split(",") if x.strip()] if only else None


def user_paths(*paths: str) -> None:
    """Refuse, with one line that says what it is, a file argument that is not a readable
    regular file (missing, a folder, a pipe, a symlink loop)."""
    for path in paths:
        problem = file_problem(path)
        if problem:
            raise UserError(f"{path}: {problem}")
