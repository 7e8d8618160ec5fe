"""Where a process's first batch spends the seconds its later batches do not.

In: a saved diffusers folder (bench/gpu_models.py), its family, and optionally the batch size
and steps. Out: one JSON object on stdout: for the first batch and an identical second one, the
seconds encoding the prompts, each denoising step (the first three and the median), decoding
with the VAE, everything after the last step (the decode, the pipeline's casts around it and
the post-processing), and the whole call; the first batch's extra seconds per part are the difference.
The model is loaded with storyboard's ``load_model`` and called the way ``engine.runner`` calls
it (a list of prompts, CPU generators, ``output_type="pt"``), with a CUDA synchronise around
each timed part, so the parts add up to the call.

    python bench/first_batch.py /tmp/sbe/weights/sdxl-fp16 sdxl --panels 8 --steps 50
    STORYBOARD_WARMUP=0 python bench/first_batch.py ...   # without the GPU warm-up (warmup.py)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(report: dict, name: str, fn):
    """Wrap ``fn`` so each call adds its synchronised seconds to ``report[name]``."""
    def wrapper(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        report[name] = round(report.get(name, 0.0) + time.perf_counter() - t, 4)
        return out

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("family", choices=["sdxl", "kolors"])
    ap.add_argument("--panels", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    from reference import COURSE_PANELS

    from storyboard.engine.loading import load_model
    from storyboard.options import RuntimeOptions
    from storyboard.plan.jobs import ModelRef

    t = time.perf_counter()
    model = load_model(ModelRef("folder", str(args.folder), family=args.family, dtype="fp16"),
                       RuntimeOptions(progress=False))
    import torch

    out: dict = {"load_s": round(time.perf_counter() - t, 3),
                 "warmup": model.warmup and {"seconds": model.warmup.seconds,
                                             "error": model.warmup.error}}
    pipe = model.pipe
    panels = [COURSE_PANELS[i % len(COURSE_PANELS)] for i in range(args.panels)]
    for run in ("first", "second"):
        report: dict = {}
        pipe.encode_prompt = timed(report, "encode_s", pipe.encode_prompt)
        pipe.vae.decode = timed(report, "decode_s", pipe.vae.decode)
        marks: list[float] = []

        def step_end(_pipe, step, timestep, callback_kwargs):
            sync()
            marks.append(time.perf_counter())
            return callback_kwargs

        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt=[p.prompt for p in panels], negative_prompt=[p.negative for p in panels],
                 num_inference_steps=args.steps, guidance_scale=4.0, width=args.size,
                 height=args.size, output_type="pt", callback_on_step_end=step_end,
                 generator=[torch.Generator("cpu").manual_seed(p.seed) for p in panels])
        sync()
        report["call_s"] = round(time.perf_counter() - start, 4)
        steps = [b - a for a, b in zip(marks, marks[1:])]
        # The first step: from the call's start to its end, less the prompts' encoding.
        report["step1_s"] = round(marks[0] - start - report.get("encode_s", 0.0), 4)
        report["steps_2_3_s"] = [round(s, 4) for s in steps[:2]]
        report["step_median_s"] = round(statistics.median(steps), 4)
        # After the last step: the VAE (its decode, and the pipeline's casts around it) and
        # the pixels' post-processing.
        report["after_steps_s"] = round(start + report["call_s"] - marks[-1], 4)
        out[run] = report
        del pipe.encode_prompt, pipe.vae.decode  # back to the classes' methods
    out["extra_s"] = {k: round(out["first"][k] - out["second"][k], 3)
                      for k in ("encode_s", "step1_s", "decode_s", "after_steps_s", "call_s")
                      if k in out["first"] and k in out["second"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
