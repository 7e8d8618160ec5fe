"""Phase 0, make the characters: a story's `train:` sections in; the jobs that train their LoRAs
out. No torch here (the trainer is ``engine.training``).

- ``jobs``: ``TrainImage``, ``TrainSettings``, ``TrainJob`` and its key (the cache's name for
  the trained LoRA: a hash of exactly what changes the weights);
- ``images``: ``open_picture``, a reference picture as the trainer sees it;
- ``dataset``: a folder of pictures checked, filtered and captioned (``scan_dataset``);
- ``compile``: story -> one ``TrainJob`` per trained character (``compile_training``);
- ``store``: trained LoRAs in the cache: status, the finished record, the ``LoraRef`` a
  character gains, and the roots `clean` reads.
"""
