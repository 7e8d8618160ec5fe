"""Training checkpoints: everything a killed training needs to go on as if it never stopped.

In: the trainable parameters (LoRA weights, by name), the optimizer, the gradient scaler (fp16
only), the generator that draws noise and timesteps (a CPU one on the CPU, a CUDA one on a GPU:
its state is a CPU byte tensor either way), the step, the losses so far and the
job's key. Out: ``checkpoints/step-NNNNNN/state.pt`` in the training's folder, in the layout
``training.store`` reads (so `plan` can say "partly trained (step N of M)" without torch): built
in a temporary folder and renamed when whole, the previous step's removed after, so a kill
leaves one complete checkpoint; and ``load_checkpoint``, which puts the newest back, or says why
it cannot (another job's checkpoint, an unreadable file).

The batch order needs no state of its own: ``training.buckets.BatchOrder`` gives the batch of
any step from the seed. Read back with ``torch.load(weights_only=True)``: a checkpoint holds
tensors, numbers and strings only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import os
import shutil
import tempfile

from ...training.store import (
    CHECKPOINT_RE, CHECKPOINTS, checkpoint_name, latest_checkpoint_step,
)

STATE = "state.pt"
FORMAT = 1


@dataclass
class Trainable:
    """What a checkpoint saves and restores."""

    parameters: dict[str, Any]  # qualified name -> trainable parameter (fp32)
    optimizer: Any
    generator: Any  # torch.Generator (on the training device): noise and timesteps
    scaler: Any = None  # torch.amp.GradScaler when training in fp16


@dataclass(frozen=True)
class Restored:
    step: int
    losses: tuple[float, ...]


def save_checkpoint(folder: Path, key: str, step: int, losses: list[float],
                    state: Trainable) -> Path:
    import torch

    blob = {
        "format": FORMAT, "job": key, "step": step, "losses": list(losses),
        "parameters": {n: p.detach().to("cpu", copy=True) for n, p in state.parameters.items()},
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
    }
    root = folder / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        torch.save(blob, work / STATE)
        with open(work / STATE, "rb") as fh:
            os.fsync(fh.fileno())
        if final.exists():  # the same step saved again (a resumed run): replace it
            shutil.rmtree(final)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for old in root.iterdir():
        if CHECKPOINT_RE.fullmatch(old.name) and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final / STATE


def load_checkpoint(folder: Path, key: str, state: Trainable) -> Restored | str:
    """Restore ``state`` from the folder's checkpoint; the reason when there is none to use."""
    import torch

    step = latest_checkpoint_step(folder)
    path = folder / CHECKPOINTS / checkpoint_name(step) / STATE if step is not None else None
    if path is None or not path.is_file():
        return "no checkpoint"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: start again
        return f"checkpoint {path} is unreadable ({type(exc).__name__})"
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        return f"checkpoint {path} is of another format"
    if blob.get("job") != key:
        return f"checkpoint {path} belongs to another training (job {blob.get('job')!s:.12})"
    if blob["generator"].numel() != state.generator.get_state().numel():
        return f"checkpoint {path} was made on another kind of device (its noise generator's)"
    saved = blob["parameters"]
    if saved.keys() != state.parameters.keys() or any(
            saved[n].shape != p.shape for n, p in state.parameters.items()):
        return f"checkpoint {path} does not match the model's LoRA layers"
    with torch.no_grad():
        for name, parameter in state.parameters.items():
            parameter.copy_(saved[name])
    # How the optimizer runs is this run's choice (a CUDA-graphed step needs it capturable),
    # not the checkpoint's: load_state_dict would take the saved flags.
    flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g}
             for g in state.optimizer.param_groups]
    state.optimizer.load_state_dict(blob["optimizer"])
    for group, kept in zip(state.optimizer.param_groups, flags):
        group.update(kept)
    state.generator.set_state(blob["generator"])
    if state.scaler is not None and blob["scaler"] is not None:
        state.scaler.load_state_dict(blob["scaler"])
    return Restored(step=int(blob["step"]), losses=tuple(float(x) for x in blob["losses"]))


def remove_checkpoint(folder: Path) -> None:
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
