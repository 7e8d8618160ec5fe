"""Problems found in a story, and the one exception that carries them to the user.

In: locations (a file, a line and column, a path into the document such as
``("panels", 3, "seed")``) and plain-language messages. Out: ``Problem`` records that format as
``story.yaml:12:5: panels[3].seed: expected an integer, got 'abc'`` with an optional hint, and
``UserError`` (a mistake the user can fix; the command line prints its message and exits 2)
and ``StoryError``, the ``UserError`` that lists every problem in a story at once.

Plain exceptions: the library knows nothing of click. ``cli/`` turns them into exit codes.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Loc = tuple[str | int, ...]

MAX_PROBLEMS = 200  # per file: past this, more messages only add noise (and time)

ERROR = "error"
WARNING = "warning"


def format_loc(loc: Sequence[str | int]) -> str:
    """``("panels", 3, "seed")`` -> ``panels[3].seed``; odd keys are quoted, and escaped where
    they could pass for another (``characters['\\u212a1']``, not ``characters.K1``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isascii() and part.replace("_", "a").replace("-", "a").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{show_text(part)}]"
    return out


def show_text(text: str) -> str:
    """``text`` quoted for a message: as written (Chinese stays Chinese), but escaped when it
    holds something invisible, or mixes ASCII letters with others (a look-alike spoof)."""
    mixed = not text.isascii() and any(ch.isascii() and ch.isalnum() for ch in text)
    hidden = not text.isprintable() or any(unicodedata.category(ch) == "Cf" for ch in text)
    return ascii(text) if mixed or hidden else repr(text)


def did_you_mean(word: object, choices: Iterable[str]) -> str | None:
    """A hint naming the closest valid choice, or None when nothing is close."""
    if not isinstance(word, str):
        return None
    choices = list(choices)
    if len(choices) > 500:  # hostile sizes; a hint is not worth quadratic time
        return None
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f"did you mean {lowered[word.lower()]!r}? (names are case-sensitive)"
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if match:
        return f"did you mean {lowered[match[0]]!r}?"
    return None


def show_value(value: object, limit: int = 60, *, escape: bool = False) -> str:
    """A short, safe rendering of a user's value for messages; ``escape``: everything not ASCII
    as its code (``'\\u212a1'``), where a look-alike would pass for another letter."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = ascii(value) if escape else repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


_KINDS = {str: "text", int: "an integer", float: "a number", bool: "true/false", list: "a list",
          dict: "a mapping", type(None): "nothing (null)"}


# Bidirectional formatting characters: they change the order in which text is displayed.
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (an escape sequence could
    rewrite the screen) and bidirectional overrides (which reorder what is shown) become
    visible escapes such as ``\\x1b``; newlines and tabs stay."""
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if (unicodedata.category(ch) == "Cc" and ch not in "\n\t") or ch in BIDI
                   else ch for ch in text)


def kind_of(value: object) -> str:
    """What kind of YAML value ``value`` is, in a writer's words ("an integer", "a list")."""
    return _KINDS.get(type(value), type(value).__name__)


def describe_value(value: object) -> str:
    """``value`` as a message quotes what was given: containers by kind, scalars shown."""
    if isinstance(value, (dict, list)):
        return kind_of(value)
    if value is None:
        return "nothing (null)"
    return show_value(value)


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int | None
    col: int | None
    loc: Loc
    message: str
    hint: str | None = None
    severity: str = ERROR

    def format(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        parts = [where]
        if self.severity == WARNING:
            parts.append("warning")
        if self.loc:
            parts.append(format_loc(self.loc))
        parts.append(self.message)
        text = ": ".join(parts)
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


@dataclass
class Diagnostics:
    """Collects problems so a file reports all of them at once, in document order."""

    problems: list[Problem] = field(default_factory=list)
    dropped: int = 0
    _seen: set = field(default_factory=set, repr=False)
    _errors: int = field(default=0, repr=False)

    def add(self, problem: Problem) -> None:
        if problem in self._seen:
            return
        # Warnings get half the room at most, so that an error always finds a place: a file
        # with hundreds of warnings must still fail on its errors.
        warnings = len(self.problems) - self._errors
        if len(self.problems) >= MAX_PROBLEMS or (problem.severity != ERROR
                                                  and warnings >= MAX_PROBLEMS // 2):
            self.dropped += 1
            return
        self._seen.add(problem)
        self.problems.append(problem)
        self._errors += problem.severity == ERROR

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def sorted(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: (p.file, p.line or 0, p.col or 0))

    def raise_if_errors(self) -> None:
        if self.errors:
            problems = self.sorted()
            if self.dropped:
                last = problems[-1]
                problems.append(Problem(last.file, None, None, (), f"... and {self.dropped} "
                                        "more problems not shown"))
            raise StoryError(problems)


class UserError(Exception):
    """A mistake the user can fix (a bad argument, a file in the way): exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        """What the command line prints after "Error: "."""
        return self.message


class StoryError(UserError):
    """A story that cannot be used. Always the user's to fix: exit code 2, no traceback."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__(self._summary())

    def _summary(self) -> str:
        errors = [p for p in self.problems if p.severity == ERROR]
        files = sorted({p.file for p in errors})
        noun = "error" if len(errors) == 1 else "errors"
        return f"{len(errors)} {noun} in {', '.join(files)}"

    def format_message(self) -> str:
        """Every problem, then the count: printed as is, with no "Error: " before it."""
        return "\n".join(p.format() for p in self.problems) + f"\n{self._summary()}"
