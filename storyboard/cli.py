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
from .tokens import prompt_warnings


def _load(path: str) -> tuple[Story, list[PanelJob]]:
    story = load_story(path)
    jobs = compile_story(story)
    story.warnings = sorted(story.warnings + prompt_warnings(story, jobs),
                            key=lambda p: (p.line or 0, p.col or 0))
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


def _parse_only(only: str | None, jobs: list[PanelJob]) -> list[PanelJob]:
    if not only:
        return jobs
    wanted = [x.strip() for x in only.split(",") if x.strip()]
    known = {job.panel for job in jobs}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        from .errors import did_you_mean

        hint = did_you_mean(unknown[0], known)
        raise UserError(f"no panel named {', '.join(map(repr, unknown))} in this story"
                        + (f"; {hint}" if hint else f"; panels: {', '.join(sorted(known))}"))
    return [job for job in jobs if job.panel in wanted]


def _default_out(story: str) -> Path:
    path = Path(story)
    return path.with_name(path.stem + ".out")


def _runtime_options(device: str, dtype: str | None, offload: bool, vae_tiling: bool,
                     quiet: bool, as_json: bool):
    from .models import RuntimeOptions

    return RuntimeOptions(device=device, dtype=dtype, offload=offload, vae_tiling=vae_tiling,
                          progress=not (quiet or as_json))


def runtime_flags(func):
    """Options shared by every command that renders."""
    for decorator in reversed([
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default=None,
                     help="Override the story's dtype (default: fp16 on GPU, fp32 on CPU)."),
        click.option("--batch-size", type=click.IntRange(1, 64), default=None,
                     help="Most panels per pipeline call (default: 4 on GPU, 2 on CPU)."),
        click.option("--offload", is_flag=True, help="Model CPU offload, for small GPUs."),
        click.option("--vae-tiling", is_flag=True, help="Decode large images in tiles."),
        click.option("-q", "--quiet", is_flag=True, help="No progress output."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print machine-readable events, one JSON object per line."),
    ]):
        func = decorator(func)
    return func


class _Progress:
    """Progress for people (a bar over panels), silence for scripts, JSON lines for tools."""

    def __init__(self, total: int, quiet: bool, as_json: bool):
        self.as_json = as_json
        self.bar = None
        if not quiet and not as_json:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="panel", desc="rendering", leave=False)

    def event(self, event: dict) -> None:
        if self.as_json:
            click.echo(json.dumps(event, ensure_ascii=False))
        if self.bar is not None and event.get("event") == "panel":
            self.bar.update(1)
            self.bar.set_postfix_str(event.get("panel", ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False), required=False)
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: STORY's name + .out, beside it).")
@click.option("--only", default=None, help="Comma-separated panel ids to render.")
@click.option("--from-png", "from_png", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Render again the job a storyboard panel PNG records "
                                 "(written beside it as NAME.rerender.png unless -o is given).")
@runtime_flags
def render(story: str | None, out: str | None, only: str | None, from_png: str | None,
           device: str, dtype: str | None, batch_size: int | None, offload: bool,
           vae_tiling: bool, quiet: bool, as_json: bool) -> None:
    """Render STORY's panels to OUT/panels/<id>.png (every panel, or --only some)."""
    options = _runtime_options(device, dtype, offload, vae_tiling, quiet, as_json)
    if from_png:
        if story or only:
            raise UserError("--from-png renders the PNG's own job; give no STORY or --only")
        job, origin = _job_from_png(Path(from_png))
        target = (Path(out) / "panels" / f"{job.panel}.png" if out
                  else Path(from_png).with_suffix(".rerender.png"))
        failed = _render_to([job], target.parent, options, batch_size, quiet, as_json,
                            story=origin, names={job.panel: target})
        sys.exit(1 if failed else 0)
    if not story:
        raise UserError("give a STORY file, or --from-png PANEL.png")
    loaded, jobs = _load(story)
    _echo_warnings(loaded, quiet or as_json)
    jobs = _parse_only(only, jobs)
    out_dir = Path(out) if out else _default_out(story)
    failed = _render_to(jobs, out_dir / "panels", options, batch_size, quiet, as_json,
                        story=str(Path(story).resolve()))
    sys.exit(1 if failed else 0)


def _job_from_png(path: Path) -> tuple[PanelJob, str | None]:
    from .pnginfo import job_from_record, read_panel_png

    try:
        _, record = read_panel_png(path)
    except OSError as exc:
        raise UserError(f"{path}: not a readable PNG ({exc})") from None
    if not record or "job" not in record:
        raise UserError(f"{path} was not made by storyboard (no storyboard record in it)")
    try:
        job = job_from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: its storyboard record is damaged ({exc})") from None
    if job.hash != record.get("hash"):
        raise UserError(f"{path}: its storyboard record does not match its hash (edited by "
                        "hand, or made by an incompatible storyboard version)")
    for lora in job.loras:
        if not Path(lora.path).is_file():
            raise UserError(f"{path} needs LoRA {lora.path}, which is not there any more")
    return job, record.get("story")


def _render_to(jobs: list[PanelJob], folder: Path, options, batch_size: int | None,
               quiet: bool, as_json: bool, story: str | None,
               names: dict[str, Path] | None = None) -> int:
    """Render jobs into ``folder``; print a summary; return how many failed."""
    import time

    from .pnginfo import write_panel_png
    from .render import render_jobs

    progress = _Progress(len(jobs), quiet, as_json)
    t0 = time.perf_counter()
    rendered = failed = 0
    device = dtype = ""
    try:
        def on_event(event: dict) -> None:
            nonlocal device, dtype
            if event["event"] == "model_loaded":
                device, dtype = event["device"], event["dtype"]
            if event["event"] != "step" or as_json:
                progress.event(event)

        for result in render_jobs(jobs, options, batch_size=batch_size, on_event=on_event):
            path = (names or {}).get(result.job.panel) or folder / f"{result.job.panel}.png"
            if result.status == "rendered":
                write_panel_png(path, result.image, result.job, story=story,
                                sampler=result.sampler, device=device, dtype=dtype)
                rendered += 1
            else:
                failed += 1
                click.echo(f"panel {result.job.panel} failed: {result.error}", err=True)
            progress.event({"event": "panel", "panel": result.job.panel,
                            "status": result.status, "seconds": round(result.seconds, 3),
                            "path": str(path) if result.status == "rendered" else None,
                            "error": result.error})
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    summary = {"event": "done", "rendered": rendered, "failed": failed,
               "seconds": round(seconds, 2)}
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"rendered {rendered}, failed {failed} in {seconds:.1f}s -> {folder}",
                   err=True)
    return failed


@cli.command()
@click.argument("png", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the storyboard record as JSON.")
def inspect(png: str, as_json: bool) -> None:
    """Print the generation parameters a panel PNG carries."""
    from .pnginfo import read_panel_png

    try:
        parameters, record = read_panel_png(Path(png))
    except OSError as exc:
        raise UserError(f"{png}: not a readable PNG ({exc})") from None
    if parameters is None and record is None:
        raise UserError(f"{png} carries no generation parameters")
    if as_json:
        click.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    if parameters:
        click.echo(parameters)
    if record:
        click.echo(f"\nstoryboard: panel {record.get('panel')} of {record.get('story')}\n"
                   f"hash {record.get('hash')}, rendered on {record.get('device')} in "
                   f"{record.get('dtype')} with storyboard {record.get('storyboard')}")


def main() -> None:
    try:
        cli(prog_name="storyboard")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
