"""Where loading a model from a local folder spends its time, in a new process.

In: a saved diffusers folder (bench/gpu_models.py) and its family. Out: one JSON object on
stdout: seconds to import torch and diffusers, to start CUDA, the notebook's load
(``from_pretrained(...).to("cuda")``), storyboard's ``load_model``, each component alone, and
the floor: the weights' bytes over the measured page-cache read and host-to-device bandwidths.

    python bench/load_profile.py FOLDER sdxl
"""

from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()


def lap(report: dict, name: str, since: float) -> float:
    now = time.perf_counter()
    report[name] = round(now - since, 3)
    return now


def main() -> None:
    from pathlib import Path

    folder, family = Path(sys.argv[1]), sys.argv[2]
    only = sys.argv[3:]  # names of the sections to run (default: all)
    report: dict = {}
    t = time.perf_counter()
    import torch
    t = lap(report, "import_torch_s", t)
    import diffusers  # noqa: F401
    from diffusers import KolorsPipeline, StableDiffusionXLPipeline
    t = lap(report, "import_diffusers_s", t)
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    t = lap(report, "cuda_init_s", t)
    cls = StableDiffusionXLPipeline if family == "sdxl" else KolorsPipeline
    files = sorted(folder.rglob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    report["weight_bytes"] = total
    report["files"] = {str(f.relative_to(folder)): f.stat().st_size for f in files}

    # Page-cache read bandwidth: every weight file read once into one reused buffer (after a
    # first read that warms the page cache, as the notebook's earlier runs would have).
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    for rep in range(2):
        t = time.perf_counter()
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass
        if rep:
            report["page_cache_read_gbps"] = round(total / (time.perf_counter() - t) / 1e9, 2)
    # Host-to-device bandwidth, pinned and pageable, 1 GiB.
    n = 1 << 30
    for kind, host in (("pinned", torch.empty(n, dtype=torch.uint8).pin_memory()),
                       ("pageable", torch.empty(n, dtype=torch.uint8))):
        dev = torch.empty(n, dtype=torch.uint8, device="cuda")
        dev.copy_(host)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        report[f"h2d_{kind}_gbps"] = round(3 * n / (time.perf_counter() - t) / 1e9, 2)
        del dev, host
    report["floor_s"] = round(total / 1e9 / min(report["page_cache_read_gbps"],
                                                report["h2d_pinned_gbps"]), 2)

    def timed(name: str, fn) -> None:
        if only and name not in only:
            return
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        report[name] = round(time.perf_counter() - start, 3)
        del out
        torch.cuda.empty_cache()

    timed("notebook_load_s",
          lambda: cls.from_pretrained(str(folder), torch_dtype=torch.float16).to("cuda"))
    timed("device_map_load_s", lambda: cls.from_pretrained(
        str(folder), torch_dtype=torch.float16, device_map="cuda"))

    def storyboard_load():
        from storyboard.engine.loading import load_model
        from storyboard.options import RuntimeOptions
        from storyboard.plan.jobs import ModelRef

        return load_model(ModelRef("folder", str(folder), family=family, dtype="fp16"),
                          RuntimeOptions(progress=False))

    timed("storyboard_load_s", storyboard_load)
    index = json.loads((folder / "model_index.json").read_text())
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        library, class_name = entry
        module = __import__(library if library != "kolors" else "diffusers.pipelines.kolors",
                            fromlist=[class_name])
        component = getattr(module, class_name, None)
        if component is None or not hasattr(component, "from_pretrained"):
            continue
        kwargs = {}
        if isinstance(component, type) and issubclass(component, torch.nn.Module):
            kwargs = {"torch_dtype": torch.float16, "device_map": "cuda"}
        timed(f"component_{name}_s", lambda: component.from_pretrained(
            str(folder / name), **kwargs))
    from safetensors.torch import load_file
    for f in files:
        if f.stat().st_size > 500e6:
            timed(f"safetensors_load_file_cuda_{f.parent.name}_s",
                  lambda: load_file(str(f), device="cuda"))
    report["process_s"] = round(time.perf_counter() - T0, 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
