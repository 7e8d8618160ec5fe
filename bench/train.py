"""Training speed: storyboard's ``train_lora`` against diffusers' DreamBooth-LoRA SDXL loop.

In: the families to measure (``sdxl``, ``kolors``), built here as full-size random-weight
models (``gpu_models``) and saved, and a set of five pictures (three square, one wide, one
tall, 1024² class, one caption each). Out: ``<gpu>-<date>-train.json`` in ``--out`` (default
``$OUT``) and a markdown table on stdout. All in one process, one GPU, bf16, batch 1, rank 16,
alpha 16, learning rate 1e-4, min-SNR gamma 5, no prior preservation, 1024².

Per family:

* ``storyboard``: ``train_lora`` for ``--steps`` steps. Steady seconds per step over the steps
  after ``--warmup`` (compiling happens in the first few), the whole call's wall time (loading,
  encoding, compiling, training, saving), the projected wall time of 1,000 steps (the call
  less its steady steps, plus 1,000 less the warm-up steps at the steady rate), peak memory.
* ``reference``: the loop of diffusers' ``examples/dreambooth/train_dreambooth_lora_sdxl.py``
  (read at diffusers main 58eb52c, 2026-08) with the same settings, written out here (no
  accelerate: what it does is spelled out): UNet and text encoders in bf16, the VAE in float32
  ("always in float32 to avoid NaN losses"), ``unet.add_adapter(LoraConfig(r, lora_alpha=r,
  init_lora_weights="gaussian", target_modules=[to_k, to_q, to_v, to_out.0]))``; the script
  upcasts the LoRA to float32 with ``cast_training_params`` only for fp16, so under bf16 its
  LoRA weights and AdamW state stay bf16 (peft gives them the base layer's dtype);
  ``torch.optim.AdamW`` with its defaults (foreach on CUDA, not fused), weight decay 1e-4;
  constant LR scheduler; the UNet's forward under bf16 autocast with float32 outputs (what
  ``accelerator.prepare`` with ``mixed_precision="bf16"`` wraps it in); the dataset's pictures
  resized (shorter side) and randomly cropped to 1024x1024, loaded by a DataLoader (batch 1,
  shuffled) and moved to the GPU each step; per-picture captions, so the prompts are encoded
  at every step (the script's ``custom_instance_prompts`` branch, its own ``encode_prompt``:
  penultimate CLIP hidden states, pooled output of the second encoder); SDXL's time ids made
  at every step; ``loss.detach().item()`` for the progress bar at every step; gradient
  clipping at 1.0. Two variants: ``defaults`` (the VAE encodes every step, as the SDXL script
  always does) and ``cached`` (latents encoded once and the VAE freed, the ``--cache_latents``
  of diffusers' other DreamBooth-LoRA scripts, SD3/Flux and the advanced SDXL one, which the
  plain SDXL script lacks; ``latent_dist.sample()`` at every step as they do). ``cached`` is
  the fair comparison and the headline. Kolors has no DreamBooth script in diffusers; its
  reference is the same loop with the pipeline's own ``encode_prompt`` (ChatGLM).
* ``flops``: one training step's FLOPs (forward and backward, LoRA included) counted by
  ``torch.utils.flop_counter.FlopCounterMode`` at each bucket the pictures use, averaged as
  the pictures are; the bf16 dense matmul peak measured here (8192³ products); storyboard's
  and the reference's achieved TFLOP/s and their fraction of that peak.

Run on the GPU machine from the repository root::

    python bench/train.py sdxl kolors --levers --lever-steps 40 --warmup 15 \
        --steps 1000 --other-steps 200 --ref-steps 20

``--steps``: SDXL's storyboard steps (1,000 measures the target's wall time itself),
``--other-steps`` Kolors'. ``--levers`` (SDXL): ``train_lora`` first as it trained before
(autocast, a host sync per step, eager), then with each lever added in turn (no autocast, no
sync, CUDA graphs); ``--all-levers`` adds channels-last and regional compilation.
``--profile``: a torch.profiler table of five steady steps of the main run
(``<gpu>-<date>-train-profile-<family>.txt``; it slows those steps).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_models import BUILDERS  # noqa: E402
from speed import matmul_peak  # noqa: E402  (bf16 8192³ products, CUDA events)

SIZES = [(1024, 1024), (1216, 832), (1024, 1024), (832, 1216), (1024, 1024)]
CAPTIONS = ["ohwx girl, red dress, smiling", "ohwx girl walking in a street, wide shot",
            "ohwx girl, close-up portrait", "ohwx girl standing, full body",
            "ohwx girl sitting at a table"]
RANK, LR, GAMMA, SEED = 16, 1e-4, 5.0, 0
GIB = 2**30


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def pictures(folder: Path) -> list[tuple[Path, str, tuple[int, int]]]:
    """Five pictures of mixed aspect ratios with their captions (noise, so that nothing about
    them is special)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    out = []
    for i, ((w, h), caption) in enumerate(zip(SIZES, CAPTIONS)):
        path = folder / f"{i}.png"
        pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(path)
        out.append((path, caption, (w, h)))
    return out


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


