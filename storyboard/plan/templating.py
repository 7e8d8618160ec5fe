"""Story templates: template text and values in; rendered text, or a ``TemplateProblem`` in the
template's own words (with its line), out.

Stories are untrusted input. On top of the sandbox (``plan.sandbox``: Jinja's
``SandboxedEnvironment`` narrowed to a whitelist, every operation counted against the story's
``Budget`` and no value built longer than a prompt may be):
- no statements that loop, assign, define macros or reach other files (`for`, `set`, `macro`,
  `call`, `include`, `import`, `extends`, `block`): a prompt template is an expression with
  `if`s, which is all a prompt needs and runs each of its operations once;
- compiling a template is paid for from the budget once per story, by its size;
- rendered text is capped at ``MAX_TEXT_CHARS`` while it streams out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SecurityError

from .. import constants as C
from ..errors import did_you_mean
from .sandbox import ENV, Budget, WorkLimit, release_budget, use_budget

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


class TemplateProblem(Exception):
    """A template that cannot be used; ``line`` is relative to the template, when known."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.hint = hint


@dataclass(frozen=True)
class Compiled:
    template: jinja2.Template
    nodes: int  # the size of its syntax tree, paid for once per story


@lru_cache(maxsize=512)
def compile_template(source: str) -> Compiled:
    """Parse, vet and compile a template once per distinct text."""
    if len(source) > C.MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"template is {len(source):,} characters; the limit is "
                              f"{C.MAX_TEMPLATE_CHARS:,}")
    try:
        tree = ENV.parse(source)
        size = 0
        pending: list[nodes.Node] = [tree]
        while pending:  # one pass, no recursion
            node = pending.pop()
            size += 1
            what = next((w for t, w in _FORBIDDEN_NODES.items() if isinstance(node, t)), None)
            if what:
                raise TemplateProblem(f"{what} are not allowed in story templates", node.lineno,
                                      "templates are expressions: use filters such as "
                                      "`map(attribute='phrase') | join(sep)` instead")
            pending.extend(node.iter_child_nodes())
        return Compiled(ENV.from_string(tree), size)
    except jinja2.TemplateAssertionError as exc:
        # Unknown filters and tests: the whitelist is the list of what exists.
        name = re.search(r"named '([^']+)'", exc.message or "")
        known = ENV.filters if "filter" in (exc.message or "") else ENV.tests
        hint = did_you_mean(name.group(1), known) if name else None
        raise TemplateProblem(f"{exc.message}", exc.lineno,
                              hint or f"available: {', '.join(sorted(known))}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from None
    except RecursionError:
        raise TemplateProblem("template is nested too deeply") from None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def render(source: str, context: dict[str, Any], budget: Budget | None = None) -> str:
    """Render ``source`` with ``context``, paying from ``budget`` (the story's; default: a
    budget of its own); raise ``TemplateProblem`` on any failure."""
    budget = budget if budget is not None else Budget()
    compiled = compile_template(source)
    out: list[str] = []
    size = 0
    token = use_budget(budget)
    try:
        budget.compile(source, compiled.nodes)
        for chunk in compiled.template.generate(context):
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
    except WorkLimit as exc:
        raise TemplateProblem(str(exc), _template_line(exc), "templates put prompts together "
                              "from short values; filters and comparisons on long lists in "
                              "`vars`, or thousands of different templates, use it up") from None
    except SecurityError as exc:
        raise TemplateProblem(f"not allowed: {exc}", _template_line(exc)) from None
    except TemplateProblem:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, RecursionError,
            AttributeError, KeyError, IndexError, AssertionError, MemoryError) as exc:
        raise TemplateProblem(f"template failed: {exc}", _template_line(exc)) from None
    finally:
        release_budget(token)
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
