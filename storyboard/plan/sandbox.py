"""The Jinja environment story templates run in: what they may reach, and what they may cost.

In: the values a template is rendered with, and a ``Budget``. Out: ``ENV``, a
``StoryEnvironment``: Jinja's ``SandboxedEnvironment`` (no Python internals) narrowed to a
whitelist of filters, tests and methods, in which no operation can take time or memory out of
proportion to the story.

Templates have no loops (``templating`` refuses `for`, `set`, macros), so each operation in a
template runs once per render; what can still cost is an operation on a large value, or a value
built large. So:
- every operation that takes time in proportion to the size of what it is given (printing,
  `~`, `+`, `*`, comparisons and `in`, slices, filters, tests, methods, and each item a `map`
  or `select` passes on) first counts what it will touch against the story's ``Budget``;
- the operations that build text or lists (printing, `~`, `+`, `*`, `|string`, `|join`, the
  text filters) refuse to build more than a prompt may hold, ``MAX_TEXT_CHARS``, however
  deeply the value nests.
Counting never recurses and stops as soon as the count is over, so it costs no more than what
it allows. Comparisons, `~` and slices compile to plain Python in Jinja, where the sandbox
cannot see them; ``_CodeGenerator`` routes them through the environment.
"""

from __future__ import annotations

import math
import operator
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, operators
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from .. import constants as C

ALLOWED_FILTERS = (
    "map", "select", "reject", "selectattr", "rejectattr", "first", "last", "length",
    "count", "lower", "upper", "title", "capitalize", "trim", "default", "d", "list", "sort",
    "unique", "reverse", "string", "int", "float", "round", "abs", "min", "max",
    "wordcount",
)
# Filters that look at their value's size or first item only: the cost of a call, whatever
# they are given.
_CONSTANT_TIME = {"first", "length", "count", "default", "d", "int", "float", "round", "abs"}
# Filters that turn their value into text, counting as they go (``text_of``).
_TEXT_FILTERS = ("lower", "upper", "title", "capitalize", "trim", "wordcount")
_COUNTING = {"string", "join", "truncate", "replace", *_TEXT_FILTERS}
_ALLOWED_METHODS = {
    str: {"lower", "upper", "title", "capitalize", "strip", "lstrip", "rstrip", "startswith",
          "endswith", "split", "replace", "count", "find"},
    dict: {"get", "keys", "values", "items"},
    list: {"index", "count"},
}
_CHARS_PER_UNIT = 64  # copying or scanning text is this much cheaper than visiting a value
_CALL = 5  # what Jinja takes to call a filter or test, in values visited


class WorkLimit(SecurityError):
    """A story's templates did more work, between them, than its ``Budget`` allows."""


class Budget:
    """What a story's templates may cost between them: ``work`` in units of about one value
    visited, one item passed on or 64 characters scanned while rendering, and ``nodes`` of
    syntax tree compiled (Jinja takes a fraction of a millisecond for each; a template costs ten
    more). Shared by every render of one story, so a thousand panels cannot multiply it."""

    def __init__(self, work: int | None = None, nodes: int | None = None):
        self.work = C.MAX_TEMPLATE_WORK if work is None else work
        self.nodes = C.MAX_TEMPLATE_NODES if nodes is None else nodes
        self.left = self.work
        self.nodes_left = self.nodes
        self.compiled: set[str] = set()  # template texts already paid for

    @property
    def exhausted(self) -> bool:
        return self.left < 0 or self.nodes_left < 0

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise WorkLimit(f"the story's templates do more work than the limit allows "
                            f"({self.work:,} steps)")

    def compile(self, source: str, nodes: int) -> None:
        """Pay for compiling ``source`` (``nodes`` big), once per story."""
        if source in self.compiled:
            return
        self.compiled.add(source)
        self.nodes_left -= nodes + 10
        if self.nodes_left < 0:
            raise WorkLimit(f"the story's templates are too much to compile: over "
                            f"{self.nodes:,} names, operators and filters in all")


_BUDGET: ContextVar[Budget | None] = ContextVar("storyboard_template_budget", default=None)


def use_budget(budget: Budget) -> Any:
    """Make ``budget`` the one charged, until ``release_budget`` gets the returned token."""
    return _BUDGET.set(budget)


def release_budget(token: Any) -> None:
    _BUDGET.reset(token)