# --- storyboard -----------------------------------------------------------------------------

def storyboard_run(family: str, folder: Path, pics, steps: int, warmup: int, work: Path,
                   profile: Path | None = None, **knobs) -> dict:
    from storyboard.engine.training import trainer
    from storyboard.plan.jobs import ModelRef
    from storyboard.training.jobs import TrainImage, TrainJob, TrainSettings, with_key

    images = tuple(TrainImage(str(p), hashlib.sha256(p.read_bytes()).hexdigest(), w, h, c)
                   for p, c, (w, h) in pics)
    settings = TrainSettings(steps=steps, rank=RANK, alpha=float(RANK), learning_rate=LR,
                             batch_size=1, resolution=1024, seed=SEED, min_snr_gamma=GAMMA,
                             train_text_encoder=False, prior=None, checkpoint_every=10**6,
                             mixed_precision="bf16")
    job = with_key(TrainJob("mira", "ohwx", "girl", family,
                            ModelRef("folder", str(folder), family=family, dtype="bf16"),
                            images, settings, 1.0))
    marks: dict = {}
    ticks: list[tuple[float, int, float]] = []
    prof = None
    if profile is not None:
        from torch.profiler import ProfilerActivity, profile as profiler

        prof = profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    window = (warmup + 5, warmup + 10)

    def on_event(e: dict) -> None:
        now = time.perf_counter()
        if e["event"] == "train_step":
            ticks.append((now, e["step"], e["loss"]))
            if prof is not None and e["step"] == window[0]:
                prof.start()
                marks["profile_from"] = now
            if prof is not None and e["step"] == window[1] and "profile_from" in marks:
                prof.stop()
                marks["profile_s"] = now - marks["profile_from"]
        elif e["event"] == "train_phase":
            marks[e["phase"]] = now

    free()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    result = trainer.train_lora(job, work, device="cuda", dtype="bf16", on_event=on_event,
                                resume=False, **knobs)
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base
    first = next(t for t in ticks if t[1] == warmup)
    last = ticks[-1]
    steady = (last[0] - first[0]) / (last[1] - first[1])
    out = {
        "knobs": {k: v for k, v in knobs.items()}, "steps": steps, "warmup_steps": warmup,
        "steady_s_per_step": round(steady, 4), "steady_steps_per_s": round(1 / steady, 3),
        "call_wall_s": round(total, 1),
        "load_s": round(marks["encoding"] - marks["loading"], 1),
        "encode_s": round(marks["training"] - marks["encoding"], 1),
        "first_step_s": round(ticks[0][0] - marks["training"], 1),
        "warmup_wall_s": round(first[0] - marks["training"], 1),
        "save_s": round(t0 + total - last[0], 1),
        "projected_1000_steps_wall_s": round(total - (steps - warmup) * steady
                                             + (1000 - warmup) * steady, 1),
        "peak_gib": round(peak / GIB, 2),
        # The CUDA graphs' private pool is reserved, not allocated, between replays.
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        "loss_first": [round(t[2], 4) for t in ticks[:3]],
        "loss_at_10_20_30": [round(t[2], 4) for t in ticks if t[1] in (10, 20, 30)],
        "loss_last": [round(t[2], 4) for t in ticks[-3:]],
        "final_loss_finite": bool(torch.isfinite(torch.tensor(result.final_loss))),
    }
    if steps >= 1000:
        out["measured_1000_steps_wall_s"] = round(total, 1)
    if prof is not None and "profile_s" in marks:
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
        events = prof.key_averages()
        cuda_total = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total",
                                                                         0)) for e in events)
        profile.write_text(table)
        out["profile_steps"] = window[1] - window[0]
        out["profile_wall_s"] = round(marks["profile_s"], 3)
        out["profile_gpu_busy_s"] = round(cuda_total / 1e6, 3)
    log(family, "storyboard", json.dumps(out))
    return out


