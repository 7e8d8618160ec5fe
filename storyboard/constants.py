"""Names, versions and limits that more than one module relies on, kept in one place.

Nothing goes in or comes out: this module only defines constants.
"""

from __future__ import annotations

# The story file format. Bump on incompatible changes and keep reading older versions.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

# Bumped whenever the set or meaning of the fields a job hash covers changes, so old cache
# entries can never be mistaken for new ones.
JOB_HASH_VERSION = 1

SCHEMA_FILE = "schemas/story.schema.json"
SCHEMA_ID = "https://storyboard.dev/schemas/story-v1.json"

# Built-in offline models: name -> (pipeline family, version of the recipe that builds them).
# The version is part of every job hash, so changing a recipe re-renders its panels.
BUILTIN_MODELS: dict[str, tuple[str, int]] = {
    "tiny-sdxl": ("sdxl", 2),
    "tiny-kolors": ("kolors", 2),
}
FAMILIES = ("sdxl", "kolors", "sd15")
DTYPES = ("auto", "fp16", "bf16", "fp32", "fp8")

# Prompt categories the course teaches, in the order a mapping prompt is joined.
PROMPT_CATEGORIES = (
    "subject",
    "medium",
    "style",
    "artist",
    "website",
    "resolution",
    "details",
    "color",
    "lighting",
)

# Size defaults by family (pixels); what a model was trained at.
DEFAULT_SIZE = {"sd15": 512, "sdxl": 1024, "kolors": 1024, None: 1024}
BUILTIN_DEFAULT_SIZE = 128

# --- limits on input: generous for any real story, small enough that hostile input is cheap ---
MAX_FILE_BYTES = 1 << 20  # 1 MiB of YAML is thousands of panels
MAX_NESTING = 32
MAX_NODES = 100_000  # after alias expansion: stops "billion laughs"
MAX_EXPANDED_CHARS = 2_000_000  # characters of all values, after alias expansion
MAX_SCALAR_CHARS = 10_000
MAX_NUMBER_CHARS = 64
MAX_PANELS = 1_000
MAX_TEXT_CHARS = 8_000  # a prompt, negative prompt or caption, before and after templating
MAX_TEMPLATE_CHARS = 8_000
MAX_SIZE_PX = 4096
MIN_SIZE_PX = 64
MAX_STEPS = 500
MAX_GUIDANCE = 50.0
MAX_LORA_WEIGHT = 10.0
MAX_SEED = 2**64 - 1
