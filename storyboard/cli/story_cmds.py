"""Commands that read a story and never import torch: validate, plan, schema, init.

In: story paths and flags. Out: problems (exit 2), the compiled jobs with the render plan each
build would carry out (its batches and whether it compiles) and the characters' LoRAs to train
(and whether each is up to date), the JSON Schema, a starter story.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import click

from ..commands import load_and_compile
from ..constants import DTYPES, SCHEMA_ID
from ..errors import StoryError, UserError
from ..options import RuntimeOptions, resolve_dtype
from ..output.cache import PanelCache, cache_key
from ..paths import atomic_write_text, read_bounded
from ..plan import PanelJob, RenderPlan, plan_render
from ..plan.batches import unique_jobs
from ..plan.speed import unet_work
from ..story import Story, StorySpec
from ..training.compile import check_training, has_training
from ..training.store import LORA_FILE, TrainedStore
from . import cli


def _echo_warnings(story: Story, quiet: bool = False) -> None:
    if not quiet:
        for warning in story.warnings:
            click.echo(warning.format(), err=True)


@cli.command()
@click.argument("stories", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; only the exit code tells.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(stories: tuple[str, ...], quiet: bool, strict: bool) -> None:
    """Check STORIES for every problem at once. Exit 0 when all are valid, 2 when not."""
    failed = False
    for path in stories:
        try:
            story, jobs = load_and_compile(Path(path), look_up_trained=False)
        except StoryError as exc:
            failed = True
            if not quiet:
                click.echo(exc.format_message(), err=True)
            continue
        _echo_warnings(story, quiet)
        if strict and story.warnings:
            failed = True
            if not quiet:
                click.echo(f"{path}: {len(story.warnings)} warning(s), failing because of "
                           "--strict", err=True)
            continue
        if not quiet:
            n_chars = len(story.spec.characters)
            click.echo(f"{path}: ok ({len(jobs)} panel{'s' * (len(jobs) != 1)}, {n_chars} "
                       f"character{'s' * (n_chars != 1)}"
                       + (f", {len(story.warnings)} warning(s)" if story.warnings else "") + ")")
    if failed:
        sys.exit(2)


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in ("cpu", "mps", "cuda") or (value.startswith("cuda:")
                                           and value[5:].isdigit() and value[5:].isascii()):
        return value
    raise click.BadParameter(f"expected cuda, cuda:N, mps or cpu, got {value!r}")


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="Print the jobs and the render plan as one JSON object.")
@click.option("--model", default=None, help="Plan for this model instead of the story's.")
@click.option("--device", default="cuda", show_default=True, callback=_device,
              help="The device to plan the render for: cuda, cuda:N, mps or cpu (plan never "
                   "looks at the machine's GPUs).")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Plan with this dtype instead of the story's.")
@click.option("--batch-size", type=click.IntRange(1, 64), default=None,
              help="Most panels per call (default: the story's, else 8 on a GPU (plan assumes "
                   "one with room for 8), 4 on MPS, 2 on CPU).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="Plan with compiling forced on or off (default: the story's, else auto).")
@click.option("--force", is_flag=True, help="Plan as if nothing were cached.")
def plan(story: str, as_json: bool, model: str | None, device: str, dtype: str | None,
         batch_size: int | None, compile_: bool | None, force: bool) -> None:
    """Show the render jobs STORY compiles to (final prompts, seeds, settings, hashes) and how
    `storyboard build` would render the panels not yet cached: in which batch each goes, and
    whether it would compile."""
    loaded, jobs = load_and_compile(Path(story), model)
    _echo_warnings(loaded)
    options = RuntimeOptions(device=device, dtype=dtype, batch_size=batch_size,
                             compile="auto" if compile_ is None else compile_,
                             progress=False).with_story(loaded.spec.render)
    cache = PanelCache.default()
    # A panel waiting for its character's LoRA renders after the build trains it.
    todo = [job for job in jobs if force or job.awaiting
            or cache.get(cache_key(job.hash, dtype)) is None]
    resolved = resolve_dtype(jobs[0].model.dtype, dtype, device)
    # As a build renders them: panels with the same settings once (plan.batches.unique_jobs).
    render = plan_render(unique_jobs(todo), options, device=device,
                         dtype=resolved) if todo else None
    training = _training(loaded)
    sizes = _size_suggestions(loaded, jobs)
    if as_json:
        click.echo(json.dumps(_plan_dict(jobs, render, training)
                              | {"sizes": [s.to_dict() for s in sizes]},
                              ensure_ascii=False, indent=2))
        return
    _print_plan(loaded, jobs, render, options.compile)
    _print_training(training)
    if sizes:
        click.echo("\nsizes (the model's native size that best fits each panel's box on the "
                   "page):")
        for suggestion in sizes:
            click.echo(f"  {suggestion.line()}")


def _size_suggestions(story: Story, jobs: list[PanelJob]) -> list:
    """``output.sizes``: the panels a native size would fit their place on the page better."""
    from ..plan.compile import default_panel_size
    from ..output.sizes import size_suggestions

    model = jobs[0].model
    native = default_panel_size(model.ref if model.kind == "builtin" else None, model.family)
    return size_suggestions([(j.panel, j.width, j.height) for j in jobs], story.spec.layout,
                            native)


def _training(story: Story) -> list[dict]:
    """Each trained character's LoRA: its pictures, settings, key and what is on disk."""
    if not has_training(story):  # the pictures are read only for a story that trains
        return []
    training = check_training(story)  # already checked by load_and_compile: memoised reads
    store = TrainedStore.default()
    return [{
        "character": job.character,
        "images": len(job.images),
        "excluded": [{"path": e.path, "reason": e.reason}
                     for e in training.datasets[job.character].excluded],
        **{name: getattr(job.settings, name) for name in (
            "steps", "rank", "alpha", "learning_rate", "batch_size", "resolution", "seed",
            "min_snr_gamma", "train_text_encoder", "checkpoint_every", "mixed_precision",
            "optimizer")},
        "prior": None if job.settings.prior is None else asdict(job.settings.prior),
        "weight": job.weight,
        "family": job.family,
        "key": job.key,
        "status": store.status(job),
        "lora": str(store.folder(job.key) / LORA_FILE),
    } for job in training.jobs]


