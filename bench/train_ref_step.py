"""Minimal reference step, the way diffusers' DreamBooth-LoRA SDXL example trains: UNet bf16,
LoRA (peft, add_adapter) params fp32, AdamW, MSE on random latents; seconds per step.
First run (same machine): 0.3738 s/step with autocast, 0.3161 s/step plain bf16, 12.54 GiB peak.
The trainer was 1.14x slower than this step then; since, it replays the step as CUDA graphs
(0.11 s/step): bench/train.py measures it against the whole DreamBooth loop.
"""
import json, os, sys, time
import torch
from pathlib import Path
from diffusers import UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not Path("/tmp/sdxl/unet").is_dir():
    from bench.gpu_models import build_sdxl
    build_sdxl(Path("/tmp/sdxl"))
unet = UNet2DConditionModel.from_pretrained("/tmp/sdxl", subfolder="unet", torch_dtype=torch.bfloat16).to("cuda")
unet.requires_grad_(False)
unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                            target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
cast_training_params(unet, dtype=torch.float32)
params = [p for p in unet.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
lat = torch.randn(1, 4, 128, 128, device="cuda", dtype=torch.bfloat16)
enc = torch.randn(1, 77, 2048, device="cuda", dtype=torch.bfloat16)
added = {"text_embeds": torch.randn(1, 1280, device="cuda", dtype=torch.bfloat16),
         "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]], device="cuda", dtype=torch.bfloat16)}
res = {}
for mode in ("autocast", "plain"):
    ts = []
    for i in range(25):
        torch.cuda.synchronize(); t = time.perf_counter()
        noise = torch.randn_like(lat); tt = torch.randint(0, 1000, (1,), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(mode == "autocast")):
            pred = unet(lat + noise, tt, enc, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    res[mode] = round(sum(ts[5:]) / len(ts[5:]), 4)
res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
print(json.dumps(res))
(Path(os.environ.get("OUT", "/tmp")) / "ref.json").write_text(json.dumps(res))
