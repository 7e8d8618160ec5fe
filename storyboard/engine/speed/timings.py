"""This machine's render timings per batch shape, kept beside the compile cache they describe.

In: a loaded model (family, dtype, device), whether its render has LoRAs and tuned kernels (other
compiled graphs), and each batch's seconds as it finishes. Out: ``Timings.measured()``, the
``plan.speed.ShapeTimings`` per batch shape that ``compile="auto"`` decides by
(``plan.speed.compile_pays``), and ``Timings.batch_done``, which records a finished batch.

The record is ``storyboard-timings.json`` in torch.compile's cache folder
(``TORCHINDUCTOR_CACHE_DIR``, set by ``environment.prepare``): a compiled shape's timings are
true only while that folder holds its kernels, so emptying it forgets both. Entries are keyed by
torch's version, the GPU's name, the family, the dtype and the compiled variant. It is read
like any input storyboard did not just make: a regular file, bounded, every field checked; a
damaged record counts as empty and is written again. Two builds may finish together: each write
is atomic and the last one wins; a lost measurement is measured again by the next build.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ...paths import atomic_write_text, open_regular
from ...plan.batches import Batch
from ...plan.speed import ShapeTimings, batch_shape, panel_steps

RECORD = "storyboard-timings.json"
MAX_BYTES = 1 << 20
VERSION = 1


def shape_name(shape: tuple) -> str:
    panels, width, height, cfg = shape
    return f"{panels}x{width}x{height}{'-cfg' if cfg else ''}"


def record_path() -> Path:
    from ...paths import compile_cache_dir

    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or compile_cache_dir()) / RECORD


def read_record(path: Path) -> dict:
    """The record's entries ({key: {shape: {field: seconds}}}); {} when missing or damaged."""
    try:
        with open_regular(path) as f:
            data = f.read(MAX_BYTES + 1)
        record = json.loads(data.decode("utf-8")) if len(data) <= MAX_BYTES else None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return {}
    entries = record.get("entries")
    if not isinstance(entries, dict):
        return {}
    fields = set(ShapeTimings.__dataclass_fields__)
    clean: dict = {}
    for key, shapes in entries.items():
        if not isinstance(key, str) or not isinstance(shapes, dict):
            continue
        for shape, values in shapes.items():
            if isinstance(shape, str) and isinstance(values, dict) and all(
                    k in fields and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and 0 <= v < 1e6 for k, v in values.items()):
                clean.setdefault(key, {})[shape] = {k: float(v) for k, v in values.items()}
    return clean


@dataclass
class Timings:
    """The timings of one model's renders on this machine, in one variant."""

    key: str
    path: Path = field(default_factory=record_path)
    compiled_now: set = field(default_factory=set)  # shapes compiled in this process
    batches: int = 0  # batches this process has finished with the model

    @classmethod
    def for_model(cls, model, *, loras: bool, tune: bool | None) -> Timings | None:
        """None where nothing is measured: off CUDA (storyboard only compiles there)."""
        if not model.device.startswith("cuda"):
            return None
        import torch

        gpu = torch.cuda.get_device_name(torch.device(model.device))
        variant = f"{'lora' if loras else 'plain'}-{'untuned' if tune is False else 'tuned'}"
        return cls("|".join([torch.__version__, gpu, model.family, model.dtype, variant]))

    def measured(self) -> dict[tuple, ShapeTimings]:
        out = {}
        for shape, values in read_record(self.path).get(self.key, {}).items():
            parsed = _parse_shape(shape)
            if parsed is not None:
                out[parsed] = ShapeTimings(**values)
        return out

    def batch_done(self, batch: Batch, seconds: float, *, compiled: bool,
                   built: bool = False) -> None:
        """Record a finished batch: ``seconds`` it took, ``compiled`` or not, and whether it
        ``built`` a compiled artifact (speed/artifacts.py): that is a cold compile's cost
        whatever the compile cache held, never what a later process pays to load it."""
        steps = panel_steps(batch)
        if steps <= 0 or seconds <= 0:
            return
        shape = batch_shape(batch)
        self.batches += 1
        first = self.batches == 1
        if first and not compiled:
            # A process's first batch also starts cuBLAS and cuDNN and loads their kernels
            # (about 4 s of the notebook's first SDXL panel on an H200): not a step's speed.
            return
        entries = read_record(self.path)
        shapes = entries.setdefault(self.key, {})
        now = ShapeTimings(**shapes.get(shape_name(shape), {}))
        per_step = seconds / steps
        if not compiled:
            now = replace(now, eager=_blend(now.eager, per_step))
        elif shape not in self.compiled_now:  # this process's first batch of it: compiles
            self.compiled_now.add(shape)
            steady = now.compiled if now.compiled is not None else now.eager
            # Without a steady speed to tell compiling from rendering by, the whole batch
            # (too much: the next compile here measures it better).
            extra = seconds if steady is None else max(0.0, seconds - steps * steady)
            warm = now.compiled_here and not built
            now = replace(now, **{"warm_compile" if warm else "cold_compile": round(extra, 2)})
        else:
            now = replace(now, compiled=_blend(now.compiled, per_step))
        shapes[shape_name(shape)] = {k: round(v, 6) if k in ("eager", "compiled") else v
                                     for k, v in asdict(now).items() if v is not None}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"version": VERSION, "entries": entries},
                                                    indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # a record that cannot be written is measured again next time, nothing more


def _blend(old: float | None, new: float) -> float:
    # The latest batches weigh most (a driver or clock change shows soon), but one slow batch
    # (another process on the GPU) does not undo what earlier ones measured.
    return new if old is None else 0.5 * old + 0.5 * new


def _parse_shape(name: str) -> tuple | None:
    cfg = name.endswith("-cfg")
    parts = name.removesuffix("-cfg").split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    panels, width, height = map(int, parts)
    return (panels, width, height, cfg)
