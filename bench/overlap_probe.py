"""Would reading the weights onto the GPU on a thread, while the main thread imports diffusers and
transformers, shorten a new process's model load? A probe.

In: a saved diffusers folder (bench/gpu_models.py) and a device (``cuda``, or ``cpu`` on any
machine). Out: one JSON object on stdout: for each way, in a new process of its own, the
seconds from the process's start to torch imported, to diffusers' pipelines imported, to every
weight file read onto the device, and in all.

A build's model load is mostly imports (diffusers and transformers: pure Python, holding the
interpreter's lock) and then the weights (6.9 GB for SDXL in 1.7-2.2 s, 17.8 GB for Kolors in
3.9 s on an H200: copies from the page cache and to the GPU, which run in C++ and Rust). If
those copies let go of the lock, a thread could do them during the imports; if they hold it,
the two only take turns. The ways:
- ``sequential``: import, then read every ``*.safetensors`` file with safetensors'
  ``load_file(device=...)``;
- ``thread``: start a thread reading the files as soon as torch is imported, import, join;
- either with ``-N`` (``sequential-4``, ``thread-4``): the tensors dealt by size to N threads,
  each with its own handles on the files (the "shards in parallel" lever: one thread copies
  from the page cache at about 5 GB/s).

    python bench/overlap_probe.py /tmp/sbe/weights/kolors-fp16 --device cuda
    python bench/overlap_probe.py builtin --device cpu    # a quick look: tiny weights saved here
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

T0 = time.perf_counter()


def read_weights(files: list[Path], device: str, workers: int = 1) -> tuple[float, int]:
    """Every file's tensors on ``device`` (split by bytes over ``workers`` threads, each with
    its own ``safe_open`` handles); seconds and bytes."""
    import torch
    from safetensors import safe_open

    t = time.perf_counter()
    items = []  # (bytes, file, key), largest first, dealt to the least loaded worker
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                items.append((max(1, int(torch.Size(shape).numel())), f, key))
    groups: list[list] = [[] for _ in range(max(1, workers))]
    loads = [0] * len(groups)
    for size, f, key in sorted(items, key=lambda i: (-i[0], str(i[1]), i[2])):
        i = loads.index(min(loads))
        groups[i].append((f, key))
        loads[i] += size
    sizes = [0] * len(groups)

    def read(i: int) -> None:
        handles: dict = {}
        kept = []
        for f, key in groups[i]:
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt", device=device)
            tensor = handles[f].get_tensor(key)
            if not device.startswith("cuda"):  # on the CPU it is a view of the mapped file
                tensor = tensor.clone()
            sizes[i] += tensor.numel() * tensor.element_size()
            kept.append(tensor)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        del kept

    if len(groups) == 1:
        read(0)
    else:
        threads = [threading.Thread(target=read, args=(i,)) for i in range(len(groups))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return time.perf_counter() - t, sum(sizes)


def imports() -> None:
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import KolorsPipeline, StableDiffusionXLPipeline  # noqa: F401


def child(folder: Path, device: str, way: str) -> dict:
    """``way``: ``sequential`` or ``thread``, with ``-N`` for N reading threads."""
    import torch

    report = {"torch_s": round(time.perf_counter() - T0, 3)}
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # both ways start CUDA before timing the rest
        torch.cuda.synchronize()
        report["cuda_s"] = round(time.perf_counter() - T0, 3)
    files = sorted(folder.rglob("*.safetensors"))
    kind, _, n = way.partition("-")
    workers = int(n or 1)
    if kind == "sequential":
        imports()
        report["imports_s"] = round(time.perf_counter() - T0, 3)
        seconds, size = read_weights(files, device, workers)
    else:
        done: dict = {}
        thread = threading.Thread(
            target=lambda: done.update(r=read_weights(files, device, workers)))
        thread.start()
        imports()
        report["imports_s"] = round(time.perf_counter() - T0, 3)
        thread.join()
        seconds, size = done["r"]
    report["weights_read_s"] = round(seconds, 3)
    report["weight_bytes"] = size
    report["total_s"] = round(time.perf_counter() - T0, 3)
    return report


def tiny_folder() -> Path:
    """The built-in tiny SDXL's folder (storyboard builds it once): real files for a look on
    any machine."""
    from storyboard.engine.builtin import builtin_folder

    return builtin_folder("tiny-sdxl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="a diffusers folder, or builtin (the tiny SDXL, saved)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=2, help="processes per way, alternating")
    ap.add_argument("--ways", nargs="+", default=["sequential", "thread"],
                    help="sequential or thread, each with -N for N reading threads (thread-4)")
    ap.add_argument("--way", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.way:
        print(json.dumps(child(Path(args.folder), args.device, args.way)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    folder = tiny_folder() if args.folder == "builtin" else Path(args.folder)
    for f in folder.rglob("*.safetensors"):  # a warm page cache, as in bench/e2e.py
        f.read_bytes()
    report: dict = {"folder": str(folder), "device": args.device, "runs": []}
    for _ in range(args.repeat):
        for way in args.ways:
            run = subprocess.run([sys.executable, __file__, str(folder), "--device",
                                  args.device, "--way", way], capture_output=True, text=True)
            entry = {"way": way}
            if run.returncode:
                entry["error"] = run.stderr[-2000:]
            else:
                entry.update(json.loads(run.stdout.strip().splitlines()[-1]))
            report["runs"].append(entry)
    for way in args.ways:
        totals = [r["total_s"] for r in report["runs"] if r["way"] == way and "total_s" in r]
        if totals:
            report[f"{way}_best_s"] = min(totals)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
