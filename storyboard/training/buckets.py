"""Aspect-ratio buckets: the size each reference picture is trained at, and the batch order.

In: the training resolution (a bucket's area is at most resolution², as in kohya's trainers),
the size step (``bucket_step``), pictures' sizes, a batch size and a seed. Out: the buckets
(``bucket_sizes``); the bucket a picture goes to (``assign``: the nearest aspect ratio, so a
wide picture trains wide instead of losing its sides to a square centre crop); how it gets
there (``crop_plan``: scale to cover the bucket, centre-crop the overflow, and what SDXL's
size and crop conditioning records: ``original_size``, ``crops_coords_top_left``,
``target_size``); and the batches of every epoch (``BatchOrder``: pictures of one bucket per
batch, shuffled by a seeded ``random.Random``, so the batch at any step is a pure function of
the seed and the step, and a resumed training sees the batches an uninterrupted one would).

No torch; sizes are (width, height) unless named ``*_size``, which follow diffusers' (height,
width) convention for the SDXL conditioning.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

MIN_ASPECT = 0.5  # width / height
MAX_ASPECT = 2.0


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


@dataclass(frozen=True)
class CropPlan:
    """How one picture becomes its bucket's size: resize to ``resized`` (width, height), then
    crop the bucket's size at (``left``, ``top``)."""

    bucket: Bucket
    resized: tuple[int, int]
    left: int
    top: int
    original_size: tuple[int, int]  # (height, width) of the picture as read
    crops_coords_top_left: tuple[int, int]  # (top, left), in the resized picture

    @property
    def target_size(self) -> tuple[int, int]:
        return (self.bucket.height, self.bucket.width)

    @property
    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        """SDXL's added time ids, in the order its pipelines build them: original size, crop
        top-left, target size."""
        return (*self.original_size, *self.crops_coords_top_left, *self.target_size)


def bucket_step(resolution: int, multiple: int = 8) -> int:
    """The step bucket sides move in: 64 (SDXL's published sizes, kohya's default) from
    resolution 512 up; below that (the tiny test models) an eighth of the resolution, so small
    resolutions still get a few buckets. Always a multiple of ``multiple`` (the VAE's factor:
    latents must have whole pixels)."""
    if resolution < multiple:
        raise ValueError(f"resolution {resolution} is below the VAE factor {multiple}")
    step = 64 if resolution >= 512 else resolution // 8
    return max(multiple, step // multiple * multiple)


def bucket_sizes(resolution: int, step: int) -> tuple[Bucket, ...]:
    """Buckets of area at most resolution² (sides multiples of ``step``, aspect ratio from
    ``MIN_ASPECT`` to ``MAX_ASPECT``): for each width from the square up, the tallest height
    that fits the area, and each landscape bucket's portrait twin. Sorted, square included."""
    if resolution < step or step <= 0:
        raise ValueError(f"resolution {resolution} with step {step}: no bucket fits")
    area = resolution * resolution
    side = resolution // step * step
    found = {Bucket(side, side)}
    width = side + step
    while True:
        height = area // width // step * step
        if height <= 0 or width / height > MAX_ASPECT:
            break
        found |= {Bucket(width, height), Bucket(height, width)}
        width += step
    return tuple(sorted(found))


def assign(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket with the aspect ratio nearest the picture's (on a log scale, so 2:1 and 1:2
    are as far from square); on a tie, the first in ``buckets``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"a picture of {width}x{height} has no aspect ratio")
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b.aspect) - aspect))


def crop_plan(width: int, height: int, bucket: Bucket) -> CropPlan:
    """Scale a ``width`` x ``height`` picture to cover ``bucket`` (aspect ratio kept), then
    centre-crop the overflow."""
    scale = max(bucket.width / width, bucket.height / height)
    resized = (max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale)))
    left = (resized[0] - bucket.width) // 2
    top = (resized[1] - bucket.height) // 2
    return CropPlan(bucket=bucket, resized=resized, left=left, top=top,
                    original_size=(height, width), crops_coords_top_left=(top, left))


@dataclass(frozen=True)
class BatchOrder:
    """The batches of every epoch for pictures in ``buckets`` (one bucket per picture, by
    index). Each epoch groups the pictures by bucket, shuffles each group, cuts it into batches
    of ``batch_size`` (a group's last batch may be smaller: a character has few pictures, and
    none is left out) and shuffles the batches; every epoch has the same number of batches.
    ``name`` separates the streams of two orders with one seed (instance and class pictures)."""

    buckets: tuple[Bucket, ...]
    batch_size: int
    seed: int
    name: str = "instance"

    def __post_init__(self) -> None:
        if not self.buckets:
            raise ValueError("no pictures to put in batches")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")

    @cached_property
    def _groups(self) -> tuple[tuple[int, ...], ...]:
        by_bucket: dict[Bucket, list[int]] = {}
        for index, bucket in enumerate(self.buckets):
            by_bucket.setdefault(bucket, []).append(index)
        return tuple(tuple(by_bucket[b]) for b in sorted(by_bucket))

    @property
    def per_epoch(self) -> int:
        return sum(math.ceil(len(g) / self.batch_size) for g in self._groups)

    def epoch(self, epoch: int) -> list[tuple[int, ...]]:
        """The batches (picture indices) of ``epoch``, in order."""
        # A string seed is hashed with SHA-512 by random.Random: the same in every process.
        rng = random.Random(f"storyboard-buckets:{self.name}:{self.seed}:{epoch}")
        batches: list[tuple[int, ...]] = []
        for group in self._groups:
            members = list(group)
            rng.shuffle(members)
            batches += [tuple(members[i:i + self.batch_size])
                        for i in range(0, len(members), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def batch(self, step: int) -> tuple[int, ...]:
        """The batch trained at ``step`` (0-based), wherever the training started."""
        epoch, position = divmod(step, self.per_epoch)
        return self.epoch(epoch)[position]