# --- the reference loop ---------------------------------------------------------------------

def tokenize_prompt(tokenizer, prompt):
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def encode_prompt_sdxl(text_encoders, tokenizers, prompt):
    """The script's own ``encode_prompt``."""
    prompt_embeds_list = []
    for tokenizer, text_encoder in zip(tokenizers, text_encoders):
        ids = tokenize_prompt(tokenizer, prompt)
        out = text_encoder(ids.to(text_encoder.device), output_hidden_states=True,
                           return_dict=False)
        pooled = out[0]
        embeds = out[-1][-2]
        prompt_embeds_list.append(embeds.view(embeds.shape[0], embeds.shape[1], -1))
    return torch.concat(prompt_embeds_list, dim=-1), pooled.view(pooled.shape[0], -1)


class Pictures(torch.utils.data.Dataset):
    """The script's DreamBoothDataset for this case: every picture resized (shorter side to
    the resolution, bilinear) and randomly cropped to a square, once, at construction; its
    original size and crop corner kept for the time ids; its own caption."""

    def __init__(self, pics, size: int = 1024):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(SEED)
        self.items = []
        for path, caption, _ in pics:
            im = Image.open(path).convert("RGB")
            original = (im.height, im.width)
            scale = size / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)),
                           Image.Resampling.BILINEAR)
            top = int(rng.integers(0, im.height - size + 1))
            left = int(rng.integers(0, im.width - size + 1))
            im = im.crop((left, top, left + size, top + size))
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
            self.items.append(((x - 0.5) / 0.5, caption, original, (top, left)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(examples):
    return {"pixel_values": torch.stack([e[0] for e in examples]).float(),
            "prompts": [e[1] for e in examples], "original_sizes": [e[2] for e in examples],
            "crop_top_lefts": [e[3] for e in examples]}


def reference_models(family: str, folder: Path):
    from diffusers import DDPMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    pipe.to("cuda")
    pipe.vae.to(torch.float32)  # "The VAE is always in float32 to avoid NaN losses."
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.requires_grad_(False)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return pipe, scheduler


def reference_run(family: str, pipe, scheduler, pics, steps: int, warmup: int,
                  cache_latents: bool, fp32_lora: bool = False, fused: bool = False,
                  free_vae: bool = True) -> dict:
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from peft import LoraConfig

    device = torch.device("cuda")
    weight_dtype = torch.bfloat16
    unet, vae = pipe.unet, pipe.vae
    torch.manual_seed(SEED)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0,
                                init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if fp32_lora:
        cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-4,
                                  eps=1e-8, fused=True if fused else None)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=steps)
    dataset = Pictures(pics)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=True,
                                         collate_fn=collate, num_workers=0,
                                         generator=torch.Generator().manual_seed(SEED))
    if family == "sdxl":
        encoders = [pipe.text_encoder, pipe.text_encoder_2]
        tokenizers = [pipe.tokenizer, pipe.tokenizer_2]

        def compute_text_embeddings(prompts):
            with torch.no_grad():
                embeds, pooled = encode_prompt_sdxl(encoders, tokenizers, prompts)
            return embeds.to(device), pooled.to(device)
    else:  # Kolors: the pipeline's encode_prompt (ChatGLM)

        def compute_text_embeddings(prompts):
            with torch.no_grad():
                out = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=False)
            return out[0], out[2]

    def compute_time_ids(original_size, crops_coords_top_left):
        ids = torch.tensor([list(original_size + crops_coords_top_left + (1024, 1024))])
        return ids.to(device, dtype=weight_dtype)

    scaling = vae.config.scaling_factor
    latents_cache = None
    vae_freed = False
    if cache_latents:
        latents_cache = []
        for batch in loader:
            with torch.no_grad():
                pixels = batch["pixel_values"].to(device, non_blocking=True, dtype=vae.dtype)
                latents_cache.append(vae.encode(pixels).latent_dist)
        if free_vae:  # no validation prompt: the scripts free the VAE
            pipe.vae = None
            del vae
            vae_freed = True
        free()

    def forward(*args, **kwargs):  # accelerate's prepare: autocast, outputs to float32
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = unet(*args, **kwargs)
        return tuple(o.float() for o in out)

    times, losses = [], []
    free()
    base = torch.cuda.memory_allocated()
    unet.train()
    step = 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while step < steps:
        for i, batch in enumerate(loader):
            pixels = batch["pixel_values"].to(device)  # the prepared DataLoader's placement
            prompts = batch["prompts"]
            prompt_embeds, add_text_embeds = compute_text_embeddings(prompts)
            if cache_latents:
                model_input = latents_cache[i].sample()
            else:
                model_input = pipe.vae.encode(pixels.to(dtype=pipe.vae.dtype)).latent_dist.sample()
            model_input = (model_input * scaling).to(weight_dtype)
            noise = torch.randn_like(model_input)
            bsz = model_input.shape[0]
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,),
                                      device=model_input.device).long()
            noisy = scheduler.add_noise(model_input, noise, timesteps)
            add_time_ids = torch.cat([compute_time_ids(s, c) for s, c in
                                      zip(batch["original_sizes"], batch["crop_top_lefts"])])
            added = {"time_ids": add_time_ids, "text_embeds": add_text_embeds.repeat(1, 1)}
            model_pred = forward(noisy, timesteps, prompt_embeds.repeat(1, 1, 1),
                                 added_cond_kwargs=added, return_dict=False)[0]
            snr = compute_snr(scheduler, timesteps)
            weights = torch.stack([snr, GAMMA * torch.ones_like(timesteps)], dim=1).min(
                dim=1)[0] / snr
            loss = torch.nn.functional.mse_loss(model_pred.float(), noise.float(),
                                                reduction="none")
            loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * weights).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.detach().item())  # the progress bar's postfix
            step += 1
            times.append(time.perf_counter())
            if step >= steps:
                break
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    steady = (times[-1] - times[warmup - 1]) / (steps - warmup)
    out = {"cache_latents": cache_latents, "lora_dtype": str(params[0].dtype),
           "adamw": "fused" if fused else "foreach (torch default)", "vae_freed": vae_freed,
           "steps": steps, "warmup_steps": warmup, "steady_s_per_step": round(steady, 4),
           "steady_steps_per_s": round(1 / steady, 3), "loop_wall_s": round(times[-1] - t0, 1),
           "projected_1000_steps_loop_s": round(times[warmup - 1] - t0
                                                + (1000 - warmup) * steady, 1),
           "peak_gib_above_models": round(peak / GIB, 2),
           "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
           "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
           "loss_first": [round(x, 4) for x in losses[:3]],
           "loss_last": [round(x, 4) for x in losses[-3:]]}
    log(family, "reference", json.dumps(out))
    return out


