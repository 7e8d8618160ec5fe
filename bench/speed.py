"""storyboard's renderer against the course notebook's loop, on one GPU, in one process.

For one architecture (sdxl or kolors), full size with random weights:
1. build it and save it to disk (bench/gpu_models.py);
2. cold start: `storyboard build` of the course story as a new process, three times, with an
   empty panel cache each time: the first process (--compile) pays torch.compile into an empty
   compile cache, the second finds it warm, the third runs with --no-compile (what the default,
   compile "auto", picks for 8 panels). Reports seconds from process start to the first
   finished panel, and to the end of the build (--only-cold: stop here);
3. in this process, on the same weights and the same 8 panels (1024x1024, 50 steps, CFG 4):
   the reference loop `naive_render` from bench/reference.py (the course notebook's loop, one
   `pipe()` per panel), then storyboard's `render_jobs` (warm-up run, then a timed
   steady-state run); the pair repeated (--repeats, default 3), alternating, with the median
   ratio reported;
4. the optimised UNet step against the unoptimised one on identical inputs (relative error),
   the UNet's FLOPs per step, its achieved TFLOP/s and the fraction of the bf16 matmul peak
   measured here, and the peak GPU memory;
4b. PNG encoding and cache writes against GPU work: 16 panels in two batches, rendered alone
   and rendered and written as `storyboard build` writes them (skip with --skip-writes);
5. the course story as the course really renders it, with its character LoRA (random, rank 16
   on the attention projections, weight 0.125 as in the course): the reference loop with the
   LoRA loaded as a diffusers adapter, and storyboard (LoRA merged into the weights, compiled),
   on a freshly loaded model; plus the merged, compiled UNet step against the live adapter's;
6. with --only-fp8 instead: the opt-in FP8 path (model dtype fp8) against the reference loop,
   and its UNet step against the plain fp16 one.
Writes bench/results/<gpu>-<date>-<arch>.json (or --out). Run on the GPU machine:
    python bench/speed.py sdxl --out results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
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
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from gpu_models import BUILDERS, random_lora  # noqa: E402
from reference import COURSE_PANELS, naive_render  # noqa: E402

from storyboard.engine.loading import load_model  # noqa: E402
from storyboard.engine.session import Session, render_jobs  # noqa: E402
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.plan import compile_story  # noqa: E402
from storyboard.story import load_story  # noqa: E402

COURSE = ROOT / "examples" / "course-kolors.yaml"


# storyboard's flags in every section: compiled (its default, "auto", would not compile 8
# panels in one process, see models.compile_pays; the steady state here is a long-lived
# render), and tuned unless --no-tune.
FLAGS = ["--compile"]


def runtime_options() -> RuntimeOptions:
    return RuntimeOptions(progress=False, compile=True, tune="--no-tune" not in FLAGS)


def story_for(folder: Path, family: str, work: Path, lora: Path | None = None,
              dtype: str = "fp16") -> Path:
    text = COURSE.read_text("utf-8")
    start, end = text.index("model:"), text.index("defaults:")
    text = text[:start] + f"model:\n  path: {folder}\n  family: {family}\n  dtype: {dtype}\n\n" \
        + text[end:]
    if lora:
        # The course's commented-out LoRA lines, switched on and pointed at ``lora``.
        start = text.index("    # loras:")
        end = text.index("\n\n", start)
        text = text[:start] + f"    loras:\n      - file: {lora}\n        weight: 0.125" + text[end:]
    path = work / f"story-{family}-{dtype}{'-lora' if lora else ''}.yaml"
    path.write_text(text, "utf-8")
    return path


def cold_start(story: Path, work: Path, name: str, *flags: str) -> dict:
    """A new `storyboard build` process: seconds to its first finished panel, and in all."""
    env = dict(os.environ, STORYBOARD_CACHE=str(work / f"panels-{name}"), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    stderr = work / f"stderr-{name}.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "storyboard.cli", "build", "--json",
                                 *(flags or FLAGS),
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
            if kind == "speedups":
                events["speedups"] = event["applied"]
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


def race(pipe, story: Path, report: dict, prefix: str = "", repeats: int = 1):
    """The reference loop, then storyboard on a freshly loaded model (a warm-up run, then a
    timed steady-state run), on the same panels; records both under ``prefix``. With
    ``repeats`` > 1 the pair (reference loop, storyboard steady state) runs that many times,
    alternating, and the median ratio is recorded too: the reference loop's time moves more
    from run to run than storyboard's."""
    log(f"{prefix}naive loop")
    _, naive_s = naive_render(pipe, COURSE_PANELS)
    report[f"{prefix}naive_s_per_panel"] = round(naive_s / len(COURSE_PANELS), 3)
    jobs = compile_story(load_story(story))
    options = runtime_options()
    model = load_model(jobs[0].model, options)
    session = Session()
    session.adopt(model, options)
    log(f"{prefix}storyboard warm-up")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prepared = session.prepare(jobs, options, on_event=log_event)
    warm = list(prepared.results(log_event))
    torch.cuda.synchronize()
    report[f"{prefix}storyboard_warmup_s"] = round(time.perf_counter() - t0, 1)
    report[f"{prefix}speedups"] = [str(s) for s in prepared.info.speedups]
    report[f"{prefix}batch_sizes"] = sorted({r.batch_size for r in warm})
    runs = []
    for i in range(repeats):
        if i:
            log(f"{prefix}naive loop, run {i + 1}")
            _, naive_s = naive_render(pipe, COURSE_PANELS)
        log(f"{prefix}storyboard steady state, run {i + 1}")
        t0 = time.perf_counter()
        steady = list(render_jobs(jobs, options, session=session))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        assert all(r.status == "rendered" for r in steady), [r.error for r in steady]
        runs.append({"naive_s_per_panel": round(naive_s / len(COURSE_PANELS), 3),
                     "storyboard_s_per_panel": round(seconds / len(jobs), 3),
                     "speedup_vs_naive": round(naive_s / seconds, 2)})
        log(json.dumps(runs[-1]))
    report[f"{prefix}storyboard_s_per_panel"] = runs[0]["storyboard_s_per_panel"]
    report[f"{prefix}speedup_vs_naive"] = runs[0]["speedup_vs_naive"]
    if repeats > 1:
        report[f"{prefix}runs"] = runs
        report[f"{prefix}median_speedup_vs_naive"] = statistics.median(
            r["speedup_vs_naive"] for r in runs)
    return model, session


