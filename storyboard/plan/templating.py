"""A Jinja environment that a hostile story cannot escape or stall.

In: template text from a story (the `templates` section and panel prompts). Out: rendered text,
or a ``TemplateProblem`` saying what went wrong, in the template's own words.

Stories are untrusted input, so on top of Jinja's ``SandboxedEnvironment`` (no access to Python
internals, strict undefined variables):
- no statements that loop, assign, define macros or reach other files (`for`, `set`, `macro`,
  `call`, `include`, `import`, `extends`, `block`): a prompt template is an expression with
  `if`s, which is all a prompt needs and keeps evaluation cost linear in the template's size;
- only a whitelist of filters, globals and methods, none of which can build huge values
  (no `center`, `format`, `%`, `range`, `lipsum`); `*` on text or lists is capped;
- rendered text is capped at ``MAX_TEXT_CHARS`` while it streams out.
"""

from __future__ import annotations

import operator
import re
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from .. import constants as C
from ..errors import did_you_mean

_FORBIDDEN_NODES = {
    nodes.For: "`for` loops",
    nodes.Assign: "`set`",
    nodes.AssignBlock: "`set` blocks",
    nodes.Macro: "macros",
    nodes.CallBlock: "`call` blocks",
    nodes.Include: "`include`",
    nodes.Import: "`import`",
    nodes.FromImport: "`import`",
    nodes.Extends: "`extends`",
    nodes.Block: "`block`",
    nodes.FilterBlock: "`filter` blocks",
    nodes.With: "`with` blocks",
    nodes.Scope: "scopes",
}
_ALLOWED_FILTERS = (
    "map", "select", "reject", "selectattr", "rejectattr", "first", "last", "length",
    "count", "lower", "upper", "title", "capitalize", "trim", "default", "d", "list", "sort",
    "unique", "reverse", "string", "int", "float", "round", "abs", "min", "max",
    "wordcount",
)
_ALLOWED_METHODS = {
    str: {"lower", "upper", "title", "capitalize", "strip", "lstrip", "rstrip", "startswith",
          "endswith", "split", "replace", "count", "find"},
    dict: {"get", "keys", "values", "items"},
    list: {"index", "count"},
}


class TemplateProblem(Exception):
    """A template that cannot be used; ``line`` is relative to the template, when known."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.hint = hint


def _size(value: Any, depth: int = 0) -> int:
    """Roughly how many characters ``value`` stands for (what joining it would build)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)) and depth < 4:
        return len(value) + sum(_size(v, depth + 1) for v in value[:10_000])
    return 8


def _no_callables(value: Any, depth: int = 0) -> Any:
    """Refuse a method that was named but not called (``prompt.split``): printed, it would put
    a memory address, different in every run, into a prompt."""
    if isinstance(value, jinja2.Undefined):
        return value  # Jinja's own error says what is undefined, when it is printed
    if callable(value):
        name = getattr(value, "__name__", "this")
        raise SecurityError(f"{name!r} is a method: call it ({name}()) or leave it out")
    if isinstance(value, (list, tuple)) and depth < 4:
        for item in value[:10_000]:
            _no_callables(item, depth + 1)
    if isinstance(value, dict) and depth < 4:
        for item in list(value.values())[:10_000]:
            _no_callables(item, depth + 1)
    return value


def _checked(text_filter: Any) -> Any:
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        return text_filter(_no_callables(value), *args, **kwargs)

    return checked


def _safe_string(value: Any) -> str:
    return str(_no_callables(value))


def _safe_join(value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value) if not isinstance(value, str) else list(value)
    if attribute is not None:
        items = [_ENV.getitem(item, attribute) for item in items]
    _no_callables(items)
    if sum(_size(v) for v in items) + len(str(d)) * len(items) > C.MAX_TEXT_CHARS:
        raise SecurityError("join would build text beyond the length limit")
    return str(d).join(str(v) for v in items)


def _safe_sum(value: Any, attribute: Any = None, start: Any = 0) -> Any:
    items = list(value)
    if attribute is not None:
        items = [_ENV.getitem(item, attribute) for item in items]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items) \
            or not isinstance(start, (int, float)):
        raise SecurityError("sum() adds numbers only")
    return sum(items, start)


def _safe_truncate(value: Any, length: int = 255, killwords: bool = False, end: str = "...",
                   leeway: int = 0) -> str:
    text = str(value)
    length = max(int(length), len(end))
    if len(text) <= length:
        return text
    cut = text[: length - len(end)]
    if not killwords and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut + end


def _safe_replace(value: str, old: str, new: str, count: int = -1) -> str:
    n = value.count(old) if old else len(value) + 1
    if count >= 0:
        n = min(n, count)
    if len(value) + n * (len(new) - len(old)) > C.MAX_TEXT_CHARS:
        raise SecurityError("replace() would build text beyond the length limit")
    return value.replace(old, new, count)


