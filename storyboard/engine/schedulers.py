"""Samplers on a loaded model: each batch gets the scheduler its jobs name.

In: a loaded pipeline and a canonical sampler name (``samplers``). Out: that scheduler installed
on the pipeline, built from the model's *own* scheduler config (so its training-time settings
carry over), and the name A1111 would print for it in PNG info.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..samplers import SAMPLERS

# The name A1111 prints for a model's own scheduler class, when it is one of the recipes.
_CLASS_TO_SAMPLER = {r.cls: r.name for r in SAMPLERS.values() if r.cls and not r.config}


@dataclass
class Schedulers:
    pipe: Any
    base_config: Any = None  # the model's own scheduler config, saved before the first swap

    def use(self, name: str, seed: int | None = None) -> str:
        """Install the scheduler ``name``; return the sampler name as A1111 would print it.
        ``seed`` seeds the Brownian tree of samplers that render alone (``SamplerRecipe.solo``).
        """
        import diffusers

        if self.base_config is None:
            self.base_config = self.pipe.scheduler.config
        config = self.base_config
        recipe = SAMPLERS[name]
        if recipe.cls is None:
            cls_name = config["_class_name"]
            scheduler = getattr(diffusers, cls_name).from_config(config)
            used = _CLASS_TO_SAMPLER.get(cls_name, cls_name)
        else:
            extra = dict(recipe.config)
            if recipe.solo:
                extra["noise_sampler_seed"] = seed
            try:
                scheduler = getattr(diffusers, recipe.cls).from_config(config, **extra)
            except ImportError as exc:
                raise UserError(f"sampler {name!r} needs the {recipe.needs} package: "
                                f"pip install {recipe.needs}") from exc
            used = name
        self.pipe.scheduler = scheduler
        return used