def lora_section(pipe, folder: Path, work: Path, arch: str, kw: dict, report: dict) -> None:
    """Section 5: the course story with its character LoRA, naive loop against storyboard."""
    log("lora: building a random LoRA")
    lora = random_lora(pipe.unet, work / "xiaozi.safetensors")
    lora_story = story_for(folder, arch, work, lora)
    pipe.load_lora_weights(str(lora), adapter_name="xiaozi")
    pipe.set_adapters(["xiaozi"], [0.125])
    model, _ = race(pipe, lora_story, report, "lora_")
    with torch.inference_mode():
        live = unet_step(pipe.unet, kw).float()
        merged = unet_step(model.pipe.unet, kw).float()
        pipe.disable_lora()
        base = unet_step(pipe.unet, kw).float()
    report["lora_unet_step_relative_error_vs_live_adapter"] = float(
        (merged - live).norm() / live.norm())
    report["lora_unet_step_relative_change_from_base"] = float(
        (live - base).norm() / base.norm())  # the LoRA really acts
    report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)


def fp8_section(pipe, folder: Path, work: Path, arch: str, report: dict) -> None:
    """The opt-in FP8 path (model dtype fp8): the course story against the reference loop, and
    the FP8 UNet step against the plain fp16 one on the same inputs (the batch it compiled for,
    so no second compilation)."""
    model, _ = race(pipe, story_for(folder, arch, work, dtype="fp8"), report, "fp8_")
    batch = max(report["fp8_batch_sizes"])
    big = unet_inputs(pipe, arch, 2 * batch)
    bf16 = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and k != "timestep" else v)
            for k, v in big.items()}
    bf16["added_cond_kwargs"] = {k: v.to(torch.bfloat16)
                                 for k, v in big["added_cond_kwargs"].items()}
    with torch.inference_mode():
        reference = unet_step(pipe.unet, big).float()
        fp8 = unet_step(model.pipe.unet, bf16).float()
    report["fp8_unet_step_relative_error"] = float((fp8 - reference).norm() / reference.norm())
    step = time_call(lambda: unet_step(model.pipe.unet, bf16), {})
    report["fp8_unet_ms_per_panel_step"] = round(step * 1e3 / batch, 2)
    report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)