def _spend(units: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:  # None while Jinja folds constants at compile time: template-sized
        budget.spend(units)


def measure(value: Any, limit: float = math.inf, *, printed: bool = False) -> int:
    """Roughly how many characters ``str(value)`` would be (quotes and separators included),
    counted without recursion and stopped as soon as the count passes ``limit`` or the budget;
    the values looked at are charged to the budget. ``printed``: refuse what would print a
    memory address (an uncalled method, a sequence still being built)."""
    budget = _BUDGET.get()
    most = budget.left + 1 if budget is not None else math.inf
    size = seen = 0
    stack = [value]
    while stack and size <= limit and seen <= most:
        item = stack.pop()
        seen += 1
        kind = type(item)
        if kind is str:
            size += len(item) + 2
        elif kind is int:
            size += item.bit_length() * 3 // 10 + 2
        elif kind is list or kind is tuple:
            size += 2 + 2 * len(item)
            if size <= limit:
                stack.extend(item)
        elif kind is dict:
            size += 2 + 4 * len(item)
            if size <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif item is None or kind is bool:
            size += 5
        elif kind is float:
            size += 24
        else:
            size += _measure_other(item, stack, printed)
    _spend(seen + size // _CHARS_PER_UNIT)
    return size


def _measure_other(item: Any, stack: list, printed: bool) -> int:
    """``measure`` for what is not plain data: a view of a mapping, text or a number of
    another class, Jinja's undefined; with ``printed``, refuse what prints a memory address."""
    if isinstance(item, jinja2.Undefined):
        if printed:
            str(item)  # raises Jinja's own error, saying what is undefined
        return 0
    if isinstance(item, str):
        return len(item) + 2
    if isinstance(item, (int, float)):
        return 24
    if isinstance(item, (list, tuple, KeysView, ValuesView, ItemsView)):
        stack.extend(item)
        return 2 + 2 * len(item)
    if printed and callable(item):
        name = getattr(item, "__name__", "this")
        raise SecurityError(f"{name!r} is a method: call it ({name}()) or leave it out")
    if printed and isinstance(item, Iterator):
        raise SecurityError("a `map`, `select` or `reverse` result is a sequence still "
                            "being built: end it with `|list` or `|join`")
    return 24


def text_of(value: Any, what: str = "the text") -> str:
    """``str(value)``, once counting has shown it is at most ``MAX_TEXT_CHARS`` long."""
    limit = C.MAX_TEXT_CHARS
    if isinstance(value, jinja2.Undefined):
        return str(value)  # raises Jinja's own "is undefined"
    if isinstance(value, str):
        _spend(1 + len(value) // _CHARS_PER_UNIT)
        text = value
    else:
        if measure(value, limit, printed=True) > limit:
            raise SecurityError(f"{what} would be longer than {C.MAX_TEXT_CHARS:,} characters")
        text = str(value)
    if len(text) > limit:
        raise SecurityError(f"{what} would be longer than {C.MAX_TEXT_CHARS:,} characters")
    return text


def _too_long(what: str) -> SecurityError:
    return SecurityError(f"{what} would build text beyond the length limit "
                         f"({C.MAX_TEXT_CHARS:,} characters)")


def _metered(items: Iterator) -> Iterator:
    for item in items:
        _spend(3)  # what passing an item through `map` or `select` costs, about
        yield item


def _costed(func: Any, name: str) -> Any:
    """``func`` (a filter or test), charged for what it is given; a sequence it returns still
    being built is charged for each item it passes on."""
    pass_arg = getattr(func, "jinja_pass_arg", None)  # Jinja's @pass_context and friends

    def costed(*args: Any, **kwargs: Any) -> Any:
        given = (*args[1 if pass_arg else 0:], *kwargs.values())
        _spend(_CALL)
        if name not in _CONSTANT_TIME and name not in _COUNTING:
            for value in given:
                measure(value)
            if name in ("sort", "unique", "min", "max") and hasattr(given[0], "__len__"):
                _spend(len(given[0]) * max(1, len(given[0]).bit_length()))  # comparisons
        result = func(*args, **kwargs)
        return _metered(result) if isinstance(result, Iterator) else result

    if pass_arg is not None:
        costed.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return costed


def _text_filter(func: Any) -> Any:
    def text_filter(value: Any, *args: Any, **kwargs: Any) -> Any:
        return func(text_of(value, "the filtered text"), *args, **kwargs)

    return text_filter


def _join(value: Any, d: Any = "", attribute: Any = None) -> str:
    sep = text_of(d, "the separator")
    out: list[str] = []
    size = 0
    for item in value:
        _spend(1)
        if attribute is not None:
            item = ENV.getitem(item, attribute)
        text = text_of(item, "the joined text")
        size += len(text) + (len(sep) if out else 0)
        if size > C.MAX_TEXT_CHARS:
            raise _too_long("join")
        out.append(text)
    return sep.join(out)


def _sum(value: Any, attribute: Any = None, start: Any = 0) -> Any:
    items = list(value)
    if attribute is not None:
        items = [ENV.getitem(item, attribute) for item in items]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items) \
            or not isinstance(start, (int, float)):
        raise SecurityError("sum() adds numbers only")
    return sum(items, start)


def _truncate(value: Any, length: int = 255, killwords: bool = False, end: str = "...",
              leeway: int = 0) -> str:
    text = text_of(value, "the truncated text")
    length = max(int(length), len(end))
    if len(text) <= length:
        return text
    cut = text[: length - len(end)]
    if not killwords and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut + end


def _replace(value: str, old: Any, new: Any, count: int = -1) -> str:
    old, new = text_of(old, "replace()'s text"), text_of(new, "replace()'s text")
    n = value.count(old) if old else len(value) + 1
    if count >= 0:
        n = min(n, count)
    if len(value) + n * (len(new) - len(old)) > C.MAX_TEXT_CHARS:
        raise _too_long("replace()")
    return value.replace(old, new, count)


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator with `~`, comparisons and slices, which it compiles to plain
    Python, compiled to calls of the environment instead, where they are counted."""

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Compare(self, node: nodes.Compare, frame: Any) -> None:
        self.write("(environment.operand(")
        self.visit(node.expr, frame)
        self.write(")")
        for op in node.ops:
            self.visit(op, frame)
        self.write(")")

    def visit_Operand(self, node: nodes.Operand, frame: Any) -> None:
        self.write(f" {operators[node.op]} environment.operand(")
        self.visit(node.expr, frame)
        self.write(f", {node.op!r})")

    def visit_Getitem(self, node: nodes.Getitem, frame: Any) -> None:
        if not isinstance(node.arg, nodes.Slice):
            return super().visit_Getitem(node, frame)
        self.write("environment.getslice(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")
        return None


class StoryEnvironment(SandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False,
                         keep_trailing_newline=False,
                         finalize=lambda value: text_of(value, "the printed value"))
        filters = {name: self.filters[name] for name in ALLOWED_FILTERS}
        filters.update(join=_join, sum=_sum, truncate=_truncate,
                       string=lambda value: text_of(value, "`|string`"),
                       replace=lambda value, old, new, count=-1: _replace(
                           text_of(value, "the filtered text"), old, new, count))
        for name in _TEXT_FILTERS:
            filters[name] = _text_filter(filters[name])
        self.filters = {name: _costed(f, name) for name, f in filters.items()}
        self.tests = {name: _costed(t, name) for name, t in self.tests.items()}
        self.globals = {}

    # -- what the generated code calls ---------------------------------------------------------

    def concat(self, values: tuple) -> str:
        """`a ~ b ~ c`."""
        out: list[str] = []
        size = 0
        for value in values:
            text = text_of(value, "`~`")
            size += len(text)
            if size > C.MAX_TEXT_CHARS:
                raise SecurityError(f"`~` would build text longer than "
                                    f"{C.MAX_TEXT_CHARS:,} characters")
            out.append(text)
        return "".join(out)

    def operand(self, value: Any, op: str | None = None) -> Any:
        """One side of a comparison (``op`` is the comparison before it): charged for what
        comparing it may touch; looking a key up in a mapping touches one."""
        if op in ("in", "notin") and isinstance(value, dict):
            _spend(1)
        else:
            measure(value)
        return value

    def getslice(self, obj: Any, start: Any, stop: Any, step: Any) -> Any:
        if isinstance(obj, str):
            _spend(1 + len(obj) // _CHARS_PER_UNIT)
        elif hasattr(obj, "__len__") and not isinstance(obj, jinja2.Undefined):
            _spend(1 + len(obj))
        return obj[start:stop:step]

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        _spend(1)
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
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and n > 1:
                    each = len(seq) if isinstance(seq, str) else \
                        measure(seq, C.MAX_TEXT_CHARS // n)
                    if each * n > C.MAX_TEXT_CHARS:
                        raise _too_long("repetition")
            if isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > 8192:
                raise SecurityError("the product is too large")
        if operator_name == "+" and isinstance(left, (str, list, tuple)) \
                and isinstance(right, (str, list, tuple)):
            if measure(left, C.MAX_TEXT_CHARS) + measure(right, C.MAX_TEXT_CHARS) \
                    > C.MAX_TEXT_CHARS + 4:
                raise _too_long("`+`")
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
        if isinstance(owner, dict):
            _spend(1)  # a lookup or a view, whatever the mapping's size
        else:
            measure(owner)
        for value in (*args, *kwargs.values()):
            measure(value)
        if name == "replace" and isinstance(owner, str):
            return _replace(owner, *args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)


ENV = StoryEnvironment()
