"""The `storyboard` command line.

In: command-line arguments. Out: text on stdout/stderr and an exit code: 0 success, 2 for a
story the user must fix (every problem listed, no traceback), 130 when interrupted.

Commands that only validate and compile (validate, plan, schema, init) must never import torch,
so this module imports the rendering machinery inside the commands that render.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import click

from . import __version__
from .build import load_and_compile
from .compile import PanelJob
from .errors import StoryError, UserError
from .fsutil import atomic_write_text
from .spec import Story, StorySpec


def _load(path: str) -> tuple[Story, list[PanelJob]]:
    return load_and_compile(Path(path))


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


def _runtime_options(device: str, dtype: str | None, offload: bool, vae_tiling: bool,
                     quiet: bool, as_json: bool):
    from .models import RuntimeOptions

    flags = click.get_current_context().params
    return RuntimeOptions(device=device, dtype=dtype, offload=offload, vae_tiling=vae_tiling,
                          progress=not (quiet or as_json), fuse=not flags.get("no_fuse"),
                          compile="auto" if flags.get("compile") is None else flags["compile"],
                          tune=flags.get("tune"))


def runtime_flags(func):
    """Options shared by every command that renders (the speed switches, `compile`, `tune` and
    `no_fuse`, are read by _runtime_options from the click context)."""
    for decorator in reversed([
        click.option("--model", "model", default=None,
                     help="Render with this model instead of the story's (e.g. tiny-kolors)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32", "fp8"]), default=None,
                     help="Override the story's dtype (default: fp16 on GPU, fp32 on CPU; fp8: "
                          "opt-in FP8 UNet on Ada/Hopper GPUs, needs torchao)."),
        click.option("--batch-size", type=click.IntRange(1, 64), default=None,
                     help="Most panels per pipeline call (default: 8, 4 or 2 by free GPU "
                          "memory; 2 on CPU)."),
        click.option("--offload", is_flag=True, help="Model CPU offload, for small GPUs."),
        click.option("--vae-tiling", is_flag=True, help="Decode large images in tiles."),
        click.option("--compile/--no-compile", "compile", default=None,
                     help="torch.compile the UNet and VAE decoder, or not (default: the "
                          "story's render.compile, else auto: when the render has enough "
                          "panels to pay it back, about 40 of 50 steps per batch shape)."),
        click.option("--tune/--no-tune", "tune", default=None,
                     help="Coordinate-descent tuning of the compiled UNet's kernels (default: "
                          "the story's render.tune, else on): about 2% faster steps; the first "
                          "compile of each shape on a machine takes about 100 s longer (cached "
                          "after)."),
        click.option("--no-fuse", is_flag=True,
                     help="LoRAs as live adapters, no channels_last / fused QKV / cached "
                          "cross-attention K/V (and so no compile either)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress output."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print machine-readable events, one JSON object per line."),
    ]):
        func = decorator(func)
    return func


class _Progress:
    """Progress for people (a bar over panels), silence for scripts, JSON lines for tools."""

    def __init__(self, quiet: bool, as_json: bool):
        self.quiet = quiet
        self.as_json = as_json
        self.bar = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if self.as_json:
            click.echo(json.dumps(event, ensure_ascii=False))
            return
        if self.quiet:
            return
        if kind == "warning":
            click.echo(event["message"], err=True)
        elif kind == "plan" and event["to_render"]:
            from tqdm import tqdm

            self.bar = tqdm(total=len(event["to_render"]), unit="panel", desc="rendering",
                            leave=False)
        elif kind == "panel" and self.bar is not None:
            # Failures are listed with the summary, after the bar is gone.
            self.bar.update(1)
            self.bar.set_postfix_str(event.get("panel", ""))
        elif kind == "speedups" and "torch.compile" in event["applied"]:
            from tqdm import tqdm

            # Through tqdm, so the bar is redrawn below the line instead of through it.
            tqdm.write("compiling the UNet (minutes for a batch shape's first compile on this "
                       "machine, cached after; --no-compile renders without)", file=sys.stderr)
        elif kind == "oom_split":
            click.echo(f"out of GPU memory; retrying {', '.join(event['panels'])} in smaller "
                       "batches", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _only(only: str | None) -> list[str] | None:
    return [x.strip() for x in only.split(",") if x.strip()] if only else None


def _run_build(story: str, out: str | None, only: str | None, force: bool, pages: bool,
               options, batch_size: int | None, quiet: bool, as_json: bool,
               model: str | None) -> None:
    from .build import build

    progress = _Progress(quiet, as_json)
    try:
        report = build(story, out, only=_only(only), force=force, options=options,
                       batch_size=batch_size, pages=pages, on_event=progress, model=model)
    finally:
        progress.close()
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
@runtime_flags
def build(story: str, out: str | None, only: str | None, force: bool, model: str | None,
          device: str, dtype: str | None, batch_size: int | None, offload: bool,
          vae_tiling: bool, quiet: bool, as_json: bool, **speed: bool) -> None:
    """Render what changed in STORY and compose its pages.

    Writes OUT/panels/<id>.png, OUT/page-N.png, OUT/story.pdf and OUT/manifest.json. Panels
    already rendered (same prompt, seed, settings, model and LoRAs) come from the cache.
    Exit 0 when every selected panel exists, 1 when one failed, 2 for an invalid story.
    """
    _user_paths(story)
    options = _runtime_options(device, dtype, offload, vae_tiling, quiet, as_json)
    _run_build(story, out, only, force, True, options, batch_size, quiet, as_json, model)


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
           model: str | None, device: str, dtype: str | None, batch_size: int | None,
           offload: bool, vae_tiling: bool, quiet: bool, as_json: bool, **speed: bool) -> None:
    """Render STORY's panels now (cached or not) into OUT/panels/, without composing pages."""
    options = _runtime_options(device, dtype, offload, vae_tiling, quiet, as_json)
    if from_png:
        if story or only or model:
            raise UserError("--from-png renders the PNG's own job; give no STORY, --only or "
                            "--model")
        _render_from_png(Path(from_png), out, options, batch_size, quiet, as_json)
        return
    if not story:
        raise UserError("give a STORY file, or --from-png PANEL.png")
    _run_build(story, out, only, True, False, options, batch_size, quiet, as_json, model)