def writes_section(session: Session, story: Path, report: dict) -> None:
    """PNG encoding and cache writes against GPU work, as `storyboard build` does them: 16
    panels (the course story and again with other seeds) in two batches of 8, rendered alone
    (`render_jobs`), then rendered and written (`render_into_cache`, which encodes each batch's
    panels on a writer thread while the next batch renders). Also the encoding and writing
    done one panel after another, for what a build without the overlap would add."""
    import dataclasses

    from storyboard.commands.rendering import render_into_cache
    from storyboard.output.cache import PanelCache
    from storyboard.output.pnginfo import panel_png_bytes
    from storyboard.plan import with_hash

    jobs = compile_story(load_story(story))
    jobs += [with_hash(dataclasses.replace(j, panel=f"{j.panel}-again", seed=j.seed + 1000))
             for j in jobs]
    options = runtime_options()
    log(f"writes: render only, {len(jobs)} panels")
    t0 = time.perf_counter()
    results = list(render_jobs(jobs, options, session=session))
    torch.cuda.synchronize()
    render_s = time.perf_counter() - t0
    log("writes: render and write")
    cache = PanelCache(Path(tempfile.mkdtemp(dir="/tmp")))
    t0 = time.perf_counter()
    outcomes, _ = render_into_cache(jobs, cache, options, lambda e: None, story=None,
                                    session=session)
    build_s = time.perf_counter() - t0
    assert all(o.status == "rendered" for o in outcomes.values())
    scratch = PanelCache(Path(tempfile.mkdtemp(dir="/tmp")))
    t0 = time.perf_counter()
    for r in results:
        scratch.put(r.job.hash, panel_png_bytes(r.image, r.job, story=None, sampler=r.sampler,
                                                device="cuda", dtype="fp16"))
    encode_s = time.perf_counter() - t0
    report["writes"] = {
        "panels": len(jobs), "batch_sizes": sorted({r.batch_size for r in results}),
        "render_only_s": round(render_s, 2), "render_and_write_s": round(build_s, 2),
        "png_encode_and_write_one_by_one_s": round(encode_s, 2),
        "without_overlap_would_be_s": round(render_s + encode_s, 2)}
    log(json.dumps(report["writes"]))


_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", flush=True)


def log_event(event: dict) -> None:
    if event["event"] != "step" or event["step"] in (1, 2, event["steps"]):
        log(json.dumps(event)[:200])


