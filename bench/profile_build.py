"""A `storyboard build` under cProfile, for finding where a process's time goes.

In: the arguments of `storyboard build`. Out: the build's own output, and the 60 functions with
the most cumulative time written to the file named by ``STORYBOARD_PROFILE_OUT`` (default
``profile.txt``). Profiling slows Python-heavy parts; read it for proportions, not seconds.

    python bench/profile_build.py --json -o out story.yaml
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys

if __name__ == "__main__":
    profiler = cProfile.Profile()
    code = 0
    try:
        sys.argv[0] = "storyboard"
        # The imports are part of the process's wait: profiled too.
        profiler.runcall(lambda: __import__("storyboard.cli", fromlist=["main"]).main())
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
        with open(os.environ.get("STORYBOARD_PROFILE_OUT", "profile.txt"), "w") as f:
            f.write(text.getvalue())
    sys.exit(code)
