"""The wait a writer feels: whole processes, the notebook's way against `storyboard build`.

In: families (sdxl, kolors), panel counts (8, 40) and which processes to run. Out:
``bench/results/<gpu>-<date>-e2e.json`` (merged with what an earlier run on the same day wrote,
so a long measurement can be split over several commands on one machine) and a table on stdout.

Each process is timed from the moment it is started to its exit, with every milestone as the
parent reads it from the child's stdout: model loaded, first panel, last panel. The tail is
exit minus last panel. Processes:
- ``notebook``: bench/notebook.py, the course's way (``from_pretrained(...).to("cuda")``, one
  ``pipe()`` per panel, a JPEG per panel, the JPEGs glued into one page);
- ``build-fresh``: `storyboard build` with default settings and nothing cached at all: no
  panels, no compile cache, and a storyboard cache without ``env/`` (the first storyboard
  process in this Python environment);
- ``build-empty``: the same, with ``env/`` as an earlier storyboard process on the machine left
  it (seed_environment: which distribution provides which module, and the libraries' bytecode
  where the environment keeps none);
- ``build-compile``: `storyboard build --compile` into the run's shared compile cache (kept from
  one command to the next while the machine is: a writer's one deliberate compile);
- ``build-warm``: default settings with that shared compile cache and the timings kept in it
  (a writer's later builds of new panels). Named twice, it runs twice (``build-warm-2``): the
  first learns this machine's eager speed where nothing had measured it yet;
- ``build-eager``: `storyboard build --no-compile`;
- ``build-nowarm``: ``build-empty`` with ``STORYBOARD_WARMUP=0``: no GPU warm-up while the
  libraries import (engine/warmup.py), to measure what it saves;
- ``build-noprefetch``: ``build-empty`` with ``STORYBOARD_PREFETCH=0``: the weights read by
  diffusers and transformers after the imports, not on a thread during them
  (engine/prefetch.py).
build-compile and build-warm share the machine's compile cache, and so does build-empty while
there is none yet: a writer's first build, which leaves its eager timings for later ones. The
others get a compile cache of their own, empty; every build gets an empty panel cache.

The weights are full-size random SDXL / Kolors saved as fp16 diffusers folders (gpu_models.py),
read from a local disk with a warm page cache (each is read once before the first process).
The panels are the course's 8 (seed, prompt, negative); 40 panels are those 8 five times with
the seeds moved by 1000 per round, so none repeats. storyboard's story has the same prompts,
negatives and seeds, CFG 4, 50 steps, 1024x1024, fp16, and a caption per panel: it composes
pages, a PDF and a CBZ, which the notebook does not.

    python bench/e2e.py sdxl --panels 8 40
    python bench/e2e.py sdxl --panels 16 --runs build-compile
    python bench/e2e.py sdxl --panels 40 --runs notebook build-empty build-warm build-warm
    python bench/e2e.py sdxl --panels 2 --steps 4 --size 256 --runs build-empty   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

RUNS = ("notebook", "build-fresh", "build-empty", "build-compile", "build-warm", "build-eager",
        "build-nowarm", "build-noprefetch")


def course_panels(n: int) -> list[tuple[int, str, str]]:
    from reference import COURSE_PANELS

    return [(p.seed + 1000 * (i // len(COURSE_PANELS)), p.prompt, p.negative)
            for i, p in enumerate(COURSE_PANELS[i % len(COURSE_PANELS)] for i in range(n))]


def story_yaml(folder: Path, family: str, panels: list, steps: int, size: int) -> str:
    def quoted(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)  # JSON strings are YAML strings

    lines = ["version: 1", f"title: {quoted('e2e ' + family)}", "model:",
             f"  path: {quoted(str(folder))}", f"  family: {family}", "  dtype: fp16",
             "defaults:", f"  steps: {steps}", "  guidance: 4", f"  width: {size}",
             f"  height: {size}", "panels:"]
    for n, (seed, prompt, negative) in enumerate(panels, 1):
        lines += [f"  - id: p{n:02d}", f"    prompt: {quoted(prompt)}",
                  f"    negative: {quoted(negative)}", f"    seed: {seed}",
                  f"    caption: {quoted(f'Panel {n}: seed {seed}.')}"]
    return "\n".join(lines) + "\n"


def weights(family: str, root: Path) -> Path:
    """The saved random-weight folder (built once per machine: its marker is written last)."""
    folder = root / f"{family}-fp16"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from pathlib import Path; "
                f"from gpu_models import BUILDERS; BUILDERS[{family!r}](Path({str(folder)!r}))")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        (folder / ".complete").write_text("")
    # Warm the page cache, as a notebook's earlier runs (or storyboard's) would have.
    for f in folder.rglob("*.safetensors"):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass
    return folder


def seed_environment(work: Path, cache: Path) -> None:
    """Give a build's new, empty storyboard cache what an earlier storyboard process on this
    machine left in its ``env/`` (which distribution provides which module: the environment's,
    not the story's, engine/distributions.py), worked out once per run by a process of its own
    so that no timed process pays for it and every build finds the same."""
    seeded = work / "env-cache"
    if not (seeded / "env" / "distributions.json").is_file():
        # What a build imports, so that the bytecode kept (engine/bytecode.py) is a build's.
        subprocess.run([sys.executable, "-c", "import importlib.metadata as m\n"
                        "from storyboard.engine.environment import prepare\n"
                        "prepare(); m.packages_distributions()\n"
                        "import torch, transformers, diffusers, storyboard.engine.session\n"
                        "from diffusers import StableDiffusionXLPipeline, KolorsPipeline\n"
                        "from storyboard.output import pdf, pages"],
                       check=True, cwd=ROOT, env=dict(os.environ, STORYBOARD_CACHE=str(seeded)))
    shutil.copytree(seeded / "env", cache / "env", dirs_exist_ok=True)


def run_process(cmd: list[str], env: dict, log: Path, events: Path | None = None) -> dict:
    """Start ``cmd``; seconds from start to each milestone it prints, and to its exit. With
    ``events``, every event but the steps is written there as it comes, with its time."""
    t0 = time.perf_counter()
    marks: dict = {}
    panels = 0
    with log.open("w") as err, (events.open("w") if events else open(os.devnull, "w")) as ev:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                cwd=ROOT)
        for line in proc.stdout:
            now = round(time.perf_counter() - t0, 2)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind != "step":
                ev.write(json.dumps({"t": now, **event}, ensure_ascii=False) + "\n")
                ev.flush()
            if kind == "pages":
                marks["pages"] = {k: v for k, v in event.items() if k not in ("event", "files")}
            if kind == "plan":  # storyboard's start: story read, cache looked up
                marks.setdefault("plan_s", now)
            if kind in ("loaded", "model_loaded"):
                marks.setdefault("loaded_s", now)
                if "seconds" in event:  # imports and load_model, as the process timed them
                    marks.setdefault("load_seconds", event["seconds"])
                if "warmup" in event:
                    marks.setdefault("warmup", event["warmup"])
                if "prefetch" in event:
                    marks.setdefault("prefetch", event["prefetch"])
            elif kind in ("imported", "done"):
                marks.setdefault(f"{kind}_s", now)
            elif kind == "speedups":
                marks["speedups"] = event.get("applied")
            elif kind == "compiled":  # a saved artifact loaded or built, or plain torch.compile
                marks.setdefault("compiled", []).append(
                    {k: v for k, v in event.items() if k != "event"} | {"t": now})
            elif kind == "panel" and event.get("status", "rendered") == "rendered":
                panels += 1
                marks.setdefault("first_panel_s", now)
                marks["last_panel_s"] = now
            elif kind == "panel":
                marks.setdefault("errors", []).append(event.get("error"))
        proc.wait()
    wall = round(time.perf_counter() - t0, 2)
    result = {"wall_s": wall, "returncode": proc.returncode, "panels": panels, **marks}
    if "last_panel_s" in marks:
        result["tail_s"] = round(wall - marks["last_panel_s"], 2)
    if proc.returncode:
        result["stderr_tail"] = log.read_text(errors="replace")[-3000:]
    return result


def measure(family: str, n: int, runs: list[str], work: Path, folder: Path, steps: int,
            size: int, events: Path | None = None, flags: tuple[str, ...] = ()) -> dict:
    panels = course_panels(n)
    case = work / f"{family}-{n}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    (case / "panels.json").write_text(json.dumps(panels, ensure_ascii=False), "utf-8")
    story = case / "story.yaml"
    story.write_text(story_yaml(folder, family, panels, steps, size), "utf-8")
    # The machine's compile cache, as a writer's builds share it: build-compile compiles into
    # it; build-warm is a default build that finds it; build-empty builds into it only while
    # there is none yet (then it is empty, as build-empty's must be) and leaves the eager
    # timings a writer's first build leaves. It outlives this call, so build-compile and
    # build-warm may run in a later command on the same machine.
    shared = work / f"inductor-{family}"
    out: dict = {}
    for number, run in enumerate(runs):
        name = run if run not in runs[:number] else f"{run}-{runs[:number].count(run) + 1}"
        cache = case / f"cache-{name}"
        env = dict(os.environ, PYTHONUNBUFFERED="1", STORYBOARD_CACHE=str(cache))
        if run not in ("notebook", "build-fresh"):
            seed_environment(work, cache)
        if run == "notebook":
            cmd = [sys.executable, str(HERE / "notebook.py"), str(folder), family,
                   str(case / "panels.json"), "--out", str(case / "notebook"),
                   "--steps", str(steps), "--size", str(size)]
        else:
            first_empty = name == "build-empty" and not shared.exists()
            compiled = shared if run in ("build-compile", "build-warm") or first_empty else (
                case / f"inductor-{name}")
            env["TORCHINDUCTOR_CACHE_DIR"] = str(compiled)
            cmd = [sys.executable, "-m", "storyboard.cli", "build", "--json", *flags, "-o",
                   str(case / f"out-{name}"), str(story)]
            if run == "build-eager":
                cmd.insert(-1, "--no-compile")
            if run == "build-nowarm":
                env["STORYBOARD_WARMUP"] = "0"
            if run == "build-noprefetch":
                env["STORYBOARD_PREFETCH"] = "0"
            if run == "build-compile":
                cmd.insert(-1, "--compile")
        print(f"[e2e] {family} {n} panels: {name} ...", file=sys.stderr, flush=True)
        out[name] = run_process(cmd, env, case / f"{name}.log", events and events / (
            f"{family}-{n}-{name}.jsonl"))
        print(f"[e2e]   {json.dumps(out[name])[:400]}", file=sys.stderr, flush=True)
    # A panel's pixels must not depend on whether its process built the compiled artifact or
    # loaded it: the builds' panels against the first build's.
    builds = [name for name in out
              if not name.startswith("notebook") and out[name]["returncode"] == 0]
    for name in builds[1:]:
        out[name]["pixels_vs_" + builds[0]] = compare_pixels(case / f"out-{builds[0]}",
                                                            case / f"out-{name}")
    # The same across commands (this call removes the case folder): each panel's pixels by
    # digest, so builds of separate commands on one machine compare from the results.
    for name in builds:
        out[name]["pixel_digests"] = pixel_digests(case / f"out-{name}")
    if "notebook" in out:
        for name, result in out.items():
            if not name.startswith("notebook") and result["returncode"] == 0:
                result["speedup_vs_notebook"] = round(out["notebook"]["wall_s"]
                                                      / result["wall_s"], 2)
    return out


def compare_pixels(a: Path, b: Path) -> dict:
    """How many panel PNGs of two builds' outputs have identical pixels; the largest
    difference (of 255) where they do not."""
    import numpy as np
    from PIL import Image

    same = differ = 0
    largest = 0
    for first in sorted(a.glob("panels/*.png")):
        other = b / first.relative_to(a)
        if not other.is_file():
            continue
        x = np.asarray(Image.open(first).convert("RGB"), dtype=np.int16)
        y = np.asarray(Image.open(other).convert("RGB"), dtype=np.int16)
        if x.shape == y.shape and (x == y).all():
            same += 1
        else:
            differ += 1
            largest = max(largest, int(np.abs(x - y).max()) if x.shape == y.shape else 255)
    return {"identical": same, "differ": differ, "max_diff": largest}


def pixel_digests(out: Path) -> dict:
    """Each panel PNG's decoded RGB pixels, by sha256 (16 hex digits)."""
    import hashlib

    import numpy as np
    from PIL import Image

    return {png.name: hashlib.sha256(np.ascontiguousarray(
        np.asarray(Image.open(png).convert("RGB"))).tobytes()).hexdigest()[:16]
        for png in sorted(out.glob("panels/*.png"))}


def gpu_name() -> str:
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout
        return name.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="+", choices=["sdxl", "kolors"])
    ap.add_argument("--panels", type=int, nargs="+", default=[8, 40])
    ap.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS[:3]))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "storyboard-e2e")
    ap.add_argument("--profile-load", action="store_true",
                    help="also run bench/load_profile.py on each family's weights")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--events", type=Path,
                    help="a folder for each process's events as they come (JSON lines)")
    ap.add_argument("--tag", default="", help="a suffix for the results file name")
    ap.add_argument("--build-flags", default="",
                    help="more flags for every storyboard build, e.g. '--no-tune'")
    args = ap.parse_args()
    gpu = gpu_name()
    slug = gpu.lower().replace("nvidia ", "nvidia-").replace(" ", "-")
    out = args.out or HERE / "results" / (
        f"{slug}-{datetime.date.today().isoformat()}-e2e{args.tag}.json")
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.setdefault("machine", {}).update({"gpu": gpu, "cpus": os.cpu_count()})
    report.setdefault("settings", f"{args.steps} steps, {args.size}x{args.size}, CFG 4, fp16")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.events:
        args.events.mkdir(parents=True, exist_ok=True)
    for family in args.families:
        t = time.perf_counter()
        folder = weights(family, args.work / "weights")
        print(f"[e2e] {family} weights ready in {time.perf_counter() - t:.0f} s",
              file=sys.stderr, flush=True)
        section = report.setdefault(family, {})
        if args.profile_load:
            profile = subprocess.run([sys.executable, str(HERE / "load_profile.py"),
                                      str(folder), family], capture_output=True, text=True,
                                     cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                         [str(ROOT), os.environ.get("PYTHONPATH", "")])))
            section["load_profile"] = (json.loads(profile.stdout.splitlines()[-1])
                                       if profile.returncode == 0
                                       else {"error": profile.stderr[-3000:]})
            print(f"[e2e] load profile: {section['load_profile']}", file=sys.stderr, flush=True)
        for n in args.panels:
            section[f"{n}_panels"] = {**section.get(f"{n}_panels", {}),
                                      **measure(family, n, args.runs, args.work, folder,
                                                args.steps, args.size, args.events,
                                                tuple(shlex.split(args.build_flags)))}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
