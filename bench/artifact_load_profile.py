"""Where does loading a compiled artifact's seconds go? A profile.

In: an artifact file, storyboard's (``<compile cache>/storyboard-aot/*.aot``) or the raw one
``bench/aot_compile_probe.py`` saves. Out: one JSON object on stdout.

A build that loads its saved UNet artifact spends about 3.4 s in torch's loader
(``load_compiled_function``; round 9, Kolors). In a new process, like a build's: torch imported,
CUDA started and diffusers and transformers imported first, then
1. the imports the loader needs (dynamo, inductor), timed alone;
2. the loader itself under cProfile: the functions with the most cumulative time.

    python bench/artifact_load_profile.py /tmp/storyboard-aot-compile/unet.aot
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    out: dict = {}
    t = time.perf_counter()
    import torch

    torch.zeros(1, device="cuda")
    # A build has imported these before it loads an artifact.
    import diffusers  # noqa: F401
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: F401
    import transformers  # noqa: F401
    out["torch_and_cuda_s"] = round(time.perf_counter() - t, 3)
    data = args.artifact.read_bytes()
    if data.startswith(b"storyboard-aot\n"):
        from storyboard.engine.speed.artifact_files import read_artifact

        data = read_artifact(args.artifact)[1]
    out["bytes"] = len(data)
    imports = {}
    for name in ("torch._dynamo", "torch._inductor", "torch._inductor.codecache",
                 "torch._inductor.runtime.triton_heuristics", "triton"):
        t = time.perf_counter()
        importlib.import_module(name)
        imports[name] = round(time.perf_counter() - t, 3)
    out["imports_s"] = imports
    if hasattr(torch._dynamo.config, "enable_aot_compile"):
        torch._dynamo.config.enable_aot_compile = True
    profile = cProfile.Profile()
    t = time.perf_counter()
    profile.enable()
    torch.compiler.load_compiled_function(io.BytesIO(data))
    profile.disable()
    out["load_s"] = round(time.perf_counter() - t, 3)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(args.top)
    out["by_cumulative"] = text.getvalue().splitlines()[-args.top - 2:]
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.top)
    out["by_own_time"] = text.getvalue().splitlines()[-args.top - 2:]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
