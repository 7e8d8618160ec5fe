"""Names, versions and limits that more than one module relies on, kept in one place.

Nothing goes in or comes out: this module only defines constants.
"""

from __future__ import annotations

# Story file format versions this storyboard reads. Bump on incompatible changes and keep
# reading older versions.
SUPPORTED_FORMAT_VERSIONS = (1,)

# Bumped whenever the set or meaning of the fields a job hash covers changes, so old cache
# entries can never be mistaken for new ones.
JOB_HASH_VERSION = 1

SCHEMA_ID = "https://storyboard.dev/schemas/story-v1.json"

# Precisions a story or the command line may ask for ("auto" besides: fp16 on a GPU, fp32 on
# the CPU). fp8 is the opt-in FP8 UNet (engine/speed/apply.py).
DTYPES = ("fp16", "bf16", "fp32", "fp8")

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
# What all of a story's templates may cost together (plan/sandbox.py: Budget): rendering work,
# in units of about one value visited, and syntax-tree nodes compiled (Jinja compiles about ten
# thousand a second). Both many times what a thousand-panel story with a template per panel
# needs; each about a second at most.
MAX_TEMPLATE_WORK = 1_000_000
MAX_TEMPLATE_NODES = 100_000
MAX_SIZE_PX = 4096
MIN_SIZE_PX = 64
MAX_STEPS = 500
MAX_GUIDANCE = 50.0
MAX_LORA_WEIGHT = 10.0
MAX_SEED = 2**64 - 1

# --- training (`train:` sections and their reference pictures) ---
MAX_TRAIN_STEPS = 100_000
MAX_LORA_RANK = 256
MAX_LORA_ALPHA = 1024.0
MAX_TRAIN_BATCH = 64
MAX_TRAIN_RESOLUTION = 2048
MAX_MIN_SNR_GAMMA = 100.0
MAX_PRIOR_IMAGES = 1_000
MAX_TRAIN_IMAGES = 1_000  # pictures in one folder; past this the folder is refused
MAX_PICTURE_BYTES = 128 << 20  # one reference picture's file (a 50-megapixel PNG fits)
MAX_CAPTION_BYTES = 4 * MAX_TEXT_CHARS  # a caption .txt (UTF-8), before stripping
