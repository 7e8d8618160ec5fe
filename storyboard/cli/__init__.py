"""The `storyboard` command line: the only package that knows click.

In: command-line arguments. Out: text on stdout/stderr and an exit code: 0 success, 1 when a
panel failed, 2 for anything the user must fix (a ``UserError``: every problem listed, no
traceback), 130 when interrupted. Library errors are plain exceptions; ``StoryboardGroup`` turns
them into click's exits here, and nowhere else.

- ``story_cmds``: validate, plan, schema, init (never import torch);
- ``render_cmds``: build, render, reroll, pin, clean, inspect;
- ``lora``: the `lora` group (inspect, convert);
- ``train_cmds``: train;
- ``flags``: the options every rendering command shares, turned into ``RuntimeOptions``;
- ``progress``: progress for people, silence for scripts, JSON lines for tools.
"""

from __future__ import annotations

import os
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


class _Failure(click.ClickException):
    """An operating-system failure (disk full, read-only folder): one line, exit 1."""

    exit_code = 1


class StoryboardGroup(click.Group):
    """Turns what the library raises into what a command line owes its user: a user's mistake
    is exit 2 with its message; an OS failure one line naming the path, exit 1; Ctrl-C says what
    was kept, exit 130. With `--json` each also ends the event stream with an ``error`` event."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StoryError as exc:
            _last_event(ctx, "error", exc.format_message(), 2)
            raise _StoryExit(exc.format_message()) from None
        except UserError as exc:
            _last_event(ctx, "error", exc.format_message(), 2)
            raise _UserExit(exc.format_message()) from None
        except OSError as exc:
            message = os_error_message(exc)
            _last_event(ctx, "error", message, 1)
            raise _Failure(message) from None
        except KeyboardInterrupt:
            progress = ctx.meta.get(PROGRESS)
            kept = progress.panels_done if progress is not None else 0
            message = (f"interrupted; {kept} panel{'s' * (kept != 1)} finished before it stopped "
                       "are kept, and the same command goes on from there" if kept else
                       "interrupted")
            _last_event(ctx, "interrupted", message, 130)
            click.echo(message, err=True)
            ctx.exit(130)


# Where a command's Progress registers itself, so a failure can end its event stream.
PROGRESS = "storyboard.progress"


def os_error_message(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` -> ``x: no space left on device``."""
    what = (exc.strerror or str(exc)).rstrip(".")
    what = what[:1].lower() + what[1:]
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {what}" if paths else what


def _last_event(ctx: click.Context, kind: str, message: str, code: int) -> None:
    progress = ctx.meta.get(PROGRESS)
    if progress is not None:
        progress.finish(kind, message, code)


@click.group(cls=StoryboardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="storyboard")
def cli() -> None:
    """Compile a YAML story into rendered, captioned comic pages."""


def main() -> None:
    try:
        cli(prog_name="storyboard")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        _exit(130)
    except SystemExit as exc:
        _exit(exc.code)


def _exit(code) -> None:
    """Leave with ``code`` (as ``SystemExit`` takes it). A process that used the GPU spent
    2.2 s more tearing down what it loaded (the CUDA context, the allocator's cache, library
    threads) after an SDXL build on an H200; by now every file the command wrote is written,
    renamed into place and closed, its locks and thread pools let go, so it ends at once."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# The commands register themselves on `cli` when their modules load.
from . import lora, render_cmds, story_cmds, train_cmds  # noqa: E402, F401

__all__ = ["cli", "main"]
