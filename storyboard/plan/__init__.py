"""Phase 2, compile: a validated ``Story`` in; render jobs and a render plan out. No torch.

- ``jobs``: ``PanelJob`` / ``ModelRef`` / ``LoraRef`` and the content hash;
- ``templating``: the Jinja that expands prompts; ``sandbox``: what it may reach and cost;
- ``compile``: story -> one ``PanelJob`` per panel (``compile_story``);
- ``tokens``: warnings for prompts longer than the text encoder reads;
- ``batches``: which panels share a pipeline call (pure);
- ``speed``: which speed-ups a render gets, and the ``RenderPlan`` (pure).
"""

from .compile import compile_story
from .jobs import LoraRef, ModelRef, PanelJob, with_hash
from .speed import RenderPlan, Speedup, plan_render

__all__ = ["compile_story", "LoraRef", "ModelRef", "PanelJob", "with_hash", "RenderPlan",
           "Speedup", "plan_render"]
