"""The trainer: a ``training.jobs.TrainJob`` in, a character's LoRA files out.

- ``trainer``: ``train_lora`` (the numbered steps: load, freeze, add the LoRA, encode once,
  train, checkpoint, export), ``TrainResult``, ``CheckpointView``.
- ``data``: pictures into their aspect-ratio buckets, VAE latents and text embeddings, computed
  once; batches as the UNet takes them.
- ``objective``: noise, timesteps and the min-SNR-weighted loss of one batch.
- ``state``: checkpoints (LoRA weights, optimizer, generator, step), written atomically.
- ``export``: ``lora.safetensors`` (diffusers) and ``lora-kohya.safetensors``, with metadata.
- ``preview``: panels rendered with the training's live pipeline at a checkpoint (contact
  sheets), leaving the training as it was.
"""

from __future__ import annotations

from .trainer import CheckpointView, TrainResult, train_lora

__all__ = ["train_lora", "TrainResult", "CheckpointView"]
