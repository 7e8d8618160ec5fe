"""The `storyboard` command line: the only package that knows click.

In: command-line arguments. Out: text on stdout/stderr and an exit code: 0 success, 1 when a
panel failed, 2 for anything the user must fix (a ``UserError``: every problem listed, no
traceback), 130 when interrupted. Library errors are plain exceptions; ``StoryboardGroup`` turns
them into click's exits here, and nowhere else.

- ``story_cmds``: validate, plan, schema, init (never import torch);
- ``render_cmds``: build, render, reroll, pin, clean, inspect;
- ``lora``: the `lora` group (inspect, convert);
- ``flags``: the options every rendering command shares, turned into ``RuntimeOptions``;
- ``progress``: progress for people, silence for scripts, JSON lines for tools.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import StoryError, UserError


class _UserExit(click.ClickException):
    """A ``UserError`` on its way out of click: exit 2, printed as "Error: ..."."""

    exit_code = 2


class _StoryExit(_UserExit):
    """A ``StoryError``: every problem, then the count, with no "Error:" before them."""

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True, file=file)


class StoryboardGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StoryError as exc:
            raise _StoryExit(exc.format_message()) from None
        except UserError as exc:
            raise _UserExit(exc.format_message()) from None


@click.group(cls=StoryboardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="storyboard")
def cli() -> None:
    """Compile a YAML story into rendered, captioned comic pages."""


def main() -> None:
    try:
        cli(prog_name="storyboard")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


# The commands register themselves on `cli` when their modules load.
from . import lora, render_cmds, story_cmds  # noqa: E402, F401

__all__ = ["cli", "main"]
