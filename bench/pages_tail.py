"""The wait after the last panel: composing the pages, the PDF and the CBZ of 40 1024-px panels.

In: nothing (makes 40 1024x1024 panel PNGs that compress like renders do: gradients and
blurred noise, about 1.3 MB each). Out: on stdout, the seconds a build waits after its last
panel: composing everything then (``output.pages.write_pages``, with the PDF fonts cut before
or not), and composing each page as its panels arrive (``output.compose.PageComposer``, what a
build does), the panels arriving in batches of ``--batch`` as a GPU renders them. CPU only; run
from the repository root: ``python bench/pages_tail.py [--panels 40] [--render-s 1.9]
[--batch 8]``.

Runs on the H200 machine's CPU (16 cores), 40 panels, 8 a page. Earlier code (one panel
arriving at a time, pages deflated on one core): composing at the end 9.93 s after the last
panel with the fonts cut then (the 11.5 s the issue measured in a real build), 6.77 s with them
cut while rendering, 1.88 s composing as the panels arrive. With the pages and the PDF's
pictures deflated on every core and the panels read ahead (``--render-s 0.2``, 8 at a time):
7.89, 4.50 and 0.74 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def panels(folder: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1024, 0:1024]
    paths = []
    for i in range(count):
        base = np.stack([(x * 255 // 1024 + i * 5) % 256, (y * 255 // 1024) % 256,
                         ((x + y) // 8 + i) % 256], -1).astype(np.float32)
        noise = Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
        noise = np.asarray(noise.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
        path = folder / f"{i}.png"
        Image.fromarray(np.clip(base * 0.7 + noise * 0.3, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def main() -> None:
    from PIL import Image

    from storyboard.output import pdf as pdf_module
    from storyboard.output.pages import Cell, plan_pages
    from storyboard.output.compose import write_pages
    from storyboard.story.layout import LayoutSpec

    ap = argparse.ArgumentParser()
    ap.add_argument("--panels", type=int, default=40)
    ap.add_argument("--render-s", type=float, default=1.9,
                    help="seconds a panel takes (SDXL on an H200: about 1.9)")
    ap.add_argument("--batch", type=int, default=8,
                    help="panels that arrive together (a build's batch: 8 on an H200)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = panels(folder, args.panels)
        captions = [f"Panel {n}: the keeper climbs the stairs, 他们回家了吗？"
                    for n in range(1, args.panels + 1)]
        chars = pdf_module.story_chars(["The Lighthouse Keeper", *captions,
                                        *(f"p{n}" for n in range(1, args.panels + 1))])
        for warm in (False, True):
            pdf_module.truetype_subset.cache_clear()
            if warm:  # what a build does while its panels render
                t = time.perf_counter()
                pdf_module.warm_fonts(None, chars)
                print(f"fonts cut while rendering: {time.perf_counter() - t:.2f} s")
            t = time.perf_counter()
            cells = []
            for n, path in enumerate(paths, 1):
                with Image.open(path) as im:
                    cells.append(Cell(f"p{n}", n, im.convert("RGB"), captions[n - 1], ()))
            loaded = time.perf_counter()
            pages = plan_pages(cells, LayoutSpec(panels_per_page=8), "The Lighthouse Keeper")
            planned = time.perf_counter()
            write_pages(pages, folder, "bench", chars)
            done = time.perf_counter()
            print(f"{'warm' if warm else 'cold'} fonts: load {loaded - t:.2f} s, plan "
                  f"{planned - loaded:.2f} s, write pages+PDF+CBZ {done - planned:.2f} s, "
                  f"after the last panel {done - t:.2f} s ({len(pages)} pages)")
        from storyboard.output.compose import PageComposer, Slot

        pdf_module.truetype_subset.cache_clear()
        slots = [Slot(f"p{n}", n, captions[n - 1], (), (1024, 1024))
                 for n in range(1, args.panels + 1)]
        out = folder / "progressive"
        out.mkdir()
        with PageComposer(slots, LayoutSpec(panels_per_page=8), "The Lighthouse Keeper",
                          "bench", out, chars) as composer:
            for i, path in enumerate(paths):
                if i % args.batch == 0:
                    time.sleep(args.render_s * args.batch)  # the GPU rendering the next batch
                composer.arrived(i, path)
            t = time.perf_counter()
            composer.finish(lambda i: True)
        print(f"composed as panels arrive ({args.batch} every {args.batch * args.render_s} s): "
              "after the last panel "
              f"{time.perf_counter() - t:.2f} s {composer.timings}")


if __name__ == "__main__":
    main()
