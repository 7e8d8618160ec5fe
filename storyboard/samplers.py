"""Sampler names users know (AUTOMATIC1111 / ComfyUI) -> diffusers scheduler recipes.

In: a name as a writer types it ("DPM++ 2M Karras", "dpmpp_2m karras", "euler a").
Out: its canonical spelling and a ``SamplerRecipe`` (diffusers class name + config overrides) that
the renderer applies to the model's own scheduler config, with the two facts batch planning needs
(how many UNet calls a step makes, and whether a panel must render alone). Only strings and
numbers live here, so validation and planning never import diffusers or torch; a test checks the
facts against diffusers' own classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplerRecipe:
    name: str  # canonical, as AUTOMATIC1111 prints it in PNG info
    cls: str | None  # diffusers scheduler class; None keeps the model's own scheduler
    config: dict = field(default_factory=dict)
    needs: str | None = None  # an optional package the scheduler imports
    # UNet calls per step: diffusers' ``SchedulerClass.order`` (Heun-like samplers evaluate
    # twice). The models' own schedulers (Euler, DDIM, DPM++ 2M...) are first order.
    order: int = 1
    # Per-sample noise from one Brownian tree shared by the batch, not from the per-panel
    # generators: such panels render one at a time, the panel's seed seeding the tree.
    solo: bool = False


DEFAULT = "Default"

_RECIPES = [
    SamplerRecipe(DEFAULT, None),
    SamplerRecipe("Euler", "EulerDiscreteScheduler"),
    SamplerRecipe("Euler a", "EulerAncestralDiscreteScheduler"),
    SamplerRecipe("Heun", "HeunDiscreteScheduler", order=2),
    SamplerRecipe("LMS", "LMSDiscreteScheduler"),
    SamplerRecipe("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    SamplerRecipe("DDIM", "DDIMScheduler"),
    SamplerRecipe("UniPC", "UniPCMultistepScheduler"),
    SamplerRecipe("DPM2", "KDPM2DiscreteScheduler", order=2),
    SamplerRecipe("DPM2 a", "KDPM2AncestralDiscreteScheduler", order=2),
    SamplerRecipe("DPM++ 2M", "DPMSolverMultistepScheduler"),
    SamplerRecipe("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    SamplerRecipe("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "sde-dpmsolver++"}),
    SamplerRecipe("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    SamplerRecipe("DPM++ SDE", "DPMSolverSDEScheduler", needs="torchsde", order=2, solo=True),
    SamplerRecipe("DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True},
                  needs="torchsde", order=2, solo=True),
]
SAMPLERS: dict[str, SamplerRecipe] = {r.name: r for r in _RECIPES}

# ComfyUI's sampler_name spellings, mapped onto the same recipes ("<name> karras" also works).
_COMFY = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "lms": "LMS",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE",
}


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower())


_LOOKUP: dict[str, str] = {}
for _name in SAMPLERS:
    _LOOKUP[_squash(_name)] = _name
for _comfy, _name in _COMFY.items():
    _LOOKUP[_squash(_comfy)] = _name
    if f"{_name} Karras" in SAMPLERS:
        _LOOKUP[_squash(_comfy + " karras")] = f"{_name} Karras"
_LOOKUP.update({"eulerancestral": "Euler a", "auto": DEFAULT, "default": DEFAULT})


def canonical_sampler(name: str) -> str | None:
    """The canonical name for ``name``, or None when it names no known sampler."""
    return _LOOKUP.get(_squash(name))


def sampler_names() -> list[str]:
    return list(SAMPLERS)
