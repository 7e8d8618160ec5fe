"""Commands that render or touch outputs: build, render, reroll, pin, clean, inspect.

In: arguments and the shared rendering flags (``flags``). Out: progress on stderr (or JSON
events on stdout), a one-line summary, files through the library (``commands``), and the
report's exit code. Torch is imported only once something is rendered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import UserError, printable
from . import cli
from .flags import only_list, runtime_flags, runtime_options, user_paths
from .progress import Progress


NO_TRAIN = click.option(
    "--no-train", "no_train", is_flag=True,
    help="Refuse, instead of training first, when a panel needs a character's LoRA that is "
         "not trained yet (`storyboard train` trains it).")


def _run_build(story: str, out: str | None, only: str | None, force: bool, pages: bool,
               flags: dict, no_train: bool) -> None:
    from ..commands import build

    quiet, as_json = flags["quiet"], flags["as_json"]
    with Progress(quiet, as_json) as progress:
        report = build(story, out, only=only_list(only), force=force,
                       options=runtime_options(flags), pages=pages, on_event=progress,
                       model=flags["model"], train=not no_train)
    if not quiet and not as_json:
        for outcome in report.outcomes:
            if outcome.status == "failed":
                click.echo(f"panel {outcome.job.panel} failed: {outcome.error}", err=True)
        click.echo(report.summary(), err=True)
    sys.exit(report.exit_code)


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: STORY's name + .out, beside it).")
@click.option("--only", default=None, help="Comma-separated panel ids to build.")
@click.option("--force", is_flag=True, help="Render the selected panels even if cached.")
@NO_TRAIN
@runtime_flags
def build(story: str, out: str | None, only: str | None, force: bool, no_train: bool,
          **flags) -> None:
    """Render what changed in STORY and compose its pages.

    Writes OUT/panels/<id>.png, OUT/page-N.png, OUT/story.pdf, OUT/story.cbz and
    OUT/manifest.json. Panels already rendered (same prompt, seed, settings, model and LoRAs)
    come from the cache. A character's LoRA its panels need (`train:`) is trained first,
    unless --no-train.
    Exit 0 when every selected panel exists, 1 when one failed, 2 for an invalid story.
    """
    user_paths(story)
    _run_build(story, out, only, force, True, flags, no_train)


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False), required=False)
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: STORY's name + .out, beside it).")
@click.option("--only", default=None, help="Comma-separated panel ids to render.")
@click.option("--from-png", "from_png", type=click.Path(dir_okay=False),
              default=None, help="Render again the job a storyboard panel PNG records "
                                 "(written beside it as NAME.rerender.png unless -o is given).")
@NO_TRAIN
@runtime_flags
def render(story: str | None, out: str | None, only: str | None, from_png: str | None,
           no_train: bool, **flags) -> None:
    """Render STORY's panels now (cached or not) into OUT/panels/, without composing pages."""
    if from_png:
        if story or only or flags["model"]:
            raise UserError("--from-png renders the PNG's own job; give no STORY, --only or "
                            "--model")
        user_paths(from_png)
        _rerender(from_png, out, flags)
        return
    if not story:
        raise UserError("give a STORY file, or --from-png PANEL.png")
    _run_build(story, out, only, True, False, flags, no_train)


