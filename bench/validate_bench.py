"""How long `storyboard validate` takes on a 50-panel story.

Generates a realistic story (3 characters with LoRA files, a style, vars, panel templates,
mapping prompts, Chinese captions) in a temp folder, then measures:
  - in-process: load + validate + compile (what `validate` does), best and median of N runs;
  - cold: `storyboard validate` as a new process, including Python start-up and imports;
  - that the CLI process never imported torch.
Run: python bench/validate_bench.py [--panels 50] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_story(folder: Path, panels: int) -> Path:
    (folder / "loras").mkdir()
    lines = ["version: 1", "title: Benchmark story", "model: tiny-sdxl",
             "vars:", "  town: a seaside town", "defaults:", "  steps: 30",
             "  scheduler: DPM++ 2M Karras", "  negative: blurry, lowres",
             "style:", "  prefix: storybook illustration", "  suffix: soft light",
             "characters:"]
    for name in ("ana", "ben", "cat"):
        (folder / "loras" / f"{name}.safetensors").write_bytes(name.encode() * 4096)
        lines += [f"  {name}:", f"    name: {name.title()}", "    token: sks",
                  "    class: person", f"    description: {name} with a red scarf",
                  "    loras:", f"      - file: loras/{name}.safetensors", "        weight: 0.8"]
    lines.append("panels:")
    for i in range(panels):
        who = ["ana", "ben", "cat"][: i % 3 + 1]
        lines += [f"  - id: panel-{i:03d}", f"    characters: [{', '.join(who)}]"]
        if i % 2:
            lines += ["    prompt:", f"      subject: scene {i} in {{{{ vars.town }}}}",
                      "      lighting: [golden hour, rim light]"]
        else:
            lines.append(f"    prompt: walking through {{{{ vars.town }}}}, moment {i}")
        lines += [f"    caption: 第{i}格：他们在海边小镇散步。", f"    seed: {i * 7}"]
    path = folder / "story.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--panels", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    from storyboard.plan import compile_story
    from storyboard.story import load_story

    with tempfile.TemporaryDirectory() as tmp:
        story = make_story(Path(tmp), args.panels)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            jobs = compile_story(load_story(story))
            times.append(time.perf_counter() - t0)
        assert len(jobs) == args.panels

        code = ("import sys, time; t0 = time.perf_counter()\n"
                "from storyboard.cli import cli\n"
                "try:\n    cli(['validate', '-q', sys.argv[1]])\n"
                "except SystemExit as e:\n    rc = e.code\n"
                "print(rc, time.perf_counter() - t0, 'torch' in sys.modules)")
        cold = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code, str(story)], capture_output=True,
                                 text=True, check=True).stdout.split()
            cold.append(time.perf_counter() - t0)
            assert out[0] in ("0", "None"), out
            assert out[2] == "False", "validate imported torch"

    result = {
        "panels": args.panels,
        "in_process_best_s": round(min(times), 4),
        "in_process_median_s": round(statistics.median(times), 4),
        "cold_process_median_s": round(statistics.median(cold), 4),
        "torch_imported": False,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
