"""The trainer beyond the SDXL run: Kolors, buckets as the UNet sees them, prior preservation,
checkpoints that are not this job's, and what is refused before any model is loaded."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import trainkit  # noqa: E402
from storyboard.engine.builtin import builtin_folder  # noqa: E402
from storyboard.engine.loading import load_model  # noqa: E402
from storyboard.engine.training import data, train_lora  # noqa: E402
from storyboard.errors import UserError  # noqa: E402
from storyboard.loras import inspect_lora  # noqa: E402
from storyboard.plan import ModelRef  # noqa: E402

pytestmark = pytest.mark.usefixtures("session_cache")


def test_kolors_lora_learns_and_renders(tmp_path):
    """ChatGLM stays frozen; the UNet's LoRA learns and renders through a Kolors story, in
    both formats.

    Learning is measured on held-out noise (the same draws for base and trained), not on the
    training's own per-step losses: over 60 steps of one picture each, those follow which
    timesteps were drawn more than what was learned (here, by tens of steps: 0.90, 0.96, 1.10,
    1.07, 1.06, 0.92), while the held-out loss falls from 1.160 to 1.060."""
    job = trainkit.job(trainkit.pictures(tmp_path / "pictures", [(64, 64), (128, 64)]),
                       model="tiny-kolors")
    trainable = []

    def look(view):
        trainable[:] = [f"{name}.{n}" for name, c in view.pipeline.components.items()
                        if isinstance(c, torch.nn.Module)
                        for n, p in c.named_parameters() if p.requires_grad]

    result = train_lora(job, tmp_path / "out", device="cpu", on_checkpoint=look)
    # Only the UNet's LoRA learns: ChatGLM, the VAE and the UNet's own weights are frozen.
    assert trainable and all(n.startswith("unet.") and ".lora_" in n for n in trainable)
    print(f"kolors loss: first 10 {np.mean(result.losses[:10]):.3f}, last 10 "
          f"{np.mean(result.losses[-10:]):.3f}, {result.seconds:.1f} s")

    story = trainkit.story(tmp_path, "tiny-kolors", {"dif": str(result.lora_file),
                                                     "koh": str(result.kohya_file)})
    base, trained = trainkit.held_out_with_loras(story, "tiny-kolors", job.images)
    trained = trained["dif"]
    print(f"kolors held-out denoising loss: base {base:.3f}, trained {trained:.3f}")
    assert trained < 0.96 * base

    for path, fmt in ((result.lora_file, "diffusers"), (result.kohya_file, "kohya")):
        info = inspect_lora(path, unet_config=builtin_folder("tiny-kolors"))
        assert (info.format, info.ranks, info.alphas) == (fmt, (4,), (8.0,))
        assert not info.text_encoder
    r = trainkit.render(story)
    assert np.abs(r["dif"] - r["base"]).max() > 10
    assert np.abs(r["dif"] - r["koh"]).max() <= 2


def test_a_wide_picture_trains_wide_with_its_size_and_crop_recorded(tmp_path):
    """A 2:1 picture at resolution 64 goes to the 80x48 bucket (the widest at that area), not
    a 64x64 centre crop: scaled to 96x48, 8 columns cropped each side; SDXL's time ids say so."""
    images = trainkit.pictures(tmp_path, [(128, 64), (64, 64), (60, 90)])
    pictures = data.plan_pictures(data.read_items(images), 64, 8)
    wide, square, tall = (p.plan for p in pictures)
    assert (wide.bucket.width, wide.bucket.height) == (80, 48)
    assert wide.resized == (96, 48) and (wide.left, wide.top) == (8, 0)
    assert wide.time_ids == (64, 128, 0, 8, 48, 80)
    assert square.time_ids == (64, 64, 0, 0, 64, 64)
    assert (tall.bucket.width, tall.bucket.height) == (48, 80) and tall.original_size == (90, 60)

    pipe = load_model(ModelRef("builtin", "tiny-sdxl"), trainkit.QUIET).pipe
    examples = data.encode(pipe, pictures, "cpu")
    assert [tuple(x.shape) for x in examples.latents] == [(4, 6, 10), (4, 8, 8), (4, 10, 6)]
    batch = examples.batch([0])
    assert batch.latents.shape == (1, 4, 6, 10)
    assert batch.added_cond["time_ids"].tolist() == [[64, 128, 0, 8, 48, 80]]
    assert batch.prompt_embeds.shape[0] == batch.added_cond["text_embeds"].shape[0] == 1
    # The picture as the VAE gets it: the bucket's size, the crop taken from the middle.
    assert tuple(data.pixels(pictures[0]).shape) == (3, 48, 80)


def test_prior_preservation_adds_the_weighted_class_loss(tmp_path):
    """Same seed, same instance batches and noise: with class pictures at weight 1 the first
    step's loss is the instance loss plus the class loss, at weight 0 the instance loss alone;
    the class pictures change what is learned. A checkpoint of the other job in the folder is
    reported and not used."""
    instance = trainkit.pictures(tmp_path / "pictures", [(64, 64), (128, 64)])
    classes = [p.path for p in trainkit.pictures(tmp_path / "class", [(64, 64), (64, 128)],
                                                 colour=(20, 20, 230), caption="a girl")]
    jobs = {w: trainkit.job(instance, steps=4, checkpoint_every=2, prior=trainkit.prior(weight=w))
            for w in (0.0, 1.0)}

    class Stop(Exception):
        pass

    def stop(view):
        raise Stop

    with pytest.raises(Stop):  # leaves the weight-0 job's checkpoint at step 2
        train_lora(jobs[0.0], tmp_path / "out", device="cpu", prior_images=classes,
                   on_checkpoint=stop)
    events = []
    weighted = train_lora(jobs[1.0], tmp_path / "out", device="cpu", prior_images=classes,
                          on_event=events.append)
    assert weighted.resumed_from is None
    assert any(e["event"] == "warning" and "another training" in e["message"] for e in events)
    unweighted = train_lora(jobs[0.0], tmp_path / "other", device="cpu", prior_images=classes)
    print(f"first step: instance {unweighted.losses[0]:.3f}, "
          f"instance + class {weighted.losses[0]:.3f}")
    assert weighted.losses[0] > unweighted.losses[0] + 0.1
    assert weighted.lora_file.read_bytes() != unweighted.lora_file.read_bytes()


def test_what_is_refused_before_loading_a_model(tmp_path):
    images = trainkit.pictures(tmp_path, [(64, 64)])
    job = trainkit.job(images)
    with pytest.raises(ValueError, match="no class pictures"):
        train_lora(trainkit.job(images, prior=trainkit.prior()), tmp_path, device="cpu")
    with pytest.raises(ValueError, match="prior preservation is off"):
        train_lora(job, tmp_path, device="cpu", prior_images=[images[0].path])
    with pytest.raises(UserError, match="not CLIP"):  # Kolors' ChatGLM stays frozen
        train_lora(trainkit.job(images, model="tiny-kolors", train_text_encoder=True),
                   tmp_path, device="cpu")
    with pytest.raises(UserError, match="CUDA"):
        train_lora(job, tmp_path, device="cpu", optimizer="adamw8bit")
    from dataclasses import replace

    with pytest.raises(ValueError, match="no key"):
        train_lora(replace(job, key=""), tmp_path, device="cpu")
    assert not any(tmp_path.glob("*.safetensors")) and not (tmp_path / "checkpoints").exists()
