"""Warn about prompts longer than the model's text encoder reads.

In: a validated ``Story`` and its compiled jobs. Out: warnings (``Problem``s) naming the panel,
the token count and where the prompt gets cut, for every prompt or negative prompt over the
limit (``families``: 77 CLIP tokens for SD1.5/SDXL, 256 ChatGLM tokens for Kolors).

Only tokenizers already on disk are used (a built-in model's cache folder, a local diffusers
folder, the Hugging Face cache for a repo id); nothing is downloaded or built, and neither torch
nor transformers is imported on the common path: CLIP tokenizers saved as ``tokenizer.json`` go
through the ``tokenizers`` library, ChatGLM's through ``sentencepiece``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import WARNING, Problem
from ..families import BUILTINS, FAMILIES
from ..paths import builtin_model_folder
from ..story import Story
from .jobs import ModelRef, PanelJob

# (text) -> (content tokens, character offset where the token at `budget` starts, or None)
Counter = Callable[[str, int], tuple[int, int | None]]


def prompt_warnings(story: Story, jobs: list[PanelJob]) -> list[Problem]:
    if not jobs:
        return []
    found = _find_tokenizer(jobs[0].model)
    if found is None:
        return []
    family, count = found
    limit = FAMILIES[family].token_limit
    specials = FAMILIES[family].special_tokens
    budget = limit - specials
    problems = []
    for job in jobs:
        for field, text, label in (("prompt", job.prompt, "prompt"),
                                   ("negative", job.negative_prompt, "negative prompt")):
            if not text:
                continue
            n, cut = count(text, budget)
            if n <= budget:
                continue
            dropped = text[cut:].strip() if cut is not None else ""
            if len(dropped) > 60:
                dropped = dropped[:57] + "..."
            problems.append(story.doc.problem(
                ("panels", job.index, field),
                f"panel {job.panel!r}: the final {label} is {n + specials} tokens; "
                f"the {family} text encoder reads {limit}, so it ignores: {dropped!r}",
                "shorten the prompt or the style, or move details into fewer words",
                severity=WARNING))
    return problems


def _find_tokenizer(ref: ModelRef) -> tuple[str, Counter] | None:
    folder: Path | None = None
    family = ref.family
    if ref.kind == "builtin":
        builtin = BUILTINS[ref.ref]
        family = builtin.family
        folder = builtin_model_folder(builtin.name, builtin.recipe)
    elif ref.kind == "folder":
        folder = Path(ref.ref)
    elif ref.kind == "repo":
        folder = _repo_snapshot(ref)
    if folder is None or family is None:
        return None
    tok = folder / "tokenizer"
    kind = FAMILIES[family].tokenizer if family in FAMILIES else None
    if kind == "sentencepiece" and (tok / "tokenizer.model").is_file():
        return family, _sentencepiece_counter(tok / "tokenizer.model")
    if kind == "clip":
        if (tok / "tokenizer.json").is_file():
            return family, _tokenizers_counter(tok / "tokenizer.json")
        if (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file():
            return family, _clip_counter(tok)
    return None


def _repo_snapshot(ref: ModelRef) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("tokenizer/tokenizer.json", "tokenizer/vocab.json", "tokenizer/tokenizer.model"):
        hit = try_to_load_from_cache(ref.ref, name, revision=ref.revision)
        if isinstance(hit, str):
            return Path(hit).parent.parent
    return None


def _tokenizers_counter(path: Path) -> Counter:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))

    def count(text: str, budget: int) -> tuple[int, int | None]:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        n = len(encoding.ids)
        return n, encoding.offsets[budget][0] if n > budget else None

    return count


def _clip_counter(folder: Path) -> Counter:
    # Older repos ship only vocab.json + merges.txt; transformers reads them without torch.
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder))

    def count(text: str, budget: int) -> tuple[int, int | None]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        n = len(enc["input_ids"])
        return n, enc["offset_mapping"][budget][0] if n > budget else None

    return count


def _sentencepiece_counter(path: Path) -> Counter:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))

    def count(text: str, budget: int) -> tuple[int, int | None]:
        n = len(sp.encode(text))
        if n <= budget:
            return n, None
        # The shortest prefix that no longer fits: where the encoder stops reading.
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(sp.encode(text[:mid])) > budget:
                hi = mid
            else:
                lo = mid + 1
        return n, max(lo - 1, 0)

    return count
