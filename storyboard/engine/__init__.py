"""Phase 3, render: the only package that imports torch, diffusers and peft.

Jobs and options in (``plan``, ``options``); images and a typed account of what was done out.
- ``session``: ``Session`` keeps models loaded between renders; ``prepare`` / ``render``;
- ``loading``: find and load a pipeline (``from_pretrained``, ``from_single_file``);
- ``builtin``: the built-in tiny models, built on first use;
- ``adapters``: character LoRAs, loaded once, merged or live per batch;
- ``schedulers``: the sampler each batch asks for;
- ``runner``: one batch through the pipeline, out-of-memory splitting;
- ``speed/``: applying the speed-ups the plan chose, and kernel tuning;
- ``attention/``: attention processors (cross-attention K/V computed once per call);
- ``environment``: library settings, set when the engine starts, not on import.

Importing this package imports nothing heavy; its modules import torch when they run.
"""
