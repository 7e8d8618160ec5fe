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
    # The modules this process imports, and no others: -P keeps a child from putting the
    # folder the writer runs storyboard in (a json.py there, say) first on its path.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs: list[subprocess.Popen] = []
    outs: list[bytes | None] = []
    try:
        with tempfile.TemporaryDirectory(prefix="storyboard-children-") as tmp:
            for n, order in enumerate(orders):
                path = Path(tmp) / f"{n}.json"
                path.write_text(json.dumps(order), "utf-8")
                try:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-P", "-m", module, str(path)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, env=env))
                except OSError:  # no processes here (a sandbox, a limit): the caller's work
                    break
            for proc in procs:
                out, _ = proc.communicate()
                outs.append(out if proc.returncode == 0 else None)
    except OSError:
        # No room for the orders (a full or read-only temporary folder): the orders without an
        # answer are the caller's, as where no process can start.
        pass
    finally:
        for proc in procs:  # none left running or unreaped, whatever happened
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs + [None] * (len(orders) - len(outs))
