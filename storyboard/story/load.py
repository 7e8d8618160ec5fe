"""Load a story: a path in; a validated ``Story`` out, or a ``StoryError`` with every problem.

Validation runs in three passes over the same parsed document, and all three report before
anything aborts: ``story.source`` (YAML structure, hostile input), ``story.schema`` through
pydantic (shapes, types, ranges; its errors worded by ``story.messages``), and
``story.semantics`` (cross-references, the file system, warnings). The semantic pass reads the
raw data defensively, so a typo in one panel does not hide an unknown character in another.

``with_model`` gives a validated story another model (`--model tiny-kolors`), checked like the
story's own; the story itself is never changed after validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from ..errors import Diagnostics, Problem, StoryError, UserError, kind_of
from .messages import problems_from_pydantic
from .schema import ModelSpec, StorySpec, model_shorthand
from .semantics import check_model_path, check_semantics
from .source import SourceDoc, read_source


@dataclass(frozen=True)
class Story:
    """A validated story and where it came from."""

    spec: StorySpec
    doc: SourceDoc
    base_dir: Path
    warnings: tuple[Problem, ...] = ()

    @property
    def name(self) -> str:
        return self.doc.name

    def resolve(self, relpath: str) -> Path:
        return (self.base_dir / Path(relpath).expanduser()).resolve()


def load_story(path: str | Path, *, check_files: bool = True) -> Story:
    """Read, parse and validate a story file. Raises ``StoryError`` with every problem."""
    doc = read_source(path)
    base_dir = Path(path).resolve().parent
    try:
        str(base_dir).encode("utf-8")
    except UnicodeEncodeError:
        # A folder named in another encoding (Latin-1, from an old disk): the panels' records,
        # the manifest and the cache keep the story's path as UTF-8 text, which cannot hold it.
        raise StoryError([Problem(doc.name, None, None, (), (
            f"the story's folder {os.fsencode(base_dir).decode('utf-8', 'backslashreplace')} "
            "has a name that is not UTF-8"), "rename the folder, or move the story into one "
            "whose path is UTF-8")]) from None
    return validate_doc(doc, base_dir, check_files=check_files)


def validate_doc(doc: SourceDoc, base_dir: Path, *, check_files: bool = True) -> Story:
    diag = Diagnostics()
    data = doc.data
    if not isinstance(data, dict):
        diag.add(doc.problem((), f"expected a mapping of story keys at the top, got "
                                 f"{kind_of(data)}", "a story starts with `version: 1`"))
        diag.raise_if_errors()
    for warning in doc.warnings:
        diag.add(warning)
    spec = None
    try:
        spec = StorySpec.model_validate(data)
    except ValidationError as exc:
        for problem in problems_from_pydantic(exc, doc):
            diag.add(problem)
    check_semantics(data, doc, base_dir, diag, check_files=check_files)
    diag.raise_if_errors()
    assert spec is not None
    return Story(spec=spec, doc=doc, base_dir=base_dir, warnings=tuple(diag.sorted()))


def with_model(story: Story, model: str, *, base_dir: Path | None = None) -> Story:
    """``story`` rendered by ``model`` instead (a built-in name, a repo id, a local path
    relative to ``base_dir``, default the working folder), validated like a story's own."""
    try:
        spec = ModelSpec.model_validate(model_shorthand(model))
    except ValidationError as exc:
        raise UserError(f"--model {model!r}: {exc.errors()[0]['msg']}") from None
    if spec.path:
        base = base_dir or Path.cwd()
        problems: list[str] = []
        check_model_path(spec.path, base, (), lambda loc, msg, hint=None: problems.append(
            msg + (f" ({hint})" if hint else "")))
        if problems:
            raise UserError(f"--model: {problems[0]}")
        spec = spec.model_copy(update={"path": str((base / spec.path).resolve())})
    return replace(story, spec=story.spec.model_copy(update={"model": spec}))


def with_warnings(story: Story, extra: list[Problem]) -> Story:
    """``story`` with more warnings (from compiling it), all in document order."""
    merged = sorted([*story.warnings, *extra], key=lambda p: (p.line or 0, p.col or 0))
    return replace(story, warnings=tuple(merged))

