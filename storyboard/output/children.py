"""Work done side by side in new interpreters, each running one of storyboard's modules.

In: a module (run as ``python -m module ORDER``) and one order per child, any JSON value,
which the child reads from the file named ``ORDER``. Out: each child's standard output, in
order; None for a child that failed or could not be started (its work is then the caller's to
do here). Used where fontTools would hold this interpreter's lock for seconds while a build's
panels render (``fonts.warm_metrics``, ``pdf.truetype_subsets``). New interpreters, never
``multiprocessing``, which would import the caller's main script again in each child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_in_children(module: str, orders: list) -> list[bytes | None]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="storyboard-children-") as tmp:
        for n, order in enumerate(orders):
            path = Path(tmp) / f"{n}.json"
            path.write_text(json.dumps(order), "utf-8")
            try:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", module, str(path)], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env))
            except OSError:  # no processes here (a sandbox, a limit): the rest are the caller's
                break
        outs: list[bytes | None] = []
        for proc in procs:
            out, _ = proc.communicate()
            outs.append(out if proc.returncode == 0 else None)
    return outs + [None] * (len(orders) - len(outs))
