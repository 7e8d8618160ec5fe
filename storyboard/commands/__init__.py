"""The library API: one verb per module, each returning a report that owns its exit code.

- ``build``: story -> panels, pages, PDF, manifest (``build``, ``BuildReport``);
- ``reroll``: candidates of one panel with other seeds (``reroll``, ``parse_seeds``);
- ``rerender``: the job a panel PNG records, rendered again (``rerender``);
- ``pin``: a seed written into the story (``pin``);
- ``clean``: cache entries and panel files no story needs (``clean``);
- ``common`` and ``rendering``: what they share (load + compile, rendering into the cache).

Torch is imported only when something is rendered: a build with nothing to do loads no model.
"""

from .build import BuildReport, build
from .clean import CleanReport, clean
from .common import default_out_dir, load_and_compile
from .pin import PinReport, pin
from .rerender import RerenderReport, rerender
from .reroll import RerollReport, parse_seeds, reroll

__all__ = ["build", "BuildReport", "clean", "CleanReport", "default_out_dir",
           "load_and_compile", "pin", "PinReport", "rerender", "RerenderReport", "reroll",
           "RerollReport", "parse_seeds"]
