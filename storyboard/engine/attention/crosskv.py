"""Cross-attention keys and values, computed once per pipeline call instead of once per step.

In: a diffusers UNet (plain or with fused QKV projections) and the module the pipeline calls
(the same UNet, or its ``torch.compile`` wrapper). Out: a ``CrossKV`` handle; from then on the
UNet's cross-attention layers take their keys and values from a cache, which a forward pre-hook
fills from ``encoder_hidden_states`` the first time a pipeline call passes them.

Why: the text embeddings a UNet attends to are the same at every denoising step of a call, so
are their K and V projections. A pipeline computes them again at each step anyway: on SDXL 70
GEMMs of the 77 text tokens per step, on Kolors of 256 tokens. Computing them once per call
gives the same numbers (the same layers on the same input) for less work.

Only layers whose processor is diffusers' ``AttnProcessor2_0`` or ``FusedAttnProcessor2_0``
and that use none of the options those processors apply around the projections (group or
spatial norm, a norm of the text, q/k norms, residual, output rescale) take part. A call with
an attention mask on the text, a LoRA ``scale`` in ``cross_attention_kwargs`` (applied inside
the UNet's forward) or processors replaced since (``unfuse_qkv_projections`` restores the old
ones) runs the layers' own processors, as if nothing were installed.

The cache holds the last call's embeddings (so their memory cannot be reused by a new tensor
that would pass an identity check) and their K/V: ``reset()`` drops both, and the renderer calls
it around every pipeline call, so weights changed between calls (a LoRA merged) are always seen.
"""

from __future__ import annotations

from typing import Any

# The cross_attention_kwargs key the cache travels under, down to each processor.
KWARG = "storyboard_kv"


class CrossKVProcessor:
    """Wraps a layer's own attention processor. Given this layer's K/V in ``storyboard_kv``,
    runs the rest of diffusers' SDPA attention (query, attention, output projection) on them;
    otherwise hands everything to the wrapped processor."""

    def __init__(self, inner: Any, slot: str | None) -> None:
        self.inner = inner
        self.slot = slot  # None: a layer that never takes cached K/V (self-attention)

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, storyboard_kv: Any = None,
                 **kwargs: Any) -> Any:
        kv = storyboard_kv.get(self.slot) if storyboard_kv and self.slot else None
        if kv is None or encoder_hidden_states is None or attention_mask is not None \
                or hidden_states.ndim != 3:
            if temb is not None:  # as diffusers passes it: only to processors that take it
                kwargs["temb"] = temb
            return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **kwargs)
        import torch.nn.functional as F

        key, value = kv
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=None,
                                                       dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1,
                                                              attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def _takes_part(name: str, attn: Any) -> bool:
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    return (attn.is_cross_attention and name.endswith("attn2")
            and type(attn.processor) in (AttnProcessor2_0, FusedAttnProcessor2_0)
            and attn.spatial_norm is None and attn.group_norm is None and not attn.norm_cross
            and getattr(attn, "norm_q", None) is None and getattr(attn, "norm_k", None) is None
            and not attn.residual_connection and attn.rescale_output_factor == 1.0)


class CrossKV:
    """The installed cache: ``wrap()`` (again after diffusers replaced the processors),
    ``reset()`` between pipeline calls, ``remove()`` to undo it all."""

    def __init__(self, unet: Any, called: Any) -> None:
        from diffusers.models.attention_processor import Attention

        self.unet = unet
        self.layers = {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}
        self.slots: dict[str, Any] = {}
        self.embeddings: Any = None  # the encoder_hidden_states the cache was made from
        self.kv: dict[str, tuple[Any, Any]] | None = None
        self.calls = 0  # K/V computations since install: one per pipeline call when it works
        self.wrap()
        self._hook = called.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def wrap(self) -> None:
        """Wrap every attention layer's processor (each must accept the cache's keyword, or
        diffusers warns at every call); mark the layers that take part."""
        self.reset()
        self.slots = {}
        for name, attn in self.layers.items():
            if isinstance(attn.processor, CrossKVProcessor):
                attn.processor = attn.processor.inner
            slot = name if _takes_part(name, attn) else None
            if slot:
                self.slots[slot] = attn
            attn.processor = CrossKVProcessor(attn.processor, slot)

    def reset(self) -> None:
        self.embeddings = None
        self.kv = None

    def remove(self) -> None:
        self.reset()
        self._hook.remove()
        for attn in self.layers.values():
            if isinstance(attn.processor, CrossKVProcessor):
                attn.processor = attn.processor.inner

    def _wrapped(self) -> bool:
        return all(isinstance(attn.processor, CrossKVProcessor) for attn in self.layers.values())

    def _before_forward(self, module: Any, args: tuple, kwargs: dict) -> Any:
        embeddings = kwargs.get("encoder_hidden_states")
        extra = kwargs.get("cross_attention_kwargs") or {}
        if (not self.slots or embeddings is None or "scale" in extra
                or kwargs.get("encoder_attention_mask") is not None
                or self.unet.config.encoder_hid_dim_type not in (None, "text_proj")
                or not self._wrapped()):
            return None
        if embeddings is not self.embeddings:
            self.kv = self._keys_values(embeddings)
            self.embeddings = embeddings
            self.calls += 1
        kwargs["cross_attention_kwargs"] = {**extra, KWARG: self.kv}
        return args, kwargs

    def _keys_values(self, embeddings: Any) -> dict[str, tuple[Any, Any]]:
        """Each layer's K and V, shaped as its processor shapes them (batch, heads, tokens,
        head_dim), from the same projections the processor would call; made contiguous once
        here, which measured faster than views and bit-identical to the uncached compiled UNet
        (docs/speed-experiments.md, round 5: views differed by 1e-3 on Kolors, a compiled
        graph's attention taking them another way)."""
        from diffusers.models.attention_processor import FusedAttnProcessor2_0

        import torch

        text = self.unet.process_encoder_hidden_states(embeddings, {})
        batch = text.shape[0]
        kv = {}
        for slot, attn in self.slots.items():
            if isinstance(attn.processor.inner, FusedAttnProcessor2_0):
                both = attn.to_kv(text)
                key, value = torch.split(both, both.shape[-1] // 2, dim=-1)
            else:
                key, value = attn.to_k(text), attn.to_v(text)
            head_dim = key.shape[-1] // attn.heads
            kv[slot] = tuple(t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                             .contiguous() for t in (key, value))
        return kv


def install(unet: Any, called: Any) -> CrossKV:
    """Install the cache on ``unet``; the hook goes on ``called``, the module the pipeline
    calls (a ``torch.compile`` wrapper runs its own hooks outside the compiled graph)."""
    return CrossKV(unet, called)