class StoryEnvironment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "//"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False,
                         keep_trailing_newline=False, finalize=_no_callables)
        self.filters = {name: self.filters[name] for name in _ALLOWED_FILTERS}
        self.filters["replace"] = lambda value, old, new, count=-1: _safe_replace(
            str(value), str(old), str(new), count)
        self.filters["join"] = _safe_join
        self.filters["sum"] = _safe_sum
        self.filters["string"] = _safe_string
        self.filters["truncate"] = _safe_truncate
        # Every filter that turns its value into text refuses an uncalled method first.
        for name in ("lower", "upper", "title", "capitalize", "trim", "wordcount", "truncate",
                     "replace"):
            self.filters[name] = _checked(self.filters[name])
        self.globals = {}
        self.tests = dict(self.tests)

    def call_binop(self, context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "%" and isinstance(left, str):
            raise SecurityError("'%' string formatting is not allowed in templates")
        if operator_name == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                    and right * abs(left).bit_length() > 4096:
                raise SecurityError("the power is too large")
            if isinstance(right, (int, float)) and abs(right) > 1024:
                raise SecurityError("the exponent is too large")
            return operator.pow(left, right)
        if operator_name == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                        and max(_size(seq), 1) * n > C.MAX_TEXT_CHARS:
                    raise SecurityError("repetition would build text beyond the length limit")
            if isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > 8192:
                raise SecurityError("the product is too large")
            return operator.mul(left, right)
        return super().call_binop(context, operator_name, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if callable(value):
            return any(isinstance(obj, t) and attr in names
                       for t, names in _ALLOWED_METHODS.items())
        return True

    def call(self, __context, __obj, *args, **kwargs):  # noqa: N807 - Jinja's signature
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        if owner is None or not any(isinstance(owner, t) and name in names
                                    for t, names in _ALLOWED_METHODS.items()):
            raise SecurityError(f"calling {name or 'this'!r} is not allowed in templates")
        if name == "replace" and isinstance(owner, str):
            return _safe_replace(owner, *args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)


_ENV = StoryEnvironment()


@lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    """Parse, vet and compile a template once per distinct text."""
    if len(source) > C.MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"template is {len(source):,} characters; the limit is "
                              f"{C.MAX_TEMPLATE_CHARS:,}")
    try:
        tree = _ENV.parse(source)
        for node_type, what in _FORBIDDEN_NODES.items():
            for node in tree.find_all(node_type):
                raise TemplateProblem(f"{what} are not allowed in story templates", node.lineno,
                                      "templates are expressions: use filters such as "
                                      "`map(attribute='phrase') | join(sep)` instead")
        return _ENV.from_string(tree)
    except jinja2.TemplateAssertionError as exc:
        # Unknown filters and tests: the whitelist is the list of what exists.
        name = re.search(r"named '([^']+)'", exc.message or "")
        known = _ENV.filters if "filter" in (exc.message or "") else _ENV.tests
        hint = did_you_mean(name.group(1), known) if name else None
        raise TemplateProblem(f"{exc.message}", exc.lineno,
                              hint or f"available: {', '.join(sorted(known))}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from None
    except RecursionError:
        raise TemplateProblem("template is nested too deeply") from None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def render(source: str, context: dict[str, Any]) -> str:
    """Render ``source`` with ``context``; raise ``TemplateProblem`` on any failure."""
    template = compile_template(source)
    out: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > C.MAX_TEXT_CHARS:
                raise TemplateProblem(f"template output is longer than {C.MAX_TEXT_CHARS:,} "
                                      "characters")
            out.append(chunk)
    except jinja2.UndefinedError as exc:
        name, attribute = _undefined_name(exc)
        if attribute:
            # Which mapping was meant is not in the error; any key one level down will do.
            keys = {k for v in context.values() if isinstance(v, dict) for k in v}
            raise TemplateProblem(f"{name!r} is undefined here", _template_line(exc),
                                  did_you_mean(name, keys)) from None
        hint = did_you_mean(name, context) if name else None
        raise TemplateProblem(f"{exc.message}", _template_line(exc),
                              hint or f"available: {', '.join(sorted(context))}") from None
    except SecurityError as exc:
        raise TemplateProblem(f"not allowed: {exc}", _template_line(exc)) from None
    except TemplateProblem:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, RecursionError,
            AttributeError, KeyError, IndexError, AssertionError, MemoryError) as exc:
        raise TemplateProblem(f"template failed: {exc}", _template_line(exc)) from None
    return "".join(out)


def _undefined_name(exc: jinja2.UndefinedError) -> tuple[str | None, bool]:
    """(the undefined name, whether it was an attribute/key of something defined)."""
    msg = exc.message or ""
    if msg.startswith("'") and "' is undefined" in msg:
        return msg[1:msg.index("' is undefined")], False
    if "has no attribute '" in msg:
        return msg.split("has no attribute '", 1)[1].rstrip("'"), True
    return None, False


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception came from, found in the traceback Jinja rewrites."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