def matmul_peak(n: int = 8192, reps: int = 20) -> float:
    """The bf16 matrix-product TFLOP/s this GPU reaches now (n x n x n products, CUDA events)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


@torch.inference_mode()
def time_call(fn, kw: dict, reps: int = 10) -> float:
    """Seconds per call of ``fn(**kw)`` on the GPU (CUDA events, after two warm-up calls)."""
    for _ in range(2):
        fn(**kw)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(reps):
        fn(**kw)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def unet_step(unet, kw: dict):
    """One UNet call shaped as the pipeline makes it (sample and timestep positional), so a
    compiled UNet meets the graph it compiled for instead of compiling another."""
    rest = {k: v for k, v in kw.items() if k not in ("sample", "timestep")}
    return unet(kw["sample"], kw["timestep"], **rest, return_dict=False)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=sorted(BUILDERS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--skip-writes", action="store_true")
    ap.add_argument("--no-tune", action="store_true",
                    help="storyboard with --no-tune (no coordinate-descent tuning) everywhere")
    ap.add_argument("--repeats", type=int, default=3,
                    help="reference loop / storyboard pairs in section 3 (median reported)")
    ap.add_argument("--only-lora", action="store_true",
                    help="skip the cold starts and sections 3-4: the LoRA section alone")
    ap.add_argument("--only-fp8", action="store_true",
                    help="the opt-in FP8 path alone (model dtype fp8; needs torchao)")
    ap.add_argument("--only-cold", action="store_true",
                    help="sections 1-2 alone: the new `storyboard build` processes")
    args = ap.parse_args()
    if args.no_tune:
        FLAGS.append("--no-tune")
    import diffusers
    from torch.utils.flop_counter import FlopCounterMode

    gpu = torch.cuda.get_device_name(0)
    report: dict = {"gpu": gpu, "arch": args.arch, "torch": torch.__version__,
                    "diffusers": diffusers.__version__,
                    "date": datetime.date.today().isoformat(),
                    "settings": "course story: 8 panels, 1024x1024, 50 steps, CFG 4, fp16",
                    "storyboard_options": " ".join(FLAGS)}
    report["bf16_matmul_peak_tflops"] = round(matmul_peak(), 1)
    out = args.out or HERE / "results" / \
        f"{gpu.replace(' ', '-').lower()}-{report['date']}-{args.arch}.json"

    def save() -> None:  # after every section, so a run cut short keeps what it measured
        out.write_text(json.dumps(report, indent=2))

    work = Path(tempfile.mkdtemp(dir="/tmp"))
    import shutil

    cold = not (args.skip_cold or args.only_lora or args.only_fp8)
    if cold:  # otherwise a cache left by an earlier run of this script only saves compile time
        shutil.rmtree(INDUCTOR, ignore_errors=True)

    # 1. The weights, on disk.
    t0 = time.perf_counter()
    folder = BUILDERS[args.arch](work / f"random-{args.arch}")
    torch.cuda.empty_cache()
    report["build_and_save_s"] = round(time.perf_counter() - t0, 1)
    story = story_for(folder, args.arch, work)

    # 2. Cold starts: a new process with an empty compile cache, then one with a warm cache,
    # then one that does not compile (what a whole build costs each way).
    if cold:
        report["cold_start_empty_compile_cache"] = cold_start(story, work, "first")
        report["cold_start_warm_compile_cache"] = cold_start(story, work, "second")
        report["cold_start_no_compile"] = cold_start(story, work, "eager", "--no-compile")
        print(json.dumps(report, indent=1), flush=True)
        save()
    if args.only_cold:
        return

    # 3. Same weights, same panels: the reference loop, then storyboard.
    pipeline_cls = getattr(diffusers, {"sdxl": "StableDiffusionXLPipeline",
                                       "kolors": "KolorsPipeline"}[args.arch])
    pipe = pipeline_cls.from_pretrained(str(folder), dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    naive_render(pipe, COURSE_PANELS[:1])  # CUDA and cuBLAS warm-up, not timed
    kw = unet_inputs(pipe, args.arch)
    if args.only_lora or args.only_fp8:
        if args.only_lora:
            lora_section(pipe, folder, work, args.arch, kw, report)
        else:
            fp8_section(pipe, folder, work, args.arch, report)
        save()
        print(json.dumps(report, indent=1), flush=True)
        return
    model, session = race(pipe, story, report, repeats=args.repeats)
    report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
    save()

    # 4. One UNet step: optimised against unoptimised, and how close to the hardware it runs.
    with torch.inference_mode():
        reference = unet_step(pipe.unet, kw).float()
        optimised = unet_step(model.pipe.unet, kw).float()
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
        inputs = kw if name == "naive" else big
        step = time_call(lambda: unet_step(unet, inputs), {})
        tflops = flops * (b // 2) / step / 1e12
        report[f"unet_{name}_ms_per_panel_step"] = round(step * 1e3 / (b // 2), 2)
        report[f"unet_{name}_tflops"] = round(tflops, 1)
        report[f"unet_{name}_fraction_of_peak"] = round(
            tflops / report["bf16_matmul_peak_tflops"], 3)

    save()
    if not args.skip_writes:
        writes_section(session, story, report)
        save()

    # 5. With the course's character LoRA.
    if not args.skip_lora:
        if not args.only_lora:
            del model
            torch.cuda.empty_cache()
        lora_section(pipe, folder, work, args.arch, kw, report)
    save()
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
