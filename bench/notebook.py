"""The course notebook's way, as one process: the wait storyboard's end-to-end speed is measured
against (bench/e2e.py starts it).

In: a local diffusers folder (SDXL or Kolors), its family, and a JSON file of panels (seed,
prompt, negative). Out: one JPEG per panel and the notebook's page (the panels glued into a
2-column grid with numpy and resized, as the course does) in ``--out``; on stdout, one JSON
line per milestone (``loaded``, ``panel``, ``done``) as it happens, so the parent can time them.

What it does is what a student of the course runs: ``from_pretrained(..., torch_dtype=
torch.float16).to("cuda")``, then for each panel ``torch.manual_seed(seed)`` and one ``pipe()``
call (CFG 4, 50 steps, 1024x1024) whose image is saved as ``N.jpg``. Nothing is batched,
compiled or cached.

    python bench/notebook.py FOLDER sdxl panels.json --out DIR
"""

from __future__ import annotations

import json
import sys


def say(event: str, **facts) -> None:
    print(json.dumps({"event": event, **facts}), flush=True)


def main() -> None:
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("family", choices=["sdxl", "kolors"])
    ap.add_argument("panels", type=Path, help="JSON: [[seed, prompt, negative], ...]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    panels = json.loads(args.panels.read_text("utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch
    from PIL import Image

    if args.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline as Pipeline
    else:
        from diffusers import KolorsPipeline as Pipeline
    say("imported")
    pipe = Pipeline.from_pretrained(str(args.folder), torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    torch.cuda.synchronize()
    say("loaded")
    files = []
    for n, (seed, prompt, negative) in enumerate(panels, 1):
        torch.manual_seed(seed)
        image = pipe(prompt=prompt, negative_prompt=negative, guidance_scale=4.0,
                     num_inference_steps=args.steps, height=args.size,
                     width=args.size).images[0]
        files.append(args.out / f"{n}.jpg")
        image.save(files[-1])
        say("panel", n=n)
    # The course's page: the JPEGs read back, glued 2 columns wide, resized to 1024 wide.
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len(arrays) % 2:
        arrays.append(np.full_like(arrays[0], 255))
    rows = [np.concatenate(arrays[i:i + 2], axis=1) for i in range(0, len(arrays), 2)]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid.resize((1024, 1024 * len(rows) // 2)).save(args.out / "story.jpg")
    say("done")


if __name__ == "__main__":
    sys.exit(main())
