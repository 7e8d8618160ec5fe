"""GPU smoke of a build that trains first: full-size random SDXL, whole `storyboard` processes.

In: nothing (run on the device machine from the repository root; ``$OUT`` receives
``train_build_smoke.json``). Out: for each process (`build` that trains, then a second `build`
with nothing to do), its wall time, exit code and the times of its events: the training's
class pictures (prior preservation), its steps (CUDA graphs on this path), the contact sheets at
each checkpoint, the render with the trained LoRA; and checks that the files exist: the LoRA
and its kohya copy, the sheets, the panels, the page. It is the one GPU run of the paths the
training benchmark (bench/train.py) does not take: prior preservation, on_checkpoint renders
between graph replays, the trained file loaded by the renderer.

First run (2026-12-01, one H200; bench/results/nvidia-h200-2026-12-01-train-build-smoke.json):
the build that trains took 85.6 s (exit 0): 4 class pictures rendered (model loaded at 18 s),
the training's model loaded at 40 s, 60 steps to 66.7 s with sheets at steps 20, 40 and 60,
the three panels rendered with the trained LoRA by 83.5 s; the second build, nothing to do, 1.2
s without loading a model. The model is loaded three times (class pictures, training, render):
sharing one load is the next saving.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STORY = """\
version: 1
title: Smoke
model: {{path: {model}, family: sdxl, dtype: fp16}}
defaults: {{steps: 8, width: 1024, height: 1024, seed: 3}}
characters:
  mira:
    token: ohwx
    class: girl
    description: curly red hair
    train:
      images: refs/
      steps: 60
      checkpoint_every: 20
      prior_preservation: {{images: 4, weight: 1.0}}
panels:
  - {{id: park, characters: [mira], prompt: in a park, caption: Mira in the park.}}
  - {{id: home, characters: [mira], prompt: at home}}
  - {{id: sea, prompt: the sea at night}}
"""


def run(args: list[str], cwd: Path, env: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "storyboard.cli", *args, "--json"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        event["t"] = round(time.perf_counter() - started, 2)
        events.append(event)
    err = proc.stderr.read()
    code = proc.wait()
    kinds = {}
    for e in events:
        kinds.setdefault(e["event"], []).append(e["t"])
    return {"args": args, "exit": code, "wall_s": round(time.perf_counter() - started, 1),
            "first_and_last": {k: [v[0], v[-1], len(v)] for k, v in kinds.items()},
            "train_first": next((e["message"] for e in events if e["event"] == "train_first"),
                                None),
            "sheets": [e["path"] for e in events if e["event"] == "train_sheet"],
            "warnings": [e["message"] for e in events if e["event"] == "warning"],
            "last_loss": next((e["loss"] for e in reversed(events)
                               if e["event"] == "train_step"), None),
            "stderr_tail": err[-1500:]}


def main() -> None:
    import torch
    from PIL import Image

    from gpu_models import build_sdxl

    out = Path(os.environ.get("OUT", "/tmp/out"))
    work = Path("/tmp/train-build-smoke")
    model = work / "sdxl"
    if not (model / "model_index.json").is_file():
        t0 = time.perf_counter()
        build_sdxl(model)
        print(f"built SDXL in {time.perf_counter() - t0:.0f} s", flush=True)
    torch.cuda.empty_cache()
    refs = work / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate([(1024, 1024), (1216, 832), (832, 1216), (1024, 1024), (1024,
                                                                                   1024)]):
        Image.new("RGB", size, (200, 40 * i, 30)).save(refs / f"{i}.png")
    (work / "story.yaml").write_text(STORY.format(model=model), encoding="utf-8")
    env = dict(os.environ, STORYBOARD_CACHE=str(work / "cache"))
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "processes": []}
    for args in (["build", "story.yaml"], ["build", "story.yaml"]):
        result = run(args, work, env)
        report["processes"].append(result)
        print(json.dumps(result, indent=1), flush=True)
    trained = list((work / "cache" / "trained").glob("*/lora*.safetensors"))
    report["files"] = {
        "loras": sorted(p.name for p in trained),
        "sheets": sorted(str(p.relative_to(work)) for p in
                         (work / "story.out" / "training").rglob("*.png")),
        "panels": sorted(p.name for p in (work / "story.out" / "panels").glob("*.png")),
        "pages": sorted(p.name for p in (work / "story.out").glob("page-*.png")),
    }
    print(json.dumps(report["files"], indent=1))
    (out / "train_build_smoke.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
