"""GPU smoke of the train branch's trainer: full-size random SDXL, 1024², rank 16, bf16.
First run (2026-12-01, one H200, torch 2.11+cu130, 60 steps): 0.4255 s/step steady (2.35
steps/s), 14.13 GiB peak; loss 1.20 -> ~1.02. Run on the device machine from the repo root:
`python3 bench/train_smoke.py` ($OUT gets train_smoke.json). The trainer as it is now:
0.11 s/step, bench/train.py.
"""
import json, os, sys, time
from pathlib import Path
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from PIL import Image
from bench.gpu_models import build_sdxl
from storyboard.plan.jobs import ModelRef
from storyboard.training.jobs import TrainImage, TrainSettings, TrainJob, with_key
from storyboard.engine.training.trainer import train_lora
import hashlib

out = Path(os.environ.get("OUT", "/tmp/out"))
folder = Path("/tmp/sdxl")
t = time.perf_counter()
build_sdxl(folder)
print("built sdxl in", round(time.perf_counter() - t, 1), "s", flush=True)
torch.cuda.empty_cache()
pics = Path("/tmp/pics"); pics.mkdir(exist_ok=True)
images = []
for i, size in enumerate([(1024, 1024), (1024, 1024), (1216, 832), (832, 1216), (1024, 1024)]):
    p = pics / f"{i}.png"
    Image.new("RGB", size, (200, 30 + 40 * i, 30)).save(p)
    images.append(TrainImage(str(p), hashlib.sha256(p.read_bytes()).hexdigest(), size[0], size[1],
                             "ohwx girl, red"))
steps = int(os.environ.get("STEPS", "60"))
settings = TrainSettings(steps=steps, rank=16, alpha=16.0, learning_rate=1e-4, batch_size=1,
                         resolution=1024, seed=0, min_snr_gamma=5.0, train_text_encoder=False,
                         prior=None, checkpoint_every=10_000, mixed_precision="bf16")
job = with_key(TrainJob("mira", "ohwx", "girl", "sdxl", ModelRef("folder", str(folder), family="sdxl", dtype="bf16"),
               tuple(images), settings, 1.0))
times = []
def on_event(e):
    if e.get("event") == "train_step":
        times.append((time.perf_counter(), e["step"], e["loss"]))
    elif e.get("event") != "train_step":
        print(e, flush=True)
torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
res = train_lora(job, Path("/tmp/trainout"), device="cuda", dtype="bf16", on_event=on_event, resume=False)
total = time.perf_counter() - t
k = 10
steady = (times[-1][0] - times[k][0]) / (times[-1][1] - times[k][1])
report = {"steps": steps, "total_s": round(total, 1), "steady_s_per_step": round(steady, 4),
          "steady_steps_per_s": round(1 / steady, 2), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
          "loss_first": [round(x[2], 4) for x in times[:3]], "loss_last": [round(x[2], 4) for x in times[-3:]],
          "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
print(json.dumps(report), flush=True)
(out / "train_smoke.json").write_text(json.dumps(report, indent=1))
