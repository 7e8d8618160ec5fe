"""How to run a render, independent of the story: the one place options are assembled.

In: command-line flags (or a library caller's arguments) and a story's ``render:`` section.
Out: a frozen ``RuntimeOptions``; ``with_story`` merges the story's settings under the caller's,
once, before anything renders. None of these options changes what a panel should look like
beyond the device's arithmetic, so none is part of a job's hash (``--dtype`` is the exception,
and goes into the cache key instead: ``output.cache.cache_key``).

Plain data, no torch: planning reads it as much as the engine does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .constants import DTYPES

COMPILE_CHOICES = (True, False, "auto")


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str | None = None  # overrides the story's dtype: fp16 | bf16 | fp32 | fp8
    offload: bool = False  # model CPU offload, for GPUs with little memory
    vae_tiling: bool = False  # decode large images in tiles
    progress: bool = True  # diffusers' step progress bars
    # Speed switches (plan/speed.py decides what they lead to). fuse: LoRAs merged into the
    # weights for each batch and, on CUDA, the cross-attention K/V cache; compile: True, False,
    # or "auto" (when the render has enough work to pay a compile back); tune: coordinate-descent
    # tuning when compiling, None until merged with the story (default on).
    fuse: bool = True
    compile: bool | str = "auto"
    tune: bool | None = None
    batch_size: int | None = None  # most panels per pipeline call; None: by device (plan)

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_CHOICES or isinstance(self.compile, int) \
                and not isinstance(self.compile, bool):  # "false" must not read as true
            raise ValueError(f"compile must be True, False or 'auto', not {self.compile!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or None, not "
                             f"{self.dtype!r}")
        if self.batch_size is not None and not 1 <= self.batch_size <= 64:
            raise ValueError(f"batch_size must be between 1 and 64, not {self.batch_size!r}")

    def with_story(self, render) -> RuntimeOptions:
        """These options over a story's ``render:`` section (a ``RenderSpec``): ``fuse`` is
        off if either says so; ``compile``, ``tune`` and ``batch_size`` are the caller's where
        given ("auto" and None mean "not given"), else the story's."""
        return replace(
            self,
            fuse=self.fuse and render.fuse,
            compile=render.compile if self.compile == "auto" else self.compile,
            tune=render.tune if self.tune is None else self.tune,
            batch_size=self.batch_size or render.batch_size,
        )


def resolve_dtype(story_dtype: str, override: str | None, device: str) -> str:
    """fp16 on CUDA and MPS, fp32 on CPU, unless the story or the command line says otherwise."""
    choice = override or story_dtype
    if choice == "auto":
        return "fp32" if device == "cpu" else "fp16"
    return choice
