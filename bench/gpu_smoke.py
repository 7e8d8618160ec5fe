"""GPU smoke test: storyboard renders the course story on full-size random SDXL / Kolors in fp16.

For each architecture: build it with random weights, save it to disk, load it through
storyboard's own loader (a local diffusers folder), render the course's 8 panels (CFG 4,
1024x1024) in batches of 4 and one at a time, and report whether every image is finite and
non-constant, how far a batched panel is from the same panel rendered alone, whether the
process's first batches come out bit for bit the same when rendered again later, and whether the
batches come out bit for bit the same from the model loaded by the libraries themselves
(``STORYBOARD_PREFETCH=0``) as from storyboard's prefetching load. With ``--compiled``, also
whether compiled panels come out the same from a process that loaded the saved artifacts as from
the one that built them.
Run on the GPU machine:  python bench/gpu_smoke.py sdxl kolors --compiled --out results.json
"""

from __future__ import annotations

import argparse
import os
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_models import BUILDERS  # noqa: E402

from storyboard.engine.loading import load_model  # noqa: E402
from storyboard.engine.session import Session, render_jobs  # noqa: E402
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.plan import compile_story  # noqa: E402
from storyboard.story import load_story  # noqa: E402

COURSE = Path(__file__).resolve().parent.parent / "examples" / "course-kolors.yaml"


def story_for(folder: Path, family: str, steps: int, work: Path) -> Path:
    """The course story, pointed at ``folder``."""
    text = COURSE.read_text("utf-8")
    start = text.index("model:")
    end = text.index("defaults:")
    text = (text[:start] + f"model:\n  path: {folder}\n  family: {family}\n  dtype: fp16\n\n"
            + text[end:]).replace("steps: 50", f"steps: {steps}")
    path = work / f"story-{family}.yaml"
    path.write_text(text, "utf-8")
    return path


COMPILED = RuntimeOptions(progress=False, batch_size=4, compile=True, tune=False)


def render_compiled(jobs) -> tuple[dict, list]:
    """The story rendered compiled (untuned: a shorter first compile) by a new session on a
    new load: the images and the ``compiled`` events (artifacts built or loaded)."""
    events: list = []
    session = Session()
    session.adopt(load_model(jobs[0].model, RuntimeOptions(progress=False)), COMPILED)
    images = {r.job.panel: np.asarray(r.image) for r in render_jobs(
        jobs, COMPILED, session=session, on_event=events.append)}
    session.close()
    torch.cuda.empty_cache()
    return images, [e for e in events if e.get("event") == "compiled"]


