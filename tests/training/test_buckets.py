"""Aspect-ratio buckets (training/buckets.py): sizes, assignment, crop plans, batch order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from storyboard.training.buckets import (MAX_ASPECT, MIN_ASPECT, BatchOrder, Bucket, assign,
                                         bucket_sizes, bucket_step, crop_plan)


def test_sdxl_resolution_gives_sdxls_published_buckets():
    step = bucket_step(1024)
    assert step == 64
    sizes = {(b.width, b.height) for b in bucket_sizes(1024, step)}
    # SDXL's training sizes (the SDXL report, appendix I) that lie within aspect 0.5..2.
    for size in [(1024, 1024), (1152, 896), (1216, 832), (1344, 768), (1408, 704)]:
        assert size in sizes and size[::-1] in sizes


def test_small_resolutions_get_a_few_buckets_in_vae_multiples():
    assert bucket_step(64) == 8 and bucket_step(64, multiple=16) == 16
    assert bucket_step(256) == 32 and bucket_step(512) == 64
    sizes = bucket_sizes(64, 8)
    assert Bucket(64, 64) in sizes and len(sizes) == 5
    assert {(b.width, b.height) for b in sizes} == {(64, 64), (72, 56), (56, 72), (80, 48),
                                                    (48, 80)}


@given(resolution=st.integers(64, 2048), multiple=st.sampled_from([8, 16]))
@settings(max_examples=60, deadline=None)
def test_every_bucket_fits_the_area_and_the_aspect_range(resolution, multiple):
    step = bucket_step(resolution, multiple)
    sizes = bucket_sizes(resolution, step)
    assert sizes == tuple(sorted(set(sizes)))
    for b in sizes:
        assert b.width % step == 0 and b.height % step == 0
        assert b.width * b.height <= resolution * resolution
        assert MIN_ASPECT <= b.aspect <= MAX_ASPECT
        assert Bucket(b.height, b.width) in sizes


def test_a_wide_picture_goes_to_a_wide_bucket_not_a_square_crop():
    buckets = bucket_sizes(1024, 64)
    assert assign(2000, 1000, buckets) == Bucket(1408, 704)
    assert assign(1000, 2000, buckets) == Bucket(704, 1408)
    assert assign(999, 1000, buckets) == Bucket(1024, 1024)
    assert assign(4000, 1000, buckets) == Bucket(1408, 704)  # past the range: the widest
    plan = crop_plan(2000, 1000, Bucket(1408, 704))
    assert plan.resized == (1408, 704) and (plan.left, plan.top) == (0, 0)
    assert plan.original_size == (1000, 2000)  # (height, width), as SDXL records it
    assert plan.crops_coords_top_left == (0, 0) and plan.target_size == (704, 1408)
    assert plan.time_ids == (1000, 2000, 0, 0, 704, 1408)


def test_crop_plan_covers_the_bucket_and_centres_the_crop():
    # 3:2 into 80x48 (5:3): at height 48 it would be 72 wide, short of 80; so scaled to width
    # 80 -> height 53, 5 rows over, cropped 2 from the top.
    plan = crop_plan(300, 200, Bucket(80, 48))
    assert plan.resized == (80, 53) and (plan.left, plan.top) == (0, 2)
    assert plan.crops_coords_top_left == (2, 0) and plan.original_size == (200, 300)
    plan = crop_plan(100, 400, Bucket(48, 80))  # 1:4 into 3:5: cropped top and bottom
    assert plan.resized == (48, 192) and plan.top == 56 and plan.left == 0


@given(w=st.integers(1, 5000), h=st.integers(1, 5000))
@settings(max_examples=200, deadline=None)
def test_crop_plans_always_fit(w, h):
    buckets = bucket_sizes(512, 64)
    b = assign(w, h, buckets)
    plan = crop_plan(w, h, b)
    rw, rh = plan.resized
    assert rw >= b.width and rh >= b.height
    assert 0 <= plan.left and plan.left + b.width <= rw
    assert 0 <= plan.top and plan.top + b.height <= rh
    assert min(rw - b.width, rh - b.height) <= 1  # scaled to cover, no more


def test_batches_never_mix_buckets_and_cover_every_picture_each_epoch():
    square, wide = Bucket(64, 64), Bucket(80, 48)
    buckets = (square, wide, square, square, wide, square, square)
    order = BatchOrder(buckets, batch_size=2, seed=7)
    assert order.per_epoch == 3 + 1
    for epoch in range(5):
        batches = order.epoch(epoch)
        assert len(batches) == order.per_epoch
        assert sorted(i for b in batches for i in b) == list(range(len(buckets)))
        for batch in batches:
            assert len({buckets[i] for i in batch}) == 1
    assert order.epoch(0) != order.epoch(1)  # reshuffled each epoch


def test_batch_order_is_a_function_of_seed_and_step():
    buckets = (Bucket(64, 64),) * 5 + (Bucket(80, 48),) * 3
    a = BatchOrder(buckets, batch_size=2, seed=3)
    steps = [a.batch(s) for s in range(30)]
    # Another object, asked out of order (as a resumed training is): the same batches.
    b = BatchOrder(buckets, batch_size=2, seed=3)
    assert [b.batch(s) for s in reversed(range(30))][::-1] == steps
    assert [BatchOrder(buckets, 2, seed=4).batch(s) for s in range(30)] != steps
    assert [BatchOrder(buckets, 2, seed=3, name="prior").batch(s) for s in range(30)] != steps
    # Pinned: random.Random with a string seed is the same in every process (not hashed with
    # PYTHONHASHSEED); a change here changes what trains when, so it bumps the recipe version.
    assert steps[:4] == [(4, 3), (7,), (0,), (5, 6)]
