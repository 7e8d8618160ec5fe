"""Phase 1, read and validate: a story file in; a validated ``Story`` out. No torch.

- ``source``: bytes -> plain data with line/column positions; hostile YAML refused;
- ``schema``: the format (pydantic models, ``StorySpec``), also `storyboard schema`;
- ``messages``: pydantic's errors in a writer's words;
- ``semantics``: cross-references, files, warnings;
- ``load``: the three passes together (``load_story``), and ``with_model`` for `--model`;
- ``edit``: change one value in the file in place (`storyboard pin`).
"""

from .load import Story, load_story, validate_doc, with_model, with_warnings
from .schema import StorySpec

__all__ = ["Story", "StorySpec", "load_story", "validate_doc", "with_model", "with_warnings"]
