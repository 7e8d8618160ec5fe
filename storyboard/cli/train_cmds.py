"""`storyboard train`: the command line of ``commands.train``.

In: a story path, character ids, `-o` (the output folder the contact sheets go in), `--force`,
`--no-sheets`, `--model`, `--device`, `--dtype`, `-q` / `--json`. Out: a progress bar per
character trained (step, loss, steps/s, ETA; before it, one for class pictures rendered for
prior preservation), each contact sheet's path as it is written, or JSON event lines; a summary
line, and the report's exit code. Torch is imported only when something is trained.
"""

from __future__ import annotations

import click

from ..constants import DTYPES
from . import cli
from .flags import user_paths
from .progress import Progress


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False))
@click.argument("characters", nargs=-1)
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder for the contact sheets (default: STORY's name + .out, "
                   "beside it).")
@click.option("--force", is_flag=True, help="Train again from scratch, even if up to date.")
@click.option("--no-sheets", "no_sheets", is_flag=True,
              help="Draw no contact sheets at the checkpoints.")
@click.option("--model", default=None,
              help="Train for this model instead of the story's (e.g. tiny-sdxl), as a build "
                   "with the same --model renders.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice([d for d in DTYPES if d != "fp8"]), default=None,
              help="Precision of the frozen weights (default: the family's).")
@click.option("-q", "--quiet", is_flag=True, help="No progress, only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Progress as JSON event lines.")
def train(story: str, characters: tuple[str, ...], out: str | None, force: bool,
          no_sheets: bool, model: str | None, device: str, dtype: str | None, quiet: bool,
          as_json: bool) -> None:
    """Train the LoRAs of STORY's characters that have a `train:` section (or only
    CHARACTERS): those missing or stale are trained, up-to-date ones are reused."""
    from ..commands.train import train as run_train
    from ..options import RuntimeOptions

    user_paths(story)
    with Progress(quiet, as_json) as progress:
        report = run_train(story, characters or None, out_dir=out, force=force,
                           sheets=not no_sheets, on_event=progress, model=model,
                           options=RuntimeOptions(device=device, dtype=dtype,
                                                  progress=not quiet and not as_json))
    if not as_json:
        click.echo(report.summary())
    raise SystemExit(report.exit_code)