def _rerender(png: str, out: str | None, flags: dict) -> None:
    from ..commands import rerender

    quiet, as_json = flags["quiet"], flags["as_json"]
    with Progress(quiet, as_json) as progress:
        report = rerender(png, out, options=runtime_options(flags), on_event=progress)
    if report.exit_code:
        click.echo(f"panel {report.outcome.job.panel} failed: {report.outcome.error}", err=True)
        sys.exit(report.exit_code)
    if not quiet and not as_json:
        click.echo(f"rendered {report.outcome.job.panel} again -> {report.target}", err=True)


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False))
@click.argument("panel")
@click.option("--seeds", required=True, help="Seeds to try: a range 100-107 or a list 1,5,9.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: STORY's name + .out, beside it).")
@runtime_flags
def reroll(story: str, panel: str, seeds: str, out: str | None, **flags) -> None:
    """Render candidates of PANEL with other seeds into OUT/rerolls/PANEL/, plus a numbered
    contact sheet. The pages are not touched; `storyboard pin` keeps the one you like."""
    from ..commands import parse_seeds
    from ..commands import reroll as run_reroll

    user_paths(story)
    seed_list = parse_seeds(seeds)
    quiet, as_json = flags["quiet"], flags["as_json"]
    with Progress(quiet, as_json) as progress:
        report = run_reroll(story, panel, seed_list, out, options=runtime_options(flags),
                            on_event=progress, model=flags["model"])
    if not quiet and not as_json:
        for n, (seed, outcome) in enumerate(report.candidates, 1):
            where = outcome.path if outcome.path else f"failed: {outcome.error}"
            click.echo(f"{n:>3}. seed {seed}: {where}")
        if report.sheet:
            click.echo(f"contact sheet: {report.sheet}")
        click.echo(f"keep one with: storyboard pin {story} {panel} SEED", err=True)
    sys.exit(report.exit_code)


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False))
@click.argument("panel")
@click.argument("seed", type=int)
def pin(story: str, panel: str, seed: int) -> None:
    """Write SEED into PANEL of STORY, changing nothing else in the file."""
    from ..commands import pin as run_pin

    user_paths(story)
    report = run_pin(story, panel, seed)
    was = "derived" if report.edit.previous is None else str(report.edit.previous)
    click.echo(f"{story}:{report.edit.line}: panel {panel} now uses seed {seed} (was {was})")
    if report.cached:
        click.echo("that image is already rendered; `storyboard build` will use it")


@cli.command()
@click.argument("stories", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def clean(stories: tuple[str, ...], dry_run: bool) -> None:
    """Remove cached panels, trained LoRAs and PDF font subsets that no story needs any more,
    font measurements kept for font files that changed, kept bytecode of libraries that
    are gone, and compiled artifacts of libraries that changed (and, for the STORIES given,
    panel files in their output folders whose panels are gone)."""
    from ..commands import clean as run_clean

    user_paths(*stories)
    def waiting(what: str) -> None:
        click.echo(f"another storyboard is using {what}; waiting for it", err=True)

    report = run_clean([Path(s) for s in stories], dry_run=dry_run, on_wait=waiting)
    verb = "would remove" if dry_run else "removed"
    for path in report.stale_files:
        click.echo(f"{verb} {path}")
    if report.temporaries:
        click.echo(f"{verb} {len(report.temporaries)} temporary file(s) left by interrupted runs")
    trained = f", {len(report.trained)} trained LoRA(s)" if report.trained else ""
    fonts = f", {len(report.fonts)} font subset(s)" if report.fonts else ""
    if report.metrics:
        fonts += f", {len(report.metrics)} kept font measurement(s)"
    code = (f", {report.bytecode} bytecode file(s) of removed libraries" if report.bytecode
            else "")
    if report.artifacts:
        code += f", {report.artifacts} compiled artifact(s) of changed or removed libraries"
    click.echo(f"{verb} {report.removed} cached panel(s){trained}{fonts}{code}, "
               f"{report.freed / 1e6:.1f} MB")


@cli.command()
@click.argument("png", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the storyboard record as JSON.")
def inspect(png: str, as_json: bool) -> None:
    """Print the generation parameters a panel PNG carries."""
    from ..output.pnginfo import read_panel_png

    user_paths(png)
    try:
        parameters, record = read_panel_png(Path(png))
    except OSError as exc:
        raise UserError(f"{png}: not a readable PNG ({exc.strerror or exc})") from None
    if parameters is None and record is None:
        raise UserError(f"{png} carries no generation parameters")
    if as_json:
        click.echo(json.dumps(record.model_dump() if record else None, ensure_ascii=False,
                              indent=2))
        return
    if parameters:
        click.echo(printable(parameters))  # another tool's text: no terminal escapes
    if record:
        click.echo(printable(f"\nstoryboard: panel {record.panel} of {record.story}\nhash "
                             f"{record.hash}, rendered on {record.device} in {record.dtype} "
                             f"with storyboard {record.storyboard}"))
