"""Prior preservation's class pictures as panel jobs: what they are, and that the training key
covers everything their hashes do (so the pictures' bytes need not be in it)."""

from __future__ import annotations

from dataclasses import replace

from storyboard.story import load_story
from storyboard.training.compile import compile_training
from storyboard.training.jobs import CLASS_RENDER, with_key
from storyboard.training.prior import class_jobs
from test_compile import STORY, pictures

PRIOR = "images: refs/mira/\nprior_preservation: {images: 3}"


def write(tmp_path, defaults="{seed: 7}", train=PRIOR, model="tiny-sdxl", name="story.yaml"):
    if not (tmp_path / "refs" / "mira").exists():
        pictures(tmp_path / "refs" / "mira")
    body = "\n".join("      " + line for line in train.splitlines())
    text = STORY.format(model=model, train=body, cid="mira").replace(
        "defaults: {seed: 7}", f"defaults: {defaults}")
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return compile_training(load_story(path))[0]


def test_class_jobs_are_seeded_squares_of_the_class_prompt_without_loras(tmp_path):
    job = write(tmp_path)
    jobs = class_jobs(job)
    assert [j.panel for j in jobs] == ["class-1", "class-2", "class-3"]
    assert {j.prompt for j in jobs} == {"a photo of a girl"}
    assert all(j.loras == () and j.model == job.model for j in jobs)
    assert {(j.width, j.height) for j in jobs} == {(64, 64)}  # the training resolution
    assert all((j.steps, j.guidance, j.scheduler, j.negative_prompt) == (
        CLASS_RENDER["steps"], CLASS_RENDER["guidance"], CLASS_RENDER["scheduler"],
        CLASS_RENDER["negative"]) for j in jobs)
    assert len({j.seed for j in jobs}) == 3 and len({j.hash for j in jobs}) == 3
    assert [j.hash for j in class_jobs(write(tmp_path, name="again.yaml"))] == \
        [j.hash for j in jobs]  # the same story: the same pictures
    assert class_jobs(write(tmp_path, train="images: refs/mira/", name="off.yaml")) == []


def test_the_training_key_covers_everything_the_class_pictures_depend_on(tmp_path):
    base = write(tmp_path)
    hashes = [j.hash for j in class_jobs(base)]
    # The story's render defaults and style do not reach the class pictures, nor the key.
    other = write(tmp_path, defaults="{seed: 7, steps: 12, guidance: 9, negative: ugly, "
                                     "scheduler: Euler a}", name="defaults.yaml")
    assert other.key == base.key and [j.hash for j in class_jobs(other)] == hashes
    # Whatever changes a class picture's hash changes the key too.
    changed = {
        "prompt": write(tmp_path, train=PRIOR.replace("images: 3", "images: 3, prompt: a dog"),
                        name="prompt.yaml"),
        "seed": write(tmp_path, train=PRIOR + "\nseed: 99", name="seed.yaml"),
        "resolution": write(tmp_path, train=PRIOR + "\nresolution: 96", name="res.yaml"),
        "model": write(tmp_path, model="tiny-kolors", name="model.yaml"),
    }
    for what, job in changed.items():
        assert job.key != base.key, what
        assert not {j.hash for j in class_jobs(job)} & set(hashes), what
    more = write(tmp_path, train=PRIOR.replace("images: 3", "images: 4"), name="more.yaml")
    assert more.key != base.key and [j.hash for j in class_jobs(more)][:3] == hashes
    # And how they are rendered is in the key itself: a change there retrains.
    import storyboard.training.jobs as jobs_module

    recipe = dict(CLASS_RENDER)
    try:
        jobs_module.CLASS_RENDER["steps"] = 31
        assert with_key(replace(base, key="")).key != base.key
    finally:
        jobs_module.CLASS_RENDER.clear()
        jobs_module.CLASS_RENDER.update(recipe)
    # A training without prior preservation keeps the key it had before class pictures.
    plain = write(tmp_path, train="images: refs/mira/", name="plain.yaml")
    assert "class_render" not in plain.key_payload()