def _render_from_png(png: Path, out: str | None, options, batch_size: int | None, quiet: bool,
                     as_json: bool) -> None:
    from .build import materialize, render_into_cache
    from .cache import PanelCache, cache_key

    job, origin = _job_from_png(png)
    target = Path(out) / "panels" / f"{job.panel}.png" if out else png.with_suffix(
        ".rerender.png")
    cache = PanelCache.default()
    progress = _Progress(quiet, as_json)
    try:
        progress({"event": "plan", "to_render": [job.panel]})
        done = render_into_cache([job], cache, options, batch_size, progress, story=origin,
                                 dtype_override=options.dtype)
    finally:
        progress.close()
    outcome = done[job.hash]
    if outcome.status != "rendered":
        click.echo(f"panel {job.panel} failed: {outcome.error}", err=True)
        sys.exit(1)
    materialize(cache.path(cache_key(job.hash, options.dtype)), target, job, origin or "")
    if not quiet and not as_json:
        click.echo(f"rendered {job.panel} again -> {target}", err=True)


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


@cli.command()
@click.argument("story", type=click.Path(dir_okay=False))
@click.argument("panel")
@click.option("--seeds", required=True, help="Seeds to try: a range 100-107 or a list 1,5,9.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: STORY's name + .out, beside it).")
@runtime_flags
def reroll(story: str, panel: str, seeds: str, out: str | None, model: str | None,
           device: str, dtype: str | None, batch_size: int | None, offload: bool,
           vae_tiling: bool, quiet: bool, as_json: bool, **speed: bool) -> None:
    """Render candidates of PANEL with other seeds into OUT/rerolls/PANEL/, plus a numbered
    contact sheet. The pages are not touched; `storyboard pin` keeps the one you like."""
    from .build import parse_seeds
    from .build import reroll as run_reroll

    _user_paths(story)
    seed_list = parse_seeds(seeds)
    options = _runtime_options(device, dtype, offload, vae_tiling, quiet, as_json)
    progress = _Progress(quiet, as_json)
    try:
        report = run_reroll(story, panel, seed_list, out, options=options,
                            batch_size=batch_size, on_event=progress, model=model)
    finally:
        progress.close()
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
    from .cache import PanelCache
    from .editing import pin_seed

    _user_paths(story)
    result = pin_seed(story, panel, seed)
    was = "derived" if result.previous is None else str(result.previous)
    click.echo(f"{story}:{result.line}: panel {panel} now uses seed {seed} (was {was})")
    _, jobs = _load(story)
    job = next(j for j in jobs if j.panel == panel)
    if PanelCache.default().get(job.hash):
        click.echo("that image is already rendered; `storyboard build` will use it")