def remove_lora(unet) -> None:
    unet.delete_adapters("default")


# --- FLOPs ----------------------------------------------------------------------------------

def step_flops(pipe, family: str) -> dict:
    """FLOPs of one training step (forward, backward) at each bucket the pictures use, with a
    rank-16 LoRA on the UNet, counted by FlopCounterMode."""
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    text = 2048 if family == "sdxl" else 4096
    tokens = 77 if family == "sdxl" else 256
    pooled = 1280 if family == "sdxl" else 4096
    counts = {}
    for w, h in sorted(set(SIZES)):
        bucket = {(1024, 1024): (1024, 1024), (1216, 832): (1216, 832),
                  (832, 1216): (832, 1216)}[(w, h)]
        x = torch.randn(1, 4, bucket[1] // 8, bucket[0] // 8, device="cuda",
                        dtype=torch.bfloat16)
        kw = {"encoder_hidden_states": torch.randn(1, tokens, text, device="cuda",
                                                   dtype=torch.bfloat16),
              "added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, device="cuda",
                                                               dtype=torch.bfloat16),
                                    "time_ids": torch.tensor([[h, w, 0, 0, h, w]],
                                                             device="cuda",
                                                             dtype=torch.bfloat16)}}
        counter = FlopCounterMode(display=False)
        with counter:
            out = unet(x, torch.tensor([500], device="cuda"), **kw, return_dict=False)[0]
            out.float().pow(2).mean().backward()
        counts[f"{w}x{h}"] = counter.get_total_flops()
        unet.zero_grad(set_to_none=True)
    remove_lora(unet)
    mean = sum(counts[f"{w}x{h}"] for w, h in SIZES) / len(SIZES)
    return {"tflop_per_step_by_bucket": {k: round(v / 1e12, 3) for k, v in counts.items()},
            "tflop_per_step_mean_over_pictures": round(mean / 1e12, 3),
            "tflop_per_step_1024": round(counts["1024x1024"] / 1e12, 3)}


