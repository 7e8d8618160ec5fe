"""storyboard's renderer against the course notebook's loop, on one GPU, in one process.

For one architecture (sdxl or kolors), full size with random weights:
1. build it and save it to disk (bench/gpu_models.py);
2. cold start: `storyboard build` of the course story as a new process, twice, with an empty
   panel cache each time: the first process pays torch.compile into an empty compile cache,
   the second finds it warm. Reports seconds from process start to the first finished panel;
3. in this process, on the same weights and the same 8 panels (1024x1024, 50 steps, CFG 4):
   the reference loop `naive_render` from ../shared/bench/naive_loop.py (one `pipe()` per
   panel), then storyboard's `render_jobs` (warm-up run, then a timed steady-state run);
4. the optimised UNet step against the unoptimised one on identical inputs (relative error),
   the UNet's FLOPs per step, its achieved TFLOP/s and the fraction of the bf16 matmul peak
   measured here, and the peak GPU memory.
Writes bench/results/<gpu>-<date>-<arch>.json (or --out). Run on the GPU machine:
    python bench/speed.py sdxl --out results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# One compile cache for this process and the `storyboard build` processes it starts; emptied
# at the start so the first of them really is cold. Set before storyboard imports torch.
INDUCTOR = Path(tempfile.gettempdir()) / "storyboard-bench-inductor"
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(INDUCTOR)
for candidate in (ROOT.parent / "shared" / "bench", ROOT / ".shared" / "bench"):
    if (candidate / "naive_loop.py").is_file():
        sys.path.insert(0, str(candidate))
        break
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from gpu_models import BUILDERS  # noqa: E402
from levers import matmul_peak, time_call  # noqa: E402
from naive_loop import SEED_STORY, naive_render  # noqa: E402

from storyboard.compile import compile_story  # noqa: E402
from storyboard.models import RuntimeOptions, load_model  # noqa: E402
from storyboard.render import render_jobs  # noqa: E402
from storyboard.spec import load_story  # noqa: E402

COURSE = ROOT / "examples" / "course-kolors.yaml"


def story_for(folder: Path, family: str, work: Path) -> Path:
    text = COURSE.read_text("utf-8")
    start, end = text.index("model:"), text.index("defaults:")
    text = text[:start] + f"model:\n  path: {folder}\n  family: {family}\n  dtype: fp16\n\n" \
        + text[end:]
    path = work / f"story-{family}.yaml"
    path.write_text(text, "utf-8")
    return path


def cold_start(story: Path, work: Path, name: str) -> dict:
    """A new `storyboard build` process: seconds to its first finished panel, and in all."""
    env = dict(os.environ, STORYBOARD_CACHE=str(work / f"panels-{name}"), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    stderr = work / f"stderr-{name}.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "storyboard.cli", "build", "--json",
                                 "-o", str(work / f"out-{name}"), str(story)],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        first = None
        steps = 0
        events: dict = {}
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            now = round(time.perf_counter() - t0, 1)
            if kind == "model_loaded":
                events["model_loaded_s"] = now
            if kind == "step":
                steps += 1
                if steps == 2:  # the first step pays compilation; from the second on, speed
                    events["steady_speed_from_s"] = now
            if kind == "panel" and first is None and event.get("status") == "rendered":
                first = now
            if kind == "panel" and event.get("status") == "failed":
                events.setdefault("errors", []).append(event.get("error"))
            if kind == "done":
                events["rendered"] = event.get("rendered")
        proc.wait()
    result = {"first_panel_s": first, "total_s": round(time.perf_counter() - t0, 1),
              "returncode": proc.returncode, **events}
    if proc.returncode:
        result["stderr_tail"] = stderr.read_text()[-3000:]
    return result


def unet_inputs(pipe, family: str, batch: int = 2) -> dict:
    """One denoising step's UNet inputs, shaped as the pipeline makes them."""
    g = torch.Generator("cuda").manual_seed(0)
    dim = 2048
    pooled = 1280 if family == "sdxl" else 4096
    text = 4096 if family == "kolors" else dim
    kw = dict(sample=torch.randn(batch, 4, 128, 128, device="cuda", dtype=torch.float16,
                                 generator=g),
              timestep=torch.tensor(500.0, device="cuda"),
              encoder_hidden_states=torch.randn(batch, 256 if family == "kolors" else 77, text,
                                                device="cuda", dtype=torch.float16,
                                                generator=g) * 0.5,
              added_cond_kwargs={"text_embeds": torch.randn(batch, pooled, device="cuda",
                                                            dtype=torch.float16, generator=g),
                                 "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] *
                                                          batch, device="cuda",
                                                          dtype=torch.float16)})
    return kw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=sorted(BUILDERS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--skip-cold", action="store_true")
    args = ap.parse_args()
    import diffusers
    from torch.utils.flop_counter import FlopCounterMode

    gpu = torch.cuda.get_device_name(0)
    report: dict = {"gpu": gpu, "arch": args.arch, "torch": torch.__version__,
                    "diffusers": diffusers.__version__,
                    "date": datetime.date.today().isoformat(),
                    "settings": "course story: 8 panels, 1024x1024, 50 steps, CFG 4, fp16"}
    report["bf16_matmul_peak_tflops"] = round(matmul_peak(), 1)
    work = Path(tempfile.mkdtemp(dir="/tmp"))
    import shutil

    shutil.rmtree(INDUCTOR, ignore_errors=True)

    # 1. The weights, on disk.
    t0 = time.perf_counter()
    folder = BUILDERS[args.arch](work / f"random-{args.arch}")
    torch.cuda.empty_cache()
    report["build_and_save_s"] = round(time.perf_counter() - t0, 1)
    story = story_for(folder, args.arch, work)

    # 2. Cold starts: a new process with an empty compile cache, then one with a warm cache.
    if not args.skip_cold:
        report["cold_start_empty_compile_cache"] = cold_start(story, work, "first")
        report["cold_start_warm_compile_cache"] = cold_start(story, work, "second")
        print(json.dumps(report, indent=1), flush=True)

    # 3. Same weights, same panels: the reference loop, then storyboard.
    pipeline_cls = getattr(diffusers, {"sdxl": "StableDiffusionXLPipeline",
                                       "kolors": "KolorsPipeline"}[args.arch])
    pipe = pipeline_cls.from_pretrained(str(folder), dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    naive_render(pipe, SEED_STORY[:1])  # CUDA and cuBLAS warm-up, not timed
    _, naive_s = naive_render(pipe, SEED_STORY)
    report["naive_s_per_panel"] = round(naive_s / len(SEED_STORY), 3)

    jobs = compile_story(load_story(story))
    options = RuntimeOptions(progress=False)
    model = load_model(jobs[0].model, options)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    warm = list(render_jobs(jobs, options, model=model))
    torch.cuda.synchronize()
    report["storyboard_warmup_s"] = round(time.perf_counter() - t0, 1)
    report["speedups"] = model.speedups
    report["batch_sizes"] = sorted({r.batch_size for r in warm})
    t0 = time.perf_counter()
    steady = list(render_jobs(jobs, options, model=model))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert all(r.status == "rendered" for r in steady), [r.error for r in steady]
    report["storyboard_s_per_panel"] = round(seconds / len(jobs), 3)
    report["speedup_vs_naive"] = round(naive_s / seconds, 2)
    report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)

    # 4. One UNet step: optimised against unoptimised, and how close to the hardware it runs.
    kw = unet_inputs(pipe, args.arch)
    with torch.inference_mode():
        reference = pipe.unet(**kw, return_dict=False)[0].float()
        optimised = model.pipe.unet(**kw, return_dict=False)[0].float()
        counter = FlopCounterMode(display=False)
        with counter:
            pipe.unet(**kw)
    report["unet_step_relative_error"] = float(
        (optimised - reference).norm() / reference.norm())
    report["unet_step_max_abs_error"] = float((optimised - reference).abs().max())
    flops = counter.get_total_flops()  # one panel's step with CFG (batch 2)
    report["unet_tflop_per_panel_step"] = round(flops / 1e12, 2)
    batch = max(report["batch_sizes"])
    big = unet_inputs(pipe, args.arch, 2 * batch)
    for name, unet in (("naive", pipe.unet), ("storyboard", model.pipe.unet)):
        b = 2 if name == "naive" else 2 * batch
        step = time_call(unet, kw if name == "naive" else big)
        tflops = flops * (b // 2) / step / 1e12
        report[f"unet_{name}_ms_per_panel_step"] = round(step * 1e3 / (b // 2), 2)
        report[f"unet_{name}_tflops"] = round(tflops, 1)
        report[f"unet_{name}_fraction_of_peak"] = round(
            tflops / report["bf16_matmul_peak_tflops"], 3)

    print(json.dumps(report, indent=1), flush=True)
    out = args.out or HERE / "results" / \
        f"{gpu.replace(' ', '-').lower()}-{report['date']}-{args.arch}.json"
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
