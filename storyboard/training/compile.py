"""Compile a story's `train:` sections into training jobs, every setting resolved.

In: a validated ``Story`` (after `--model`, if any). Out: a ``Training``: one ``TrainJob`` per
character with `train:` (story order), each with its key (``jobs.with_key``); each
character's checked ``Dataset`` (``dataset.scan_dataset``); and the dataset's warnings as
``Problem``s at the character's `train.images` line. Every error (no usable pictures, a model
whose family is not known yet, a text encoder that cannot be trained) is raised at once as a
``StoryError``.

A setting the story leaves out comes from the family's ``TrainDefaults`` (a built-in model's
own, which are small). The base model is ``plan.compile.model_ref``'s, as panels render it; its
family must be known before anything is loaded (``plan.compile.known_family``), since the
defaults and the key depend on it. A seed left out is derived from the story seed and the
character's *token* (``plan.compile.derive_seed``), never its id, so renaming a character keeps
its key and its LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ERROR, WARNING, Diagnostics, Loc, Problem
from ..families import FAMILY_NAMES, TrainDefaults, train_defaults
from ..plan.compile import derive_seed, known_family, model_ref
from ..story import Story
from ..story.schema import CharacterSpec, TrainSpec
from .dataset import DataFilter, Dataset, scan_dataset
from .jobs import PriorSpec, TrainJob, TrainSettings, with_key


@dataclass(frozen=True)
class Training:
    """A story's training, compiled: its jobs, datasets (by character) and warnings."""

    jobs: tuple[TrainJob, ...]
    datasets: dict[str, Dataset]
    warnings: tuple[Problem, ...]


def has_training(story: Story) -> bool:
    return any(char.train is not None for char in story.spec.characters.values())


def check_training(story: Story) -> Training:
    """Every `train:` section of ``story``, compiled. Raises ``StoryError`` listing every
    error (and the warnings beside them)."""
    diag = Diagnostics()
    trained = {cid: char for cid, char in story.spec.characters.items()
               if char.train is not None}
    if not trained:
        return Training((), {}, ())
    model = model_ref(story)
    family = known_family(model)
    if family is None:
        diag.add(story.doc.problem(
            ("model",), "training needs the model's family, and it is not known before the "
            "model is downloaded", "add `family:` under `model:` (one of "
            + ", ".join(FAMILY_NAMES) + ")"))
        diag.raise_if_errors()
    assert family is not None
    defaults = train_defaults(story.spec.model.builtin, family)
    jobs, datasets = [], {}
    for cid, char in trained.items():
        train = char.train
        assert train is not None
        here: Loc = ("characters", cid, "train")
        images_loc = here if isinstance(story.doc.data["characters"][cid]["train"], str) \
            else (*here, "images")
        dataset = scan_dataset(
            story.resolve(train.images), train.images, token=char.token or "",
            class_word=char.class_word, description=char.description,
            data_filter=DataFilter(train.min_side or defaults.min_side, defaults.min_aspect,
                                   defaults.max_aspect, defaults.min_images))
        datasets[cid] = dataset
        for finding in dataset.findings:
            diag.add(story.doc.problem(images_loc, finding.message, finding.hint,
                                       severity=finding.severity))
        if train.train_text_encoder and defaults.frozen_text_encoder:
            diag.add(story.doc.problem((*here, "train_text_encoder"),
                                       f"the text encoder cannot be trained: "
                                       f"{defaults.frozen_text_encoder}",
                                       "leave `train_text_encoder` out", severity=ERROR))
        settings = resolve_settings(train, char, defaults, story.spec.defaults.seed)
        jobs.append(with_key(TrainJob(
            character=cid, token=char.token or "", class_word=char.class_word or "",
            family=family, model=model, images=dataset.images, settings=settings,
            weight=train.weight)))
    diag.raise_if_errors()
    warnings = tuple(p for p in diag.sorted() if p.severity == WARNING)
    return Training(tuple(jobs), datasets, warnings)


def compile_training(story: Story) -> list[TrainJob]:
    """The training jobs of ``story`` (``check_training``'s, without the datasets)."""
    return list(check_training(story).jobs)


def resolve_settings(train: TrainSpec, char: CharacterSpec, defaults: TrainDefaults,
                     story_seed: int) -> TrainSettings:
    """``train``'s settings, each the story's value else the family default."""
    rank = train.rank or defaults.rank
    gamma = defaults.min_snr_gamma if train.min_snr_gamma is None else (
        train.min_snr_gamma or None)  # false: the plain loss
    prior = None
    if train.prior_preservation is not False:
        spec = train.prior_preservation if train.prior_preservation is not True else None
        prior = PriorSpec(
            images=(spec and spec.images) or defaults.prior_images,
            weight=float((spec and spec.weight) or defaults.prior_weight),
            prompt=(spec and spec.prompt) or defaults.class_prompt.format(
                class_word=char.class_word or ""))
    return TrainSettings(
        steps=train.steps or defaults.steps,
        rank=rank,
        alpha=float(train.alpha or defaults.alpha or rank),
        learning_rate=float(train.learning_rate or defaults.learning_rate),
        batch_size=train.batch_size or defaults.batch_size,
        resolution=train.resolution or defaults.resolution,
        seed=train.seed if train.seed is not None else
        derive_seed(story_seed, f"train:{char.token or ''}"),
        min_snr_gamma=None if gamma is None else float(gamma),
        train_text_encoder=train.train_text_encoder,
        prior=prior,
        checkpoint_every=train.checkpoint_every or defaults.checkpoint_every,
        mixed_precision=defaults.mixed_precision,
        optimizer=train.optimizer,
    )