# --- main -----------------------------------------------------------------------------------

def family_section(family: str, args, report: dict, save) -> None:
    work = Path(args.work)
    folder = work / family
    t = time.perf_counter()
    BUILDERS[family](folder)
    free()
    log(family, f"built and saved in {time.perf_counter() - t:.0f} s")
    pics = pictures(work / "pictures")
    section = report.setdefault(family, {})

    def runs(name, **knobs):
        from storyboard.engine.training import trainer
        forced = {k: knobs.pop(k) for k in ("FORCE_AUTOCAST", "SYNC_EVERY_STEP",
                                            "COMPILED_BLOCKS") if k in knobs}
        saved = {k: getattr(trainer, k) for k in forced}
        for k, v in forced.items():
            setattr(trainer, k, v)
        try:
            steps = knobs.pop("steps", args.lever_steps)
            section.setdefault("levers", {})[name] = storyboard_run(
                family, folder, pics, steps, args.warmup, work / f"out-{name}", **knobs)
        except Exception as exc:  # noqa: BLE001 - a lever that fails is a finding
            section.setdefault("levers", {})[name] = {"error": repr(exc)[:500]}
            log(family, name, "failed", repr(exc)[:500])
        finally:
            for k, v in saved.items():
                setattr(trainer, k, v)
        save()

    if args.levers and family == "sdxl":
        eager = {"cuda_graphs": False, "offload_frozen": False}
        if not args.quick_levers:
            runs("before: autocast, sync per step, eager", FORCE_AUTOCAST=True,
                 SYNC_EVERY_STEP=True, **eager)
            runs("no autocast", SYNC_EVERY_STEP=True, **eager)
        runs("no autocast, no sync", **eager)
        runs("no autocast, no sync, CUDA graphs", cuda_graphs=True, offload_frozen=False,
             steps=args.lever_steps + 30)
        if args.all_levers:
            runs("no autocast, no sync, channels-last", channels_last=True, **eager)
            runs("no autocast, no sync, channels-last, compile blocks+resnets", compile=True,
                 channels_last=True, COMPILED_BLOCKS=("BasicTransformerBlock", "ResnetBlock2D"),
                 steps=args.lever_steps + 30, **eager)
        if args.all_levers:
            runs("no autocast, no sync, CUDA graphs, channels-last", cuda_graphs=True,
                 channels_last=True, steps=args.lever_steps + 30)

    if args.steps:
        from storyboard.engine.training import trainer
        trainer.COMPILED_BLOCKS = tuple(args.blocks.split(","))
        steps = args.steps if family == "sdxl" else args.other_steps
        profile = Path(args.out) / f"{report['tag']}-train-profile-{family}.txt" \
            if args.profile else None
        try:
            section["storyboard"] = storyboard_run(family, folder, pics, steps,
                                                   args.warmup, work / "out", profile=profile)
        except Exception as exc:  # noqa: BLE001 - keep what the others measure
            section["storyboard"] = {"error": repr(exc)[:500]}
            log(family, "storyboard failed", repr(exc)[:500])
        save()

    if args.ref_steps:
        pipe, scheduler = reference_models(family, folder)
        variants = [("flops", lambda: step_flops(pipe, family)),
                    ("reference_defaults", lambda: reference_run(
                        family, pipe, scheduler, pics, args.ref_steps, 5, cache_latents=False))]
        if args.ref_fp32:  # before the VAE is freed; its peak memory counts the VAE
            variants.append(("reference_cached_fp32_lora_fused_vae_kept", lambda: reference_run(
                family, pipe, scheduler, pics, args.ref_steps, 5, cache_latents=True,
                fp32_lora=True, fused=True, free_vae=False)))
        variants.append(("reference_cached", lambda: reference_run(
            family, pipe, scheduler, pics, args.ref_steps, 5, cache_latents=True)))
        for name, run in variants:
            try:
                section[name] = run()
            except Exception as exc:  # noqa: BLE001 - keep what the others measure
                section[name] = {"error": repr(exc)[:500]}
                log(family, name, "failed", repr(exc)[:500])
            if name != "flops" and "default" in getattr(pipe.unet, "peft_config", {}):
                remove_lora(pipe.unet)
            save()
        del pipe, scheduler
        free()

    peak = report["bf16_matmul_peak_tflops"]
    flops = section.get("flops", {}).get("tflop_per_step_mean_over_pictures")
    sb = section.get("storyboard")
    if flops and sb and "steady_s_per_step" in sb and all(
            "steady_s_per_step" in section.get(n, {}) for n in ("reference_defaults",
                                                                 "reference_cached")):
        ref_flops = section["flops"]["tflop_per_step_1024"]  # the script trains 1024x1024
        sb["tflops"] = round(flops / sb["steady_s_per_step"], 1)
        sb["fraction_of_bf16_peak"] = round(sb["tflops"] / peak, 3)
        for name in ("reference_defaults", "reference_cached"):
            ref = section[name]
            ref["unet_tflops"] = round(ref_flops / ref["steady_s_per_step"], 1)
            ref["fraction_of_bf16_peak"] = round(ref["unet_tflops"] / peak, 3)
            section[f"speedup_vs_{name}"] = round(ref["steady_s_per_step"]
                                                  / sb["steady_s_per_step"], 2)
            section[f"peak_memory_ratio_vs_{name}"] = round(sb["peak_gib"] / ref["peak_gib"], 2)
            section[f"peak_reserved_ratio_vs_{name}"] = round(
                sb["peak_reserved_gib"] / ref["peak_reserved_gib"], 2)
    save()


