"""The base of every story model and the value types several modules share.

In: nothing. Out: ``_Spec`` (the strict, frozen pydantic base: unknown keys refused, no type
coercion), ``Pixels`` (image sizes: a multiple of 8 in the allowed range) and ``Color``
(``#rgb`` or ``#rrggbb``), used by ``schema``, ``layout`` and ``records``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .. import constants as C
from .fields import COLOR_RE

Pixels = Annotated[int, Field(ge=C.MIN_SIZE_PX, le=C.MAX_SIZE_PX, multiple_of=8)]
Color = Annotated[str, Field(pattern=COLOR_RE.pattern)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
                              populate_by_name=True)
