"""Apply the speed-ups the plan chose (``plan.speed``) to a loaded model, once.

In: a ``LoadedModel`` and ``Speedup``s in order. Out: an ``AppliedSpeedups``: what is in effect
(a speed-up that fails part-way leaves the record truthful), and the handles that later steps
need (the cross-attention K/V cache, to re-wrap after unfusing). The pipeline's UNet and VAE are
changed in place: channels_last, fused QKV projections, FP8 (torchao), torch.compile (through
saved artifacts where it can: ``artifacts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...plan.speed import Speedup
from ..environment import quiet_loading
from ..loading import LoadedModel
from .artifacts import install as install_artifacts
from .artifacts import supported as artifacts_supported


@dataclass
class AppliedSpeedups:
    """What a model's speed-ups are now. Owned by the engine's ``ModelState``."""

    applied: list[Speedup] = field(default_factory=list)
    cross_kv: Any = None  # attention.crosskv.CrossKV once CROSS_KV is applied
    compiled: list = field(default_factory=list)  # artifacts.CompiledMethod, UNet then VAE

    def __contains__(self, item: Speedup) -> bool:
        return item in self.applied


def _fp8_layer(module: Any, fqn: str) -> bool:
    import torch

    # torch._scaled_mm needs both dimensions to be multiples of 16. The time and added-condition
    # embeddings see one row per image: nothing to gain, and cuBLAS refuses some of their FP8
    # shapes (Kolors' 5632-wide add_embedding, on an H200). LoRA factors (merged into the base
    # weights by then, and disabled) stay as they are.
    return (isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0
            and module.out_features % 16 == 0 and "lora_" not in fqn
            and not fqn.startswith(("time_embedding", "add_embedding")))



def apply_speedups(model: LoadedModel, names: tuple[Speedup, ...] | list[Speedup], *,
                   backend: str = "inductor",
                   into: AppliedSpeedups | None = None) -> AppliedSpeedups:
    """Apply ``names`` to ``model``; returns what is in effect (``into``, when given, is the
    record to fill). Call once per loaded model. ``backend`` is torch.compile's: tests use
    "aot_eager" on CPU, which traces the same graphs without generating kernels."""
    # Filled as each one takes effect, so a failure part-way leaves it truthful.
    done = into if into is not None else AppliedSpeedups()
    if not names:
        return done
    import torch

    unet = model.pipe.unet
    if Speedup.CHANNELS_LAST in names:
        unet.to(memory_format=torch.channels_last)
        done.applied.append(Speedup.CHANNELS_LAST)
    if Speedup.FUSED_QKV in names:
        unet.fuse_qkv_projections()
        done.applied.append(Speedup.FUSED_QKV)
    if Speedup.FP8 in names:
        # After fusing (fusion concatenates plain weights) and before compiling. torchao's own
        # inductor settings are left off: they made the SDXL UNet compile for over 5 minutes.
        with quiet_loading():
            from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, PerRow,
                                              quantize_)
        quantize_(unet, Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=False), filter_fn=_fp8_layer)
        done.applied.append(Speedup.FP8)
    compile_options = None
    if Speedup.TUNED_KERNELS in names and Speedup.TORCH_COMPILE in names and backend == "inductor":
        from .tuning import COMPILE_OPTIONS, warm_cache_keeps_tuning

        # Only where a warm cache keeps the tuning: otherwise every build would tune again.
        if warm_cache_keeps_tuning():
            compile_options = COMPILE_OPTIONS
            done.applied.append(Speedup.TUNED_KERNELS)
    # Saved artifacts (speed/artifacts.py) where this torch has them and the backend can be
    # named again by a later process; FP8's tensor subclasses were never measured saved.
    artifacts = (Speedup.TORCH_COMPILE in names and isinstance(backend, str)
                 and Speedup.FP8 not in names and artifacts_supported())
    if Speedup.TORCH_COMPILE in names:
        # The UNet's forward, not the module: the pipeline keeps calling the module itself,
        # whose hooks (the K/V cache's) run outside the graph. Static shapes: each batch
        # shape gets its own graph, cached on disk like the first; dynamic ones would be
        # slower, and recorded shape profiles would make the next process compile a dynamic
        # graph from scratch.
        if artifacts:
            done.compiled.append(install_artifacts(unet, "forward", "unet", backend=backend,
                                                   options=compile_options))
        else:
            unet.forward = torch.compile(unet.forward, backend=backend,
                                         options=compile_options, dynamic=False)
        done.applied.append(Speedup.TORCH_COMPILE)
    if Speedup.VAE_COMPILE in names:
        # The VAE decodes every panel once: a few percent of a panel, compiled the same way.
        vae = model.pipe.vae
        vae.to(memory_format=torch.channels_last)
        if artifacts:
            done.compiled.append(install_artifacts(vae, "decode", "vae", backend=backend,
                                                   options=None))
        else:
            vae.decode = torch.compile(vae.decode, backend=backend, dynamic=False)
        done.applied.append(Speedup.VAE_COMPILE)
    if Speedup.CROSS_KV in names:
        # Its hook runs before the UNet's forward, compiled or not.
        from ..attention.crosskv import install

        done.cross_kv = install(unet, unet)
        done.applied.append(Speedup.CROSS_KV)
    return done


def unfuse_qkv(model: LoadedModel, done: AppliedSpeedups) -> None:
    """Undo fused QKV projections (before a LoRA is loaded: adapters attach to to_q/to_k/to_v)."""
    if Speedup.FUSED_QKV in done.applied:
        model.pipe.unet.unfuse_qkv_projections()
        done.applied.remove(Speedup.FUSED_QKV)
        if done.cross_kv is not None:  # unfusing put the old processors back
            done.cross_kv.wrap()

