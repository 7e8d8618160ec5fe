"""Phase 0, make the characters: a story's `train:` sections in; the jobs that train their LoRAs
out. No torch here (the trainer is ``engine.training``).

- ``jobs``: ``TrainImage``, ``TrainSettings``, ``TrainJob`` and its key (the cache's name for
  the trained LoRA: a hash of exactly what changes the weights).
"""