def compiled_check(jobs, folder: Path, arch: str, steps: int, work: Path, eager: dict) -> dict:
    """Compiled rendering through the saved artifacts (engine/speed/artifacts.py) on a compile
    cache of its own: this process builds them, a new process loads them; the loaded ones must
    give the built ones' pixels bit for bit, and both stay near the eager pixels."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"compile-{arch}")
    t0 = time.perf_counter()
    built, built_events = render_compiled(jobs)
    out: dict = {"build_s": round(time.perf_counter() - t0, 1), "built": built_events}
    child = work / f"compiled-{arch}.npz"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, arch, "--steps", str(steps),
                           "--compiled-child", str(folder), str(child)],
                          capture_output=True, text=True, env=dict(os.environ))
    out["new_process_s"] = round(time.perf_counter() - t0, 1)
    if proc.returncode:
        out["child_error"] = proc.stderr[-2000:]
        return out
    loaded = dict(np.load(child))
    out["loaded"] = json.loads((child.with_suffix(".json")).read_text())
    out["loaded_identical_to_built"] = all(np.array_equal(loaded[p], built[p]) for p in built)
    out["max_abs_diff_255_vs_eager"] = max(
        int(np.abs(built[p].astype(np.int16) - np.asarray(eager[p].image).astype(np.int16))
            .max()) for p in built)
    return out


def compiled_child(arch: str, steps: int, folder: Path, out: Path) -> None:
    jobs = compile_story(load_story(story_for(folder, arch, steps, out.parent)))
    images, events = render_compiled(jobs)
    np.savez(out, **images)
    out.with_suffix(".json").write_text(json.dumps(events))


def run(arch: str, steps: int, work: Path, compiled: bool = False) -> dict:
    out: dict = {"arch": arch, "steps": steps}
    folder = work / f"random-{arch}"
    t0 = time.perf_counter()
    BUILDERS[arch](folder)
    torch.cuda.empty_cache()
    out["build_and_save_s"] = round(time.perf_counter() - t0, 1)
    out["folder_gb"] = round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                             / 1e9, 2)

    jobs = compile_story(load_story(story_for(folder, arch, steps, work)))
    t0 = time.perf_counter()
    model = load_model(jobs[0].model, RuntimeOptions(progress=False))
    session = Session()
    session.adopt(model)
    torch.cuda.synchronize()
    out["load_s"] = round(time.perf_counter() - t0, 1)
    out["device"], out["dtype"], out["family"] = model.device, model.dtype, model.family

    timings = {}
    results = {}
    for batch in (4, 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        options = RuntimeOptions(progress=False, batch_size=batch)
        results[batch] = {r.job.panel: r for r in render_jobs(jobs, options, session=session)}
        torch.cuda.synchronize()
        timings[batch] = time.perf_counter() - t0
    out["seconds_per_panel_batch4"] = round(timings[4] / len(jobs), 3)
    out["seconds_per_panel_alone"] = round(timings[1] / len(jobs), 3)
    out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)

    panels = {}
    for pid, alone in results[1].items():
        batched = results[4][pid]
        a = np.asarray(alone.image).astype(np.int16)
        b = np.asarray(batched.image).astype(np.int16)
        panels[pid] = {
            "status": [alone.status, batched.status],
            "std": round(float(a.std()), 2),
            "max_abs_diff_255": int(np.abs(a - b).max()),
            "mean_abs_diff_255": round(float(np.abs(a - b).mean()), 4),
            "pixels_differing_pct": round(float((a != b).any(-1).mean() * 100), 3),
        }
    out["panels"] = panels
    # The process's first batches, rendered again now: the same bits. (Kolors' text encoder
    # ran its scripted rotary embedding differently on its first calls until the pipeline
    # call turned TorchScript's optimisation off, engine/runner.py; round 7.)
    again = {r.job.panel: np.asarray(r.image) for r in render_jobs(
        jobs, RuntimeOptions(progress=False, batch_size=4), session=session)}
    out["first_batches_repeat_identical"] = all(
        np.array_equal(again[pid], np.asarray(results[4][pid].image)) for pid in again)

    # The same batches from the model as the libraries load it themselves (the first load read
    # the weights on a thread while importing, engine/prefetch.py): the same pixels, bit for bit.
    # The control: the library-loaded model's batches rendered twice in a row.
    built = list(model.prefetch.built) if model.prefetch is not None else []
    out["prefetch"] = None if model.prefetch is None else {
        "built": built, "skipped": model.prefetch.skipped}
    out["library_load_identical"] = out["library_repeat_identical"] = None
    if built:
        before = os.environ.get("STORYBOARD_PREFETCH")
        os.environ["STORYBOARD_PREFETCH"] = "0"
        try:
            library = Session()
            library.adopt(load_model(jobs[0].model, RuntimeOptions(progress=False)))
            again = [{r.job.panel: np.asarray(r.image) for r in render_jobs(
                jobs, RuntimeOptions(progress=False, batch_size=4), session=library)}
                for _ in range(2)]
        finally:
            if before is None:
                os.environ.pop("STORYBOARD_PREFETCH", None)
            else:
                os.environ["STORYBOARD_PREFETCH"] = before
        out["library_repeat_identical"] = all(
            np.array_equal(again[0][pid], again[1][pid]) for pid in again[0])
        out["library_load_identical"] = all(
            np.array_equal(again[0][pid], np.asarray(results[4][pid].image))
            for pid in results[4])
        del library, again
    if compiled:
        out["compiled"] = compiled_check(jobs, folder, arch, steps, work, results[4])
    out["all_rendered"] = all(p["status"] == ["rendered", "rendered"] for p in panels.values())
    out["all_non_constant"] = all(p["std"] > 1 for p in panels.values())
    out["max_abs_diff_255"] = max(p["max_abs_diff_255"] for p in panels.values())
    out["mean_abs_diff_255"] = round(float(np.mean([p["mean_abs_diff_255"]
                                                    for p in panels.values()])), 4)
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archs", nargs="+", choices=sorted(BUILDERS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--compiled", action="store_true",
                    help="also render compiled: artifacts built here, loaded by a new process")
    ap.add_argument("--compiled-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compiled_child:
        compiled_child(args.archs[0], args.steps, *args.compiled_child)
        return
    import diffusers

    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "python": platform.python_version(),
              "runs": []}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for arch in args.archs:
            result = run(arch, args.steps, Path(tmp), args.compiled)
            print(json.dumps(result, indent=1), flush=True)
            report["runs"].append(result)
            import shutil

            shutil.rmtree(Path(tmp) / f"random-{arch}", ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
