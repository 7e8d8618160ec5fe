"""Trained LoRAs in the cache: where each lives, whether it is finished, and who needs it.

In: ``TrainJob``s (their keys and settings) and the cache root. Out: the folder and the file
names the trainer writes (``TrainedStore.folder``, ``LORA_FILE``, ...); what is on disk for a
job (``status``: "up to date", "to train" or "partly trained (step N of M)"; read from the
folder alone, never by loading weights); ``mark_done``, the trainer's last write; the
``LoraRef`` each trained character gains in its panels (``loras``); and the roots `clean` reads
(which keys each story's last training needed).

Layout under the cache root (``paths.trained_loras_dir``):
  trained/<key>/lora.safetensors        diffusers (PEFT) names: what storyboard loads
  trained/<key>/lora-kohya.safetensors  kohya (SGM) names, for WebUI and ComfyUI
  trained/<key>/checkpoints/step-<N>/   resumable state every `checkpoint_every` steps, each
                                        built under a temporary name and renamed when whole,
                                        so a `step-<N>` there is a complete checkpoint
  trained/<key>/done.json               ``TrainedRecord``, written last (atomically): the
                                        files above are finished, with their sha256 and size
  roots/trained/<story-id>.json         the keys a story's last training needed (``set_roots``)

A folder whose ``done.json`` is missing, damaged, names another key or step count, or whose
LoRA file is not the size it records, is not finished: it trains again (from its latest
checkpoint). Its key (``training.jobs``) is a hash of what changes the weights, so a finished
folder never needs to be compared with the story.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..output.cache import read_roots, write_roots
from ..paths import atomic_write_text, cache_root, read_bounded, sha256_of, trained_loras_dir
from ..plan.jobs import LoraRef
from ..story.records import RecordError, TrainedRecord, parse_json, validated
from .jobs import TrainJob

LORA_FILE = "lora.safetensors"
KOHYA_FILE = "lora-kohya.safetensors"
CHECKPOINTS = "checkpoints"
DONE_FILE = "done.json"
DONE_VERSION = 1
MAX_DONE_BYTES = 4096
MAX_TIMINGS = 200  # finished trainings read for an estimate: bounded, whatever the cache holds

UP_TO_DATE = "up to date"
TO_TRAIN = "to train"

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
CHECKPOINT_RE = re.compile(r"^step-([0-9]{1,9})$")


def latest_checkpoint_step(folder: Path) -> int | None:
    """The step of the newest complete checkpoint in a training's folder, or None (the
    trainer's ``state`` reads and writes them; a temporary folder never matches the name)."""
    try:
        with os.scandir(folder / CHECKPOINTS) as entries:
            steps = [int(m.group(1)) for e in entries if (m := CHECKPOINT_RE.fullmatch(e.name))]
    except OSError:
        return None
    return max(steps, default=None)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` steps: ``step-000250``."""
    return f"step-{step:06d}"


@dataclass(frozen=True)
class TrainedStore:
    root: Path  # the cache root

    @classmethod
    def default(cls) -> TrainedStore:
        return cls(cache_root())

    def folder(self, key: str) -> Path:
        if not KEY_RE.fullmatch(key):
            raise ValueError(f"not a training key: {key!r}")
        return trained_loras_dir(self.root) / key

    # -- one job -------------------------------------------------------------------------

    def finished(self, job: TrainJob) -> TrainedRecord | None:
        """The ``done.json`` of ``job``'s folder when it says the job is finished and the
        LoRA file is there at its recorded size; None otherwise."""
        folder = self.folder(job.key)
        path = folder / DONE_FILE
        try:
            record = validated(TrainedRecord, parse_json(
                read_bounded(path, MAX_DONE_BYTES), str(path), MAX_DONE_BYTES), str(path))
        except (OSError, RecordError):
            return None
        lora = record.files.get(LORA_FILE)
        if record.key != job.key or record.steps != job.settings.steps or lora is None:
            return None
        try:
            st = os.lstat(folder / LORA_FILE)
        except OSError:
            return None
        return record if stat.S_ISREG(st.st_mode) and st.st_size == lora.bytes else None

    def latest_checkpoint(self, key: str) -> int | None:
        """The step of the newest complete checkpoint in ``key``'s folder, or None."""
        return latest_checkpoint_step(self.folder(key))

    def status(self, job: TrainJob) -> str:
        """"up to date", "to train" or "partly trained (step N of M)", from the disk alone."""
        if self.finished(job) is not None:
            return UP_TO_DATE
        step = self.latest_checkpoint(job.key)
        if step:
            total = job.settings.steps
            return f"partly trained (step {min(step, total)} of {total})"
        return TO_TRAIN

    def mark_done(self, job: TrainJob, *, seconds_per_step: float | None = None,
                  device: str = "") -> TrainedRecord:
        """Record ``job``'s folder as finished: the sha256 and size of its LoRA files (the
        diffusers one required, the kohya one if written), and how fast it trained where (for
        the next build's estimate: ``seconds_per_step``). The trainer's last write."""
        folder = self.folder(job.key)
        files = {}
        for name in (LORA_FILE, KOHYA_FILE):
            path = folder / name
            digest = sha256_of(path)
            if digest is None:
                if name == LORA_FILE:
                    raise FileNotFoundError(f"{path}: no trained LoRA to record")
                continue
            files[name] = {"sha256": digest, "bytes": path.stat().st_size}
        data = {"version": DONE_VERSION, "key": job.key, "steps": job.settings.steps,
                "files": files, "storyboard": __version__, "family": job.family,
                "resolution": job.settings.resolution, "device": device.split(":")[0],
                "seconds_per_step": seconds_per_step}
        record = validated(TrainedRecord, data, str(folder / DONE_FILE))
        atomic_write_text(folder / DONE_FILE, json.dumps(data, indent=1))
        return record

    def loras(self, jobs: Iterable[TrainJob]) -> dict[str, LoraRef]:
        """The LoRA each character with a finished training gains in its panels (its
        ``train.weight``), by character id. A character whose LoRA is not trained, or whose
        file's bytes are not the ones recorded, is left out: train it (again) first."""
        out = {}
        for job in jobs:
            record = self.finished(job)
            if record is None:
                continue
            path = self.folder(job.key) / LORA_FILE
            digest = sha256_of(path)
            if digest != record.files[LORA_FILE].sha256:
                continue
            out[job.character] = LoraRef(job.character, str(path), digest, job.weight)
        return out

    def seconds_per_step(self, job: TrainJob, device: str) -> float | None:
        """How long a step of ``job`` took here before: the median over the finished trainings
        of its family and resolution on ``device``'s kind ("cuda", "cpu"), or None."""
        kind, seen = device.split(":")[0], []
        for key in sorted(self.keys())[:MAX_TIMINGS]:
            path = self.folder(key) / DONE_FILE
            try:
                record = validated(TrainedRecord, parse_json(
                    read_bounded(path, MAX_DONE_BYTES), str(path), MAX_DONE_BYTES), str(path))
            except (OSError, RecordError):
                continue
            if (record.seconds_per_step and record.device == kind
                    and record.family == job.family
                    and record.resolution == job.settings.resolution):
                seen.append(record.seconds_per_step)
        return statistics.median(seen) if seen else None

    # -- what `clean` needs --------------------------------------------------------------

    def set_roots(self, story: Path, keys: set[str]) -> None:
        """Record that ``story``'s training now needs ``keys`` (a run of its training does
        this, with the keys of every character it compiled)."""
        write_roots(self._roots(), story, keys)

    def live_keys(self) -> tuple[set[str], list[Path]]:
        """Keys some existing story's training still needs, and roots of stories gone."""
        return read_roots(self._roots())

    def _roots(self) -> Path:
        return self.root / "roots" / "trained"

    def keys(self) -> set[str]:
        """The keys of the trained folders on disk (finished or not)."""
        try:
            with os.scandir(trained_loras_dir(self.root)) as entries:
                return {e.name for e in entries
                        if KEY_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)}
        except OSError:
            return set()

    def size(self, key: str) -> int:
        """Bytes in ``key``'s folder (links not followed)."""
        total = 0
        for folder, _, files in os.walk(self.folder(key)):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
        return total

    def remove(self, key: str) -> int:
        """Delete ``key``'s folder; the bytes freed."""
        size = self.size(key)
        shutil.rmtree(self.folder(key), ignore_errors=True)
        return size


def trained_status(job: TrainJob) -> str:
    """``job``'s status in the default cache (``TrainedStore.status``)."""
    return TrainedStore.default().status(job)


def trained_loras(jobs: Iterable[TrainJob]) -> dict[str, LoraRef]:
    """The trained LoRA each character gains, from the default cache (``TrainedStore.loras``)."""
    return TrainedStore.default().loras(jobs)