@cli.command()
@click.argument("stories", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def clean(stories: tuple[str, ...], dry_run: bool) -> None:
    """Remove cached panels that no story needs any more (and, for the STORIES given, panel
    files in their output folders whose panels are gone)."""
    from .build import clean as run_clean

    for story in stories:
        _user_paths(story)
    report = run_clean([Path(s) for s in stories], dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for path in report.stale_files:
        click.echo(f"{verb} {path}")
    click.echo(f"{verb} {report.removed} cached panel(s), {report.freed / 1e6:.1f} MB")


@cli.group()
def lora() -> None:
    """Look inside LoRA files and convert them (diffusers, PEFT, kohya, DiffSynth)."""


_LORA_MODEL = click.option(
    "--model", "model", default=None,
    help="A built-in model name or a diffusers folder whose UNet the LoRA is for (needed for "
         "kohya/DiffSynth files of UNets other than the released SDXL, Kolors and SD1.5).")


def _unet_config(model: str | None):
    if not model:
        return None
    from . import constants as C

    if model in C.BUILTIN_MODELS:
        from .tiny import builtin_folder

        return builtin_folder(model)
    folder = Path(model)
    if not (folder / "unet" / "config.json").is_file():
        raise UserError(f"--model {model}: not a built-in model or a diffusers folder with a "
                        "unet/config.json")
    return folder


@lora.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_LORA_MODEL
def lora_inspect(file: str, as_json: bool, model: str | None) -> None:
    """Say what FILE is: format, base model family, ranks, alphas, modules, size."""
    from dataclasses import asdict

    from .loras import LoraFormatError, inspect_lora

    _user_paths(file)
    try:
        info = inspect_lora(file, unet_config=_unet_config(model))
    except LoraFormatError as exc:
        raise UserError(_lora_message(exc)) from None
    if as_json:
        data = asdict(info) | {"path": str(info.path)}
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    alphas = ", ".join(f"{a:g}" for a in info.alphas) if info.alphas else "none stored"
    rows = [("format", info.format), ("family", f"{info.family} ({info.family_reason})"),
            ("rank", ", ".join(map(str, info.ranks))), ("alpha", alphas),
            ("modules", ", ".join(info.modules)),
            ("layers", f"{info.layers} ({info.tensors} tensors, {info.size_bytes / 1e6:.1f} MB,"
                       f" {info.dtype})"),
            ("text encoder", "yes" if info.text_encoder else "no")]
    for key, value in rows:
        click.echo(f"{key + ':':<14}{value}")
    for note in info.notes:
        click.echo(f"{'note:':<14}{note}")


@lora.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["diffusers", "kohya"]), default="diffusers",
              show_default=True, help="diffusers (load_lora_weights) or kohya (WebUI/ComfyUI).")
@click.option("--alpha", type=float, default=None,
              help="LoRA alpha (scale = alpha / rank); default: the file's, else the rank.")
@click.option("--family", type=click.Choice(["sdxl", "kolors", "sd15"]), default=None,
              help="The model the LoRA is for; refused if the file says otherwise.")
@_LORA_MODEL
def lora_convert(src: str, dst: str, to: str, alpha: float | None, family: str | None,
                 model: str | None) -> None:
    """Convert SRC (any format) into a .safetensors DST that diffusers or WebUI/ComfyUI load."""
    from .loras import LoraFormatError, convert_lora

    _user_paths(src)
    if not dst.endswith(".safetensors"):
        raise UserError(f"{dst}: the output must be a .safetensors file")
    try:
        out = convert_lora(src, dst, to=to, alpha=alpha, family=family,
                           unet_config=_unet_config(model))
    except (LoraFormatError, ValueError) as exc:
        raise UserError(_lora_message(exc)) from None
    click.echo(f"wrote {out} ({to})")


def _lora_message(exc: Exception) -> str:
    return str(exc).replace("pass unet_config", "pass --model (a built-in model name or a "
                                                "diffusers folder)")


def _user_paths(*paths: str) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")


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
