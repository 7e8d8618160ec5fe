"""Would compiling only the UNet's repeated blocks (regional compilation) give a new process most
of a compiled step's speed for a few seconds of compiling? A probe.

In: a diffusers folder (bench/gpu_models.py) and its family, or ``builtin:tiny-sdxl`` on any
machine; the batch (panels, size); which block classes to compile. Out: one JSON object on
stdout.

Compiling the whole UNet makes a step about a fifth faster (36 to 28.5 ms per panel-step at 8
SDXL panels) but costs a new process about 12 s with a warm cache (dynamo traces the whole UNet
again) and about 3 minutes on a machine's first compile, so a default build compiles only long
renders on a machine that has compiled before. diffusers' ``compile_repeated_blocks`` compiles
each ``BasicTransformerBlock`` instead: 70 instances of a few distinct shapes, so dynamo traces
and inductor compiles a few small graphs, not one large one. This probe measures, in storyboard's
eager layout (no K/V cache: its per-layer slots would make every block a graph of its own):
1. load the model with storyboard's ``load_model``; keep the UNet's first call's arguments;
2. time UNet calls eagerly;
3. compile the chosen block classes (``--blocks``), time the first call (the compile) and then
   calls, and count the graphs dynamo made;
4. the same in a new process with the compile cache now warm (what a later build would pay).

    python bench/regional_probe.py builtin:tiny-sdxl sdxl --panels 2 --size 64
    python bench/regional_probe.py /tmp/sbe/weights/sdxl-fp16 sdxl --blocks BasicTransformerBlock
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
# The same inputs and timing as the AOTInductor probe, for comparison.
from aoti_probe import (first_unet_call, model_arguments, run_child, sync,  # noqa: E402
                        timed_calls)


def load(model_arg: str, family: str, layout: list[str]):
    from storyboard.engine.loading import load_model
    from storyboard.engine.speed.apply import apply_speedups
    from storyboard.options import RuntimeOptions
    from storyboard.plan import Speedup
    from storyboard.plan.jobs import ModelRef

    if model_arg.startswith("builtin:"):
        ref = ModelRef("builtin", model_arg.split(":", 1)[1])
    else:
        ref = ModelRef("folder", model_arg, family=family, dtype="fp16")
    model = load_model(ref, RuntimeOptions(progress=False))
    apply_speedups(model, [Speedup(n) for n in layout])
    return model


def run(args) -> dict:
    import torch

    report: dict = {}
    t = time.perf_counter()
    model = load(args.model, args.family, args.layout)
    report["load_s"] = round(time.perf_counter() - t, 2)
    call_args, call_kwargs = first_unet_call(model, None, args.panels, args.size,
                                             prepend=True)
    unet = model.pipe.unet
    report["eager_call_s"] = timed_calls(unet, call_args, call_kwargs, args.calls)
    with torch.inference_mode():
        eager = unet(*call_args, **call_kwargs)[0].float()
    options = None
    if args.tune:
        from storyboard.engine.speed.tuning import COMPILE_OPTIONS

        options = COMPILE_OPTIONS
    compiled = 0
    for module in unet.modules():
        if type(module).__name__ in args.blocks:
            module.compile(dynamic=False, options=options)
            compiled += 1
    report["modules_compiled"] = compiled
    from torch._dynamo.utils import counters

    t = time.perf_counter()
    with torch.inference_mode():
        got = unet(*call_args, **call_kwargs)[0].float()
    sync()
    report["first_compiled_call_s"] = round(time.perf_counter() - t, 2)
    report["rel_diff_vs_eager"] = ((got - eager).abs().max() / eager.abs().max()).item()
    report["compiled_call_s"] = timed_calls(unet, call_args, call_kwargs, args.calls)
    report["graphs"] = dict(counters["stats"])
    report["recompiles"] = sum(v for k, v in counters["recompiles"].items()) \
        if "recompiles" in counters else 0
    report["graph_breaks"] = sum(counters["graph_break"].values())
    report["eager_ms_per_panel_step"] = round(1000 * report["eager_call_s"] / args.panels, 2)
    report["compiled_ms_per_panel_step"] = round(1000 * report["compiled_call_s"] / args.panels,
                                                 2)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(ap)
    ap.add_argument("--blocks", type=lambda s: s.split(","), default=["BasicTransformerBlock"],
                    help="class names to compile, comma-separated")
    ap.add_argument("--layout", type=lambda s: [x for x in s.split(",") if x], default=[],
                    help="storyboard speed-ups to apply first, e.g. channels_last,fused_qkv")
    ap.add_argument("--tune", action="store_true", help="storyboard's kernel tuning options")
    ap.add_argument("--cache", type=Path, help="the compile cache (default: a new one)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args)))
        return
    cache = args.cache or Path(tempfile.mkdtemp(prefix="regional-"))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    report = {"model": args.model, "panels": args.panels, "size": args.size,
              "blocks": args.blocks, "layout": args.layout, "tune": args.tune}
    for phase in ("cold", "warm"):
        report[phase] = run_child(__file__, [*sys.argv[1:], "--child"], f"regional {phase}", env)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