def table(report: dict) -> str:
    rows = ["| model | loop | s/step | steps/s | 1000 steps | peak GiB (allocated / reserved) "
            "| TFLOP/s (of bf16 peak) |", "|---|---|---|---|---|---|---|"]
    for family in ("sdxl", "kolors"):
        section = report.get(family, {})
        for name, label in (("storyboard", "storyboard `train_lora`"),
                            ("reference_cached", "diffusers example, cached latents"),
                            ("reference_defaults", "diffusers example, defaults")):
            r = section.get(name)
            if not r:
                continue
            wall = r.get("measured_1000_steps_wall_s", r.get("projected_1000_steps_wall_s",
                                                             r.get("projected_1000_steps_loop_s")))
            tf = r.get("tflops", r.get("unet_tflops"))
            frac = r.get("fraction_of_bf16_peak")
            rows.append(f"| {family} | {label} | {r['steady_s_per_step']:.3f} | "
                        f"{r['steady_steps_per_s']:.2f} | {wall:.0f} s | {r['peak_gib']:.1f} / "
                        f"{r['peak_reserved_gib']:.1f} | "
                        + (f"{tf:.0f} ({frac:.0%}) |" if tf else "|"))
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("families", nargs="+", choices=sorted(BUILDERS))
    ap.add_argument("--steps", type=int, default=1000, help="SDXL's")
    ap.add_argument("--other-steps", type=int, default=200, help="Kolors'")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--ref-steps", type=int, default=40)
    ap.add_argument("--ref-fp32", action="store_true")
    ap.add_argument("--levers", action="store_true")
    ap.add_argument("--lever-steps", type=int, default=50)
    ap.add_argument("--all-levers", action="store_true")
    ap.add_argument("--quick-levers", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--blocks", default="BasicTransformerBlock",
                    help="the classes the trainer compiles, comma-separated")
    ap.add_argument("--work", default="/tmp/train-bench")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name().split()[-1].lower()
    tag = f"nvidia-{gpu}-{date.today().isoformat()}"
    import diffusers
    import peft

    report = {"tag": tag, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "peft": peft.__version__,
              "settings": {"batch": 1, "resolution": 1024, "rank": RANK, "alpha": RANK,
                           "lr": LR, "min_snr_gamma": GAMMA, "dtype": "bf16",
                           "pictures": [f"{w}x{h}" for w, h in SIZES]},
              "bf16_matmul_peak_tflops": round(matmul_peak(), 1)}
    path = Path(args.out) / f"{tag}-train.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=1))

    for family in args.families:
        family_section(family, args, report, save)
    save()
    print(table(report), flush=True)


if __name__ == "__main__":
    main()
