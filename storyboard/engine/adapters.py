"""Character LoRAs on a loaded model: loaded once as named adapters, switched per batch.

In: a ``LoadedModel``, the ``LoraRef``s of the jobs to render, and for each batch its LoRA set
(``plan.batches.LoraSet``). Out: ``Adapters``, which loads each distinct (character, file) once
(converted to diffusers' format first, cached by the file's sha256), refuses the whole render
before any denoising if one does not fit, and makes exactly a batch's LoRAs act on the weights.

Two ways to act: merged into the weights (the default; ``merge``), rebuilt from saved copies of
the base weights so no rounding builds up and a panel never depends on the batches before it;
or live peft adapters (``--no-fuse``, ``--offload``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..paths import converted_loras_dir
from ..plan.batches import LoraSet
from ..plan.jobs import PanelJob
from .loading import LoadedModel

# What Adapters.merged holds while a merge is under way: equal to no real set of adapters.
_PARTIAL = (("", float("nan")),)

Named = tuple[tuple[str, float], ...]  # (adapter name, weight), sorted


class LoraError(UserError):
    """One or more character LoRAs cannot be used with the model."""


@dataclass
class Adapters:
    """The LoRA state of one loaded model. ``before_load`` runs before a new LoRA is loaded
    (the engine undoes fused QKV projections there: adapters attach to to_q/to_k/to_v)."""

    model: LoadedModel
    merge: bool = True  # LoRAs merged into the weights per batch, rather than live adapters
    before_load: Callable[[], None] = lambda: None
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # (char, path) -> name
    merged: Named | None = None  # what the weights hold now
    frozen: bool = False  # the weights are FP8 now: no merge can follow
    _base: dict[str, Any] = field(default_factory=dict)  # layer name -> its base weight (CPU)

    # -- loading ----------------------------------------------------------------------------

    def load(self, jobs: list[PanelJob]) -> None:
        """Load each distinct (character, LoRA file) once, as a named adapter."""
        problems = []
        for job in jobs:
            for lora in job.loras:
                key = (lora.character, lora.path)
                if key in self.names:
                    continue
                if self.frozen:
                    raise LoraError("this model's UNet is already in FP8 (dtype fp8): load it "
                                    "again to render panels with other LoRAs")
                self.before_load()
                name = lora.character if not any(k[0] == lora.character for k in self.names) \
                    else f"{lora.character}-{len(self.names)}"
                error = self._load_one(lora.path, name, lora.sha256)
                if error:
                    problems.append(f"character {lora.character!r}: LoRA {lora.path} {error}")
                else:
                    self.names[key] = name
        if problems:
            raise LoraError("cannot use these LoRAs with the model "
                            f"({self.model.family}, {self.model.ref.ref}):\n  "
                            + "\n  ".join(problems))

    def named(self, loras: LoraSet) -> Named:
        """A batch's LoRA set as (adapter name, weight) pairs."""
        return tuple(sorted((self.names[(character, path)], weight)
                            for character, path, weight in loras))

    def _prepared(self, path: str, sha256: str) -> str:
        """The LoRA as a diffusers-format file that loads cleanly into this model: converted
        once per source file and model family (DiffSynth checkpoints, kohya, PEFT, pickles all
        end up the same way), cached by the source's sha256."""
        from ..loras import convert_lora

        target = converted_loras_dir() / f"{sha256}-{self.model.family}.safetensors"
        if not target.is_file():
            convert_lora(path, target, to="diffusers", family=self.model.family,
                         unet_config=self.model.pipe.unet.config)
        return str(target)

    def _load_one(self, path: str, name: str, sha256: str) -> str | None:
        """Load a LoRA; a message when it does not fit. Unexpected or missing keys are only
        logged by diffusers, and a missing one would leave random weights active, so both are
        treated as errors."""
        import warnings

        from ..loras import LoraFormatError

        catcher = _LogCatcher()
        loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
        saved = [(lg, lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
        for logger in loggers:
            logger.handlers = [catcher]
            logger.setLevel(logging.WARNING)
            logger.propagate = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peft's "multiple adapters" notice
                self.model.pipe.load_lora_weights(self._prepared(path, sha256),
                                                  adapter_name=name)
        except LoraFormatError as exc:
            return f"cannot be used: {exc.problem}"
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            first = str(exc).strip().splitlines()
            detail = first[0] if first else type(exc).__name__
            if "size mismatch" in str(exc):
                detail = ("has layers of a different size than the model (trained for another "
                          "model family?): " + _first_mismatch(str(exc)))
            return f"does not fit: {detail}"
        finally:
            for logger, level, handlers, propagate in saved:
                logger.handlers = handlers
                logger.setLevel(level)
                logger.propagate = propagate
        bad = [m for m in catcher.messages if "unexpected keys" in m or "missing keys" in m]
        if bad:
            self._drop(name)
            return "does not match the model: " + bad[0][:300]
        if self.merge and any(layer.use_dora.get(name) or getattr(layer, "lora_bias", {}).get(name)
                              for _, layer in self._lora_layers()):
            # Their deltas are not a plain weight sum, so they cannot be merged.
            self._drop(name)
            return "has DoRA or bias terms, which cannot be merged into the weights; render " \
                   "with --no-fuse to use it as a live adapter"
        return None

    def _drop(self, name: str) -> None:
        try:
            self.model.pipe.delete_adapters(name)
        except (ValueError, KeyError, AttributeError):
            pass

    # -- switching ----------------------------------------------------------------------------

    def activate(self, adapters: Named) -> None:
        """Make exactly ``adapters`` (name, weight) act on the model for the next batch."""
        pipe = self.model.pipe
        if not self.names:
            return
        if self.merge:
            self._merge(adapters)
            return
        if not adapters:
            # set_adapters([]) raises in diffusers 0.42; disabling restores the base exactly.
            pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in adapters], [w for _, w in adapters])

    def freeze(self) -> None:
        """The weights are about to become FP8 with what is merged now: no merge can follow,
        and the saved base weights are no longer needed."""
        self.frozen = True
        self._base.clear()

    def _merge(self, adapters: Named) -> None:
        """Write ``adapters`` into the base weights, with the adapters themselves disabled.

        Merged, a LoRA costs nothing per step and the UNet compiles as if it had none
        (docs/speed-experiments.md: 29.2 ms per panel-step, against 39.8 with the adapter live).
        peft's merge/unmerge round trip subtracts the delta again, which in fp16 leaves rounding
        residue that builds up batch after batch; so each touched layer is rebuilt from a saved
        copy of its base weight, and a panel never depends on which batches came before it.
        """
        layers = self._lora_layers()
        # Forward = base layer only, every time: a LoRA loaded since the last batch arrives
        # switched on. Layer by layer, over every component, text encoders included.
        for _, layer in layers:
            layer.enable_adapters(False)
        if adapters == self.merged:
            return
        if self.frozen:
            raise LoraError("this model's UNet is already in FP8 (dtype fp8) with other LoRAs "
                            "merged in: load it again to render panels with other LoRAs")
        import torch

        self.merged = _PARTIAL  # until every layer is written (an OOM may stop it half-way)
        weights = dict(adapters)
        with torch.no_grad():
            for qualified, layer in layers:
                mine = sorted(n for n in weights
                              if any(n in getattr(layer, attr, {})
                                     for attr in layer.adapter_layer_names))
                base = layer.get_base_layer().weight
                if qualified not in self._base:
                    if not mine:
                        continue
                    self._base[qualified] = base.detach().to("cpu", copy=True)
                # A copy even where device and dtype already match: the saved one stays as is.
                new = self._base[qualified].to(base.device, torch.float32, copy=True)
                for name in mine:
                    layer.set_scale(name, weights[name])
                    new += layer.get_delta_weight(name).float()
                base.copy_(new)
        self.merged = adapters

    def _lora_layers(self) -> list[tuple[str, Any]]:
        """(component.module name, layer) of every peft LoRA layer, in a stable order. Named,
        not keyed by ``id()``: an id can be reused by another object once one is freed."""
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [(f"{component}.{name}", m)
                for component, c in self.model.pipe.components.items()
                if isinstance(c, torch.nn.Module)
                for name, m in c.named_modules()
                if isinstance(m, BaseTunerLayer)]


def _first_mismatch(text: str) -> str:
    for line in text.splitlines():
        if "size mismatch" in line:
            return line.strip()[:300]
    return text[:300]


class _LogCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