def _print_training(training: list[dict]) -> None:
    if not training:
        return
    click.echo("\ntraining:")
    for t in training:
        left = f" ({len(t['excluded'])} left out)" if t["excluded"] else ""
        click.echo(f"  {t['character']}  {t['images']} picture{'s' * (t['images'] != 1)}"
                   f"{left}  {t['steps']} steps  rank {t['rank']}  "
                   + click.style(t["key"][:12], dim=True) + f"  {t['status']}")


def _plan_dict(jobs: list[PanelJob], render: RenderPlan | None,
               training: list[dict]) -> dict:
    return {
        "jobs": [job.to_dict() | {"batch": render.batch_of(job) if render else None,
                                  "awaiting_training": list(job.awaiting)}
                 for job in jobs],
        "render": None if render is None else {
            "device": render.device, "dtype": render.dtype, "batch_size": render.batch_size,
            "batches": [batch.panels for batch in render.batches],
            "compiles": render.compiles, "speedups": [str(s) for s in render.speedups],
            "refusal": render.refusal},
        "training": training,
    }


def _print_plan(story: Story, jobs: list[PanelJob], render: RenderPlan | None,
                compile_: bool | str = "auto") -> None:
    model = jobs[0].model
    title = story.spec.title or story.name
    click.echo(click.style(f"{title}: {len(jobs)} panel{'s' * (len(jobs) != 1)}, model "
                           f"{model.kind} {model.ref}", bold=True))
    count = len(render.batches) if render else 0
    for job in jobs:
        seed = f"seed {job.seed}" + (" (derived)" if job.seed_derived else "")
        head = (f"{job.panel}  {seed}  {job.width}x{job.height}  {job.steps} steps  "
                f"cfg {job.guidance:g}  {job.scheduler}  ")
        batch = render.batch_of(job) if render else None
        where = "cached" if batch is None else f"batch {batch + 1}/{count}"
        if job.awaiting:  # its hash is a placeholder until the LoRA exists
            where += f", after training {', '.join(job.awaiting)}"
        # A waiting panel's hash is a placeholder: its LoRA file is part of the real one.
        digest = "hash after training" if job.awaiting else job.hash[:12]
        click.echo("\n" + click.style(head, bold=True) + click.style(digest, dim=True)
                   + "  " + where)
        click.echo(f"  + {job.prompt}")
        click.echo(f"  - {job.negative_prompt or '(no negative prompt)'}")
        for lora in job.loras:
            click.echo(click.style(f"  lora {lora.character}: {Path(lora.path).name} "
                                   f"x{lora.weight:g}  sha256 {lora.sha256[:12]}", dim=True))
        for character in job.awaiting:
            click.echo(click.style(f"  lora {character}: trained by the build first "
                                   "(`storyboard train` trains it now)", dim=True))
        if job.caption:
            click.echo(click.style(f"  caption: {job.caption}", dim=True))
    click.echo("")
    if render is None:
        click.echo("render: nothing to do, every panel is cached (--force plans them all)")
        return
    sizes = "+".join(str(len(b.jobs)) for b in render.batches)
    n = len(render.batches)
    click.echo(f"render (for --device {render.device}) in {render.dtype}: {n} "
               f"batch{'es' * (n != 1)} ({sizes}; up to {render.batch_size} panels per call)")
    work = unet_work(list(render.batches))
    why = (f"{sum(work.values())} panel-steps over {len(work)} batch shape"
           f"{'s' * (len(work) != 1)}")
    if render.compiles:
        click.echo(f"compile: yes ({why})")
    elif compile_ == "auto" and render.device.startswith("cuda"):
        # Measurements are the GPU's, read by the build that has it loaded: plan has no torch.
        click.echo(f"compile: auto ({why}): only batch shapes this machine has compiled before "
                   "(--compile), and only where its timings say it pays")
    else:
        click.echo(f"compile: no ({why})")
    click.echo("speed-ups: " + (", ".join(map(str, render.speedups)) or "none"))
    if render.refusal:
        click.echo(f"refused: {render.refusal}")


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the story format (what schemas/story.schema.json holds)."""
    click.echo(schema_text(), nl=False)


def _is_our_schema(path: Path) -> bool:
    """Whether ``path`` is a story schema storyboard wrote (any version)."""
    try:
        data = json.loads(read_bounded(path, 4 << 20))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and str(data.get("$id", "")).startswith(
        SCHEMA_ID.rsplit("/", 1)[0])


def schema_text() -> str:
    return json.dumps(StorySpec.model_json_schema(), ensure_ascii=False, indent=2) + "\n"


@cli.command()
@click.argument("path", default="story.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path: str, force: bool) -> None:
    """Write a commented starter story to PATH (default: story.yaml), and its JSON Schema
    beside it as story.schema.json so editors complete and check keys."""
    target = Path(path)
    schema = target.with_name("story.schema.json")
    # The schema beside it may be an older storyboard's (then it is refreshed) but never a
    # file of the user's that happens to have that name.
    taken = [str(p) for p in (target, schema) if os.path.lexists(p)
             and not (p == schema and _is_our_schema(p))]
    if taken and not force:
        raise UserError(f"{' and '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; "
                        "use --force to overwrite, or give another PATH")
    text = resources.files("storyboard").joinpath("starter.yaml").read_text("utf-8")
    atomic_write_text(target, text)
    atomic_write_text(target.with_name("story.schema.json"), schema_text())
    click.echo(f"wrote {path} and {target.with_name('story.schema.json')}\n"
               f"next: storyboard plan {path}")
