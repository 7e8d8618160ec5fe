"""The `storyboard` command line.

In: command-line arguments. Out: text on stdout/stderr and an exit code: 0 success, 2 for a
story the user must fix (every problem listed, no traceback), 130 when interrupted.

The commands here only validate and compile, so this module (and what it imports) must never
import torch: `storyboard validate` has to answer instantly.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import click

from . import __version__
from .compile import PanelJob, compile_story
from .errors import StoryError, UserError
from .fsutil import atomic_write_text
from .spec import Story, StorySpec, load_story


def _load(path: str) -> tuple[Story, list[PanelJob]]:
    story = load_story(path)
    jobs = compile_story(story)
    return story, jobs


def _echo_warnings(story: Story, quiet: bool = False) -> None:
    if not quiet:
        for warning in story.warnings:
            click.echo(warning.format(), err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="storyboard")
def cli() -> None:
    """Compile a YAML story into rendered, captioned comic pages."""


@cli.command()
@click.argument("stories", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; only the exit code tells.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(stories: tuple[str, ...], quiet: bool, strict: bool) -> None:
    """Check STORIES for every problem at once. Exit 0 when all are valid, 2 when not."""
    failed = False
    for path in stories:
        try:
            story, jobs = _load(path)
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


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
def plan(story: str, as_json: bool) -> None:
    """Show the render jobs STORY compiles to: final prompts, seeds, settings, hashes."""
    loaded, jobs = _load(story)
    _echo_warnings(loaded)
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in jobs], ensure_ascii=False, indent=2))
        return
    _print_plan(loaded, jobs)


def _print_plan(story: Story, jobs: list[PanelJob]) -> None:
    model = jobs[0].model
    title = story.spec.title or story.name
    click.echo(click.style(f"{title}: {len(jobs)} panel{'s' * (len(jobs) != 1)}, model "
                           f"{model.kind} {model.ref}", bold=True))
    for job in jobs:
        seed = f"seed {job.seed}" + (" (derived)" if job.seed_derived else "")
        head = (f"{job.panel}  {seed}  {job.width}x{job.height}  {job.steps} steps  "
                f"cfg {job.guidance:g}  {job.scheduler}  ")
        click.echo("\n" + click.style(head, bold=True) + click.style(job.hash[:12], dim=True))
        click.echo(f"  + {job.prompt}")
        click.echo(f"  - {job.negative_prompt or '(no negative prompt)'}")
        for lora in job.loras:
            click.echo(click.style(f"  lora {lora.character}: {Path(lora.path).name} "
                                   f"x{lora.weight:g}  sha256 {lora.sha256[:12]}", dim=True))
        if job.caption:
            click.echo(click.style(f"  caption: {job.caption}", dim=True))


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the story format (what schemas/story.schema.json holds)."""
    click.echo(schema_text(), nl=False)


def schema_text() -> str:
    return json.dumps(StorySpec.model_json_schema(), ensure_ascii=False, indent=2) + "\n"


@cli.command()
@click.argument("path", default="story.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path: str, force: bool) -> None:
    """Write a commented starter story to PATH (default: story.yaml), and its JSON Schema
    beside it as story.schema.json so editors complete and check keys."""
    target = Path(path)
    if target.exists() and not force:
        raise UserError(f"{path} already exists; use --force to overwrite it")
    text = resources.files("storyboard").joinpath("starter.yaml").read_text("utf-8")
    atomic_write_text(target, text)
    atomic_write_text(target.with_name("story.schema.json"), schema_text())
    click.echo(f"wrote {path} and {target.with_name('story.schema.json')}\n"
               f"next: storyboard plan {path}")


def main() -> None:
    try:
        cli(prog_name="storyboard")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
