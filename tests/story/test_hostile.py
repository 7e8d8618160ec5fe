"""Hostile stories: every attack must be refused fast with a clean ``StoryError``.

The promise under test (see storyboard/source.py, spec.py, templating.py): an untrusted story
file is refused quickly (well under a second), with a ``StoryError`` whose problems carry
file/line/col/loc/message/hint -- never a Python traceback, a hang, huge memory use or a
sandbox escape. Through the CLI that means exit code 2, ``file:line`` in the message where a line
is known, and no "Traceback".

Attacks that would hang or eat memory if a guard regressed run in a child process with a
watchdog and an address-space limit, so the suite itself stays fast and safe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyboard.cli import cli
from storyboard.plan import compile_story
from storyboard.errors import Problem, StoryError
from storyboard.story import load_story

# A generous guard: the promise is "well under a second", the machine may be slow.
FAST_S = 2.0

BASE = """\
version: 1
model: tiny-sdxl
panels:
  - id: p1
    prompt: a cat
"""
# Line numbers in BASE: 1 version, 2 model, 3 panels, 4 id, 5 prompt; extras start on line 6.


# ---------------------------------------------------------------------------------------------
# helpers


def write(tmp_path: Path, content: str | bytes, name: str = "story.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def load_and_compile(path: Path):
    story = load_story(path)
    return story, compile_story(story)


def refused(tmp_path: Path, content: str | bytes, *, match: str | None = None,
            line: int | None = None, max_s: float = FAST_S) -> StoryError:
    """Load+compile ``content``; assert a clean, fast StoryError and return it."""
    path = write(tmp_path, content)
    start = time.perf_counter()
    with pytest.raises(StoryError) as info:
        load_and_compile(path)
    elapsed = time.perf_counter() - start
    assert elapsed < max_s, f"took {elapsed:.2f}s to refuse"
    err = info.value
    assert err.problems, "StoryError without problems"
    errors = [p for p in err.problems if p.severity == "error"]
    assert errors, "StoryError holding only warnings"
    for p in err.problems:
        assert isinstance(p, Problem)
        assert p.file == str(path)
        assert isinstance(p.message, str) and p.message
        assert p.line is None or (isinstance(p.line, int) and p.line >= 1)
        assert p.col is None or (isinstance(p.col, int) and p.col >= 1)
        assert isinstance(p.loc, tuple)
        assert p.hint is None or isinstance(p.hint, str)
    text = err.format_message()
    assert "Traceback" not in text
    if match is not None:
        assert any(match.lower() in p.message.lower() for p in errors), \
            f"no problem mentions {match!r}:\n{text}"
    if line is not None:
        assert any(p.line == line for p in errors), f"no problem on line {line}:\n{text}"
    return err


def accepted(tmp_path: Path, content: str) -> list:
    path = write(tmp_path, content)
    start = time.perf_counter()
    _, jobs = load_and_compile(path)
    assert time.perf_counter() - start < FAST_S
    return jobs


def with_extra(extra: str) -> str:
    return BASE + textwrap.dedent(extra)


def with_panel_fields(fields: str) -> str:
    """BASE with extra keys on panel p1 (each line of ``fields`` indented under the panel)."""
    body = "".join(f"    {line}\n" for line in textwrap.dedent(fields).strip("\n").splitlines())
    return BASE + body


def with_template(tpl: str) -> str:
    """A story whose `templates.prompt` is ``tpl`` (JSON quoting is valid YAML); line 7."""
    return BASE + "templates:\n  prompt: " + json.dumps(tpl) + "\n"


def with_prompt(tpl: str) -> str:
    """A story whose panel prompt is ``tpl``; line 5."""
    return BASE.replace("prompt: a cat", "prompt: " + json.dumps(tpl))


def cli_validate(path: Path):
    result = CliRunner().invoke(cli, ["validate", str(path)])
    return result


def assert_cli_refuses(path: Path, line: int | None):
    result = cli_validate(path)
    out = result.output + (getattr(result, "stderr", "") or "")
    assert not (result.exception and not isinstance(result.exception, SystemExit)), \
        f"crashed with {result.exception!r}"
    assert result.exit_code == 2, (result.exit_code, out)
    assert "Traceback" not in out
    if line is not None:
        assert f"{path}:{line}" in out, out
    else:
        assert str(path) in out, out


_CHILD = r"""
import faulthandler, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from storyboard.story import load_story
from storyboard.plan import compile_story
from storyboard.errors import StoryError
budget = float(sys.argv[2])
faulthandler.dump_traceback_later(budget, exit=True, file=open(os.devnull, "w"))
t = time.perf_counter()
try:
    compile_story(load_story(sys.argv[1]))
    outcome = "OK"
except StoryError:
    outcome = "STORYERROR"
except BaseException as exc:
    outcome = "EXC:" + type(exc).__name__
faulthandler.cancel_dump_traceback_later()
print("RESULT", outcome, round(time.perf_counter() - t, 3), flush=True)
"""


def run_isolated(path: Path, budget: float = FAST_S) -> tuple[str, float | None]:
    """Load+compile in a child with a watchdog (``budget`` s after imports) and 2 GiB of
    address space. Returns (outcome, seconds): outcome is STORYERROR, OK, EXC:<type>,
    TIMEOUT (the watchdog fired) or CRASH:<returncode>."""
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(budget)],
                              capture_output=True, text=True, timeout=budget + 60)
    except subprocess.TimeoutExpired:
        return "TIMEOUT", None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, outcome, secs = line.split()
            return outcome, float(secs)
    if proc.returncode == 1 and not proc.stderr.strip():
        return "TIMEOUT", None  # faulthandler's watchdog exits 1, writing to /dev/null
    return f"CRASH:{proc.returncode}:{proc.stderr.strip()[-300:]}", None


def assert_refused_isolated(tmp_path: Path, content: str | bytes, budget: float = FAST_S):
    path = write(tmp_path, content)
    outcome, secs = run_isolated(path, budget)
    assert outcome == "STORYERROR", (f"{outcome} (budget {budget}s)" if secs is None
                                     else f"{outcome} after {secs}s")


# ---------------------------------------------------------------------------------------------
# sanity: the base story and the examples are fine (so refusals below are about the attack)


def test_base_story_compiles(tmp_path):
    jobs = accepted(tmp_path, BASE)
    assert [j.prompt for j in jobs] == ["a cat"]


def test_utf8_bom_is_accepted(tmp_path):
    jobs = accepted(tmp_path, "\ufeff" + BASE)
    assert jobs[0].panel == "p1"


# ---------------------------------------------------------------------------------------------
# YAML alias bombs


def _laughs(levels: int, fanout: int, *, style: str) -> str:
    out = ["vars:"]
    if style == "list":
        out.append("  l0: &l0 lol")
        for i in range(1, levels):
            out.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fanout) + "]")
    else:  # nested maps
        out.append("  l0: &l0 {a: lol}")
        for i in range(1, levels):
            out.append(f"  l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(fanout))
                       + "}")
    return BASE + "\n".join(out) + "\n"


@pytest.mark.parametrize("style", ["list", "map"])
def test_billion_laughs_refused(tmp_path, style):
    tracemalloc.start()
    try:
        refused(tmp_path, _laughs(10, 10, style=style), match="expands to more than")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak memory {peak / 2**20:.0f} MiB"


def test_alias_bomb_reports_line_and_hint(tmp_path):
    err = refused(tmp_path, _laughs(12, 9, style="list"), match="100,000 values")
    problem = err.problems[0]
    assert problem.line is not None and problem.line >= 6
    assert problem.hint and "alias" in problem.hint


def test_alias_bomb_in_keys_refused(tmp_path):
    # Aliases of big collections used as mapping keys (complex keys).
    lines = ["vars:", "  l0: &l0 [a, b, c, d, e, f, g, h, i, j]"]
    for i in range(1, 8):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    lines.append("  m: {" + ", ".join(f"? [*l7, {j}] : {j}" for j in range(10)) + "}")
    refused(tmp_path, BASE + "\n".join(lines) + "\n", match="expands to more than")


def test_alias_as_plain_key_bomb_refused(tmp_path):
    lines = ["vars:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    lines += ["  keyed:", "    *l7 : 1"]
    refused(tmp_path, BASE + "\n".join(lines) + "\n", match="expands to more than")


def test_merge_key_bomb_refused(tmp_path):
    lines = ["vars:", "  m0: &m0 {" + ", ".join(f"k{j}: v" for j in range(10)) + "}"]
    for i in range(1, 8):
        lines.append(f"  m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + f"], own{i}: 1}}")
    refused(tmp_path, BASE + "\n".join(lines) + "\n", match="expands to more than")


def test_merge_key_bomb_block_style_refused(tmp_path):
    lines = ["vars:", "  m0: &m0", "    a: 1", "    b: 2"]
    for i in range(1, 20):
        lines += [f"  m{i}: &m{i}", f"    x{i}: *m{i - 1}", f"    y{i}: *m{i - 1}",
                  f"    <<: *m{i - 1}"]
    refused(tmp_path, BASE + "\n".join(lines) + "\n", match="expands to more than")


def test_recursive_alias_in_panels_refused(tmp_path):
    content = "version: 1\nmodel: tiny-sdxl\npanels: &p\n  - *p\n"
    refused(tmp_path, content)


def test_undefined_alias_refused(tmp_path):
    refused(tmp_path, with_extra("title: *nope\n"), match="undefined alias", line=6)


def test_deep_nesting_through_aliases_refused(tmp_path):
    lines = ["vars:", "  l:"]
    prev = "1"
    for i in range(60):
        lines.append(f"    - &a{i} " + "[" * 25 + prev + "]" * 25)
        prev = f"*a{i}"
    refused(tmp_path, BASE + "\n".join(lines) + "\n", match="nested")


# ---------------------------------------------------------------------------------------------
# deep nesting


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_flow_list_refused(tmp_path, depth):
    refused(tmp_path, with_extra("vars:\n  x: " + "[" * depth + "]" * depth + "\n"),
            match="nested more than", line=7)


@pytest.mark.parametrize("depth", [40, 5000, 50_000])
def test_deep_flow_map_refused(tmp_path, depth):
    refused(tmp_path, with_extra("vars:\n  x: " + "{a: " * depth + "1" + "}" * depth + "\n"),
            match="nested more than", line=7)


def test_deep_unclosed_flow_refused(tmp_path):
    refused(tmp_path, with_extra("vars:\n  x: " + "[" * 200_000 + "\n"), match="nested")


@pytest.mark.parametrize("depth", [40, 1000])
def test_deep_block_maps_refused(tmp_path, depth):
    lines = ["vars:"] + [" " * (i + 1) + f"k{i}:" for i in range(depth)]
    lines[-1] += " 1"
    refused(tmp_path, BASE + "\n".join(lines) + "\n", match="nested more than")


def test_deep_block_lists_refused(tmp_path):
    # `- - - 1` nests block sequences on one line
    refused(tmp_path, BASE + "vars:\n  x:\n    " + "- " * 50_000 + "1\n", match="nested more than",
            line=8)
    text = "vars:\n  x:\n" + "".join(" " * (i + 4) + "-\n" for i in range(1000))
    refused(tmp_path, BASE + text, match="nested more than")


def test_deep_mixed_block_and_flow_refused(tmp_path):
    text = "vars:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(20))
    text += "  " * 21 + "v: " + "[{a: " * 20 + "1" + "}]" * 20 + "\n"
    refused(tmp_path, BASE + text, match="nested more than")


# ---------------------------------------------------------------------------------------------
# tags


@pytest.mark.parametrize("value", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!<tag:yaml.org,2002:python/object/apply:os.system> ['touch {marker}']",
    "!foo bar",
    "!foo {{a: 1}}",
    "!!binary aGVsbG8=",
    "!!timestamp 2001-12-14",
    "!!set {{a, b}}",
    "!!omap [a: 1]",
    "!!pairs [a: 1]",
    "!!str:x y",
])
def test_custom_tags_refused(tmp_path, value):
    marker = tmp_path / "pwned"
    value = value.format(marker=marker)
    refused(tmp_path, with_extra(f"title: {value}\n"), match="tag", line=6)
    assert not marker.exists()


def test_tag_directive_to_python_refused(tmp_path):
    marker = tmp_path / "pwned"
    content = ("%TAG !py! tag:yaml.org,2002:python/\n---\n" + BASE
               + f"title: !py!object/apply:os.system ['touch {marker}']\n")
    refused(tmp_path, content, match="tag", line=8)
    assert not marker.exists()


def test_tag_on_key_refused(tmp_path):
    refused(tmp_path, with_extra("vars:\n  !!python/name:os.system x: 1\n"), match="tag", line=7)


def test_tag_on_collection_refused(tmp_path):
    refused(tmp_path, BASE.replace("panels:", "panels: !!python/object:list"), match="tag")


# ---------------------------------------------------------------------------------------------
# duplicate keys


def test_duplicate_top_level_key_refused(tmp_path):
    err = refused(tmp_path, BASE + "model: tiny-kolors\n", match="duplicate key 'model'", line=6)
    assert any("line 2" in p.message for p in err.problems)


def test_duplicate_nested_key_refused(tmp_path):
    refused(tmp_path, with_panel_fields("prompt: a dog"), match="duplicate key 'prompt'", line=6)


def test_duplicate_key_in_flow_map_refused(tmp_path):
    refused(tmp_path, with_extra("vars: {a: 1, b: 2, a: 3}\n"), match="duplicate key 'a'", line=6)


def test_duplicate_key_quoted_and_plain_refused(tmp_path):
    refused(tmp_path, with_extra("vars:\n  a: 1\n  'a': 2\n"), match="duplicate key", line=8)


@pytest.mark.parametrize("keys", [("1", "0x1"), ("true", "True"), ("null", "~"), ("1", "+1")])
def test_duplicate_keys_equal_by_value_refused(tmp_path, keys):
    a, b = keys
    refused(tmp_path, with_extra(f"vars:\n  {a}: x\n  {b}: y\n"), match="duplicate key")


def test_duplicate_alias_keys_refused(tmp_path):
    refused(tmp_path, with_extra("x: &k kk\nvars:\n  *k : 1\n  *k : 2\n"), match="duplicate key")


def test_duplicate_merge_keys_refused(tmp_path):
    content = with_extra("""\
        base: &b {negative: ugly}
        defaults:
          <<: *b
          <<: *b
        """)
    refused(tmp_path, content, match="duplicate key '<<'", line=9)


def test_all_duplicate_keys_reported(tmp_path):
    err = refused(tmp_path, with_extra("vars:\n  a: 1\n  a: 2\n  b: 1\n  b: 2\n  a: 3\n"))
    dups = [p for p in err.problems if "duplicate key" in p.message]
    assert {p.line for p in dups} == {8, 10, 11}


def test_merge_of_scalar_refused(tmp_path):
    refused(tmp_path, with_extra("vars:\n  <<: 1\n"), match="merg")


def test_merged_values_are_validated(tmp_path):
    # Keys that arrive through `<<` carry no position of their own: still refused cleanly.
    content = with_extra("""\
        base: &b {steps: -3, bogus: 1}
        defaults:
          <<: *b
        """)
    err = refused(tmp_path, content)
    messages = " | ".join(p.message for p in err.problems)
    assert "unknown key 'bogus'" in messages and "must be >= 1" in messages


# ---------------------------------------------------------------------------------------------
# documents, empty files, encodings, control characters


@pytest.mark.parametrize("content", [
    BASE + "---\n" + BASE,
    "---\n" + BASE + "...\n---\nversion: 1\n",
    "---\n---\n",
    BASE + "...\n---\n",
])
def test_multiple_documents_refused(tmp_path, content):
    refused(tmp_path, content, match="more than one YAML document")


@pytest.mark.parametrize("content", [
    b"", b"   ", b"\n\n\n", b"\t\n  \n", b"# only a comment\n", b"# a\n\n   # b\n",
    b"\xef\xbb\xbf", b"\xef\xbb\xbf# bom and comment\n", "\u3000\n".encode(),
])
def test_empty_files_refused(tmp_path, content):
    refused(tmp_path, content, match="empty")


@pytest.mark.parametrize("content, kind", [
    ("---\n", "nothing"), ("~\n", "nothing"), ("...\n", None), ("42\n", "integer"),
    ("- a\n- b\n", "list"), ("hello\n", "text"), ("'version: 1'\n", "text"),
])
def test_non_mapping_top_level_refused(tmp_path, content, kind):
    err = refused(tmp_path, content)
    if kind:
        assert any("expected a mapping" in p.message and kind in p.message for p in err.problems)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be"])
def test_wide_encodings_refused(tmp_path, encoding):
    refused(tmp_path, BASE.encode(encoding))


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "big5"])
def test_legacy_chinese_encodings_refused_with_line(tmp_path, encoding):
    content = (BASE + "title: 中文\n").encode(encoding)
    err = refused(tmp_path, content, match="not valid UTF-8", line=6)
    assert err.problems[0].col == 8
    assert "GBK" in (err.problems[0].hint or "")


def test_latin1_refused_with_line(tmp_path):
    refused(tmp_path, (BASE + "title: caf\xe9\n").encode("latin-1"), match="UTF-8", line=6)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b",
                                  "\x7f", "\ufffe", "\uffff"])
def test_control_characters_refused(tmp_path, char):
    refused(tmp_path, BASE + f"title: a{char}b\n", match="character")


def test_nul_bytes_everywhere_refused(tmp_path):
    refused(tmp_path, b"\x00" * 5000)
    refused(tmp_path, BASE.encode().replace(b"\n", b"\n\x00"))


def test_overlong_utf8_and_surrogates_refused(tmp_path):
    refused(tmp_path, BASE.encode() + b"title: \xc0\xaf\n", match="UTF-8", line=6)
    refused(tmp_path, BASE.encode() + b"title: \xed\xa0\x80\n", match="UTF-8", line=6)


def test_control_character_reported_with_line(tmp_path):
    refused(tmp_path, BASE + "title: a\x00b\n", line=6)


def test_tab_indentation_refused_with_hint(tmp_path):
    err = refused(tmp_path, with_extra("vars:\n\tx: 1\n"), line=7)
    assert any(p.hint and "tabs" in p.hint for p in err.problems)


# ---------------------------------------------------------------------------------------------
# huge values


def test_file_over_size_limit_refused(tmp_path):
    refused(tmp_path, BASE + "# " + "x" * (1 << 20) + "\n", match="limited to")


def test_huge_scalar_refused(tmp_path):
    refused(tmp_path, with_extra("title: " + "x" * 25_000 + "\n"), match="characters long",
            line=6)


def test_huge_quoted_and_block_scalars_refused(tmp_path):
    refused(tmp_path, with_extra("title: '" + "x" * 25_000 + "'\n"), match="characters long")
    refused(tmp_path, with_extra("title: |\n" + "  y\n" * 21_000), match="characters long")


def test_long_text_fields_refused(tmp_path):
    refused(tmp_path, with_panel_fields("caption: " + "c" * 9000), match="characters long",
            line=6)
    refused(tmp_path, with_extra("title: " + "t" * 300 + "\n"), match="limit is 200", line=6)


@pytest.mark.parametrize("field", ["seed", "steps", "width"])
@pytest.mark.parametrize("number", ["9" * 10_000, "-" + "9" * 10_000, "1" + "_0" * 4000,
                                    "9" * 200 + ".5", "1" + "0" * 5000 + "e5"])
def test_huge_numbers_refused(tmp_path, field, number):
    refused(tmp_path, with_panel_fields(f"{field}: {number}"), line=6)


def test_huge_number_in_vars_refused(tmp_path):
    refused(tmp_path, with_extra("vars:\n  n: " + "7" * 10_000 + "\n"), match="far too large",
            line=7)


def test_huge_tagged_int_refused(tmp_path):
    refused(tmp_path, with_panel_fields('seed: !!int "' + "1" * 10_000 + '"'))


@pytest.mark.parametrize("where", ["seed", "title"])
@pytest.mark.parametrize("number", ["0x" + "f" * 5000, "0o" + "7" * 6000, "0b" + "1" * 15000])
def test_huge_non_decimal_integers_refused(tmp_path, where, number):
    content = with_panel_fields(f"seed: {number}") if where == "seed" \
        else with_extra(f"title: {number}\n")
    refused(tmp_path, content, line=6)


def test_huge_sexagesimal_integer_refused(tmp_path):
    refused(tmp_path, "%YAML 1.1\n---\n" + BASE + "title: 1" + ":0" * 3000 + "\n")


@pytest.mark.parametrize("where", ["top", "vars", "characters", "panel"])
def test_huge_integer_key_refused(tmp_path, where):
    key = "? 0x" + "f" * 5000 + "\n"
    content = {"top": BASE + key + ": 1\n",
               "vars": BASE + "vars:\n  " + key + "  : 1\n",
               "characters": BASE + "characters:\n  " + key + "  : {}\n",
               "panel": BASE + "    " + key + "    : 1\n"}[where]
    refused(tmp_path, content)


# ---------------------------------------------------------------------------------------------
# numeric fields: floats, seeds, sizes, steps


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "1e999", "-1e999", ".Inf"])
def test_non_finite_guidance_refused(tmp_path, value):
    refused(tmp_path, with_panel_fields(f"guidance: {value}"), match="finite", line=6)


@pytest.mark.parametrize("value", [".inf", ".nan", "1e999"])
def test_non_finite_lora_weight_refused(tmp_path, value):
    content = with_extra(f"""\
        characters:
          c:
            loras:
              - file: missing.safetensors
                weight: {value}
        """)
    refused(tmp_path, content, match="finite", line=10)


@pytest.mark.parametrize("value", [".inf", ".nan", "1e999", "1.5", "1e3", "true", "'42'",
                                   "[1]", "{a: 1}", "0.0"])
def test_non_integer_seed_refused(tmp_path, value):
    refused(tmp_path, with_panel_fields(f"seed: {value}"), line=6)


@pytest.mark.parametrize("seed, ok", [(-1, False), (-(2**64), False), (2**64, False),
                                      (2**64 - 1, True), (0, True), (2**200, False)])
def test_seed_range(tmp_path, seed, ok):
    content = with_panel_fields(f"seed: {seed}")
    if ok:
        assert accepted(tmp_path, content)[0].seed == seed
    else:
        refused(tmp_path, content, match="must be", line=6)


def test_story_seed_range(tmp_path):
    refused(tmp_path, with_extra(f"defaults:\n  seed: {2**64}\n"), match="must be <=", line=7)
    refused(tmp_path, with_extra("defaults:\n  seed: -5\n"), match="must be >=", line=7)


@pytest.mark.parametrize("value, match", [
    (100, "multiple of 8"), (1001, "multiple of 8"), (0, "must be >="), (8, "must be >="),
    (-8, "must be >="), (4104, "must be <="), (10**9, "must be <="), (10**60, "must be <="),
    ("1e3", "integer"), ("512.0", "integer"), ("'512'", "integer"), ("true", "integer"),
])
@pytest.mark.parametrize("field", ["width", "height"])
def test_bad_sizes_refused(tmp_path, field, value, match):
    refused(tmp_path, with_panel_fields(f"{field}: {value}"), match=match, line=6)


def test_not_multiple_of_8_hint(tmp_path):
    err = refused(tmp_path, with_panel_fields("width: 1001"), match="multiple of 8")
    assert "1000" in err.problems[0].hint and "1008" in err.problems[0].hint


@pytest.mark.parametrize("value", [0, -1, 501, 10**18, "1.5", ".inf"])
def test_bad_steps_refused(tmp_path, value):
    refused(tmp_path, with_panel_fields(f"steps: {value}"), line=6)


@pytest.mark.parametrize("field, value", [("columns", 0), ("columns", 10**9), ("gutter", -1),
                                          ("margin", 10**12), ("font_size", 10**6),
                                          ("cell_width", 4097), ("panels_per_page", 0),
                                          ("border", ".inf"), ("background", "'red'"),
                                          ("background", "'#ffffff\\n'")])
def test_bad_layout_values_refused(tmp_path, field, value):
    refused(tmp_path, with_extra(f"layout:\n  {field}: {value}\n"), line=7)


def test_too_many_panels_refused(tmp_path):
    panels = "".join(f"  - id: p{i}\n    prompt: x\n" for i in range(1001))
    refused(tmp_path, "version: 1\nmodel: tiny-sdxl\npanels:\n" + panels, match="too many")


def test_too_many_panels_via_aliases_refused(tmp_path):
    content = ("version: 1\nmodel: tiny-sdxl\nvars:\n  p: &p {id: p1, prompt: x}\n"
               "  l: &l [" + ", ".join(["*p"] * 40) + "]\n"
               "panels: [" + ", ".join(["*l"] * 30) + "]\n")
    refused(tmp_path, content)


# ---------------------------------------------------------------------------------------------
# ids


@pytest.mark.parametrize("pid", [
    "../x", "a/b", "..", ".", "a\\b", "/etc/passwd", "C:", "a:b", "p 1", "", " p1", "p1 ",
    "-p1", "_p1", "p.1", "CON", "con", "nul", "NUL", "Com1", "lpt9", "aux", "prn",
    "ｐ1",  # fullwidth p
    "р1",  # Cyrillic er
    "p\u200b1",  # zero-width space
    "p1\u0301",  # combining accent
    "x" * 65, "x" * 10_000, "p\t1", "p\x85",
], ids=lambda v: ascii(v)[:30])
def test_bad_panel_ids_refused(tmp_path, pid):
    err = refused(tmp_path, BASE.replace("id: p1", "id: " + json.dumps(pid)), line=4)
    assert any(p.loc[:3] == ("panels", 0, "id") for p in err.problems)


@pytest.mark.parametrize("pid", ["1", "0x10", "true", "null", "[a]", "{a: 1}", "1.5"])
def test_non_text_panel_ids_refused(tmp_path, pid):
    refused(tmp_path, BASE.replace("id: p1", f"id: {pid}"), line=4)


def test_duplicate_panel_ids_refused(tmp_path):
    content = BASE + "  - id: p1\n    prompt: a dog\n"
    refused(tmp_path, content, match="duplicate panel id", line=6)


@pytest.mark.parametrize("cid", ["../x", "a/b", "CON", "x" * 65, "ｃ"], ids=lambda v: ascii(v)[:20])
def test_bad_character_ids_refused(tmp_path, cid):
    refused(tmp_path, with_extra(f"characters:\n  {json.dumps(cid)}:\n    name: x\n"),
            match="reserved file name" if cid == "CON" else "invalid", line=7)


@pytest.mark.parametrize("name", ["a-b", "1a", "a.b", "__class__x!", "x" * 65, "a b", ""])
def test_bad_var_names_refused(tmp_path, name):
    refused(tmp_path, with_extra(f"vars:\n  {json.dumps(name)}: 1\n"), match="variable name")


@pytest.mark.parametrize("where", ["panel", "reserved", "character", "var", "repo"])
def test_trailing_newline_ids_refused(tmp_path, where):
    if where == "panel":
        content = BASE.replace("id: p1", 'id: "p1\\n"')
    elif where == "reserved":
        content = BASE.replace("id: p1", 'id: "nul\\n"')
    elif where == "character":
        content = with_extra('characters:\n  "c1\\n": {name: x}\n')
        content = content.replace("prompt: a cat", 'prompt: a cat\n    characters: ["c1\\n"]')
    elif where == "var":
        content = with_extra('vars:\n  "x\\n": 1\n')
    else:
        content = BASE.replace("model: tiny-sdxl", 'model: {repo: "owner/name\\n"}')
    refused(tmp_path, content)


def test_panel_ids_differing_only_in_case_refused(tmp_path):
    refused(tmp_path, BASE + "  - id: P1\n    prompt: a dog\n", match="only in case", line=6)


# ---------------------------------------------------------------------------------------------
# unknown keys, odd keys, wrong shapes


@pytest.mark.parametrize("content, key, line", [
    (BASE + "promt: x\n", "promt", 6),
    (BASE + "__class__: x\n", "__class__", 6),
    (BASE.replace("prompt: a cat", "prompt: a cat\n    sead: 4"), "sead", 6),
    (BASE + "defaults:\n  step: 3\n", "step", 7),
    (BASE + "style:\n  prefix: x\n  __init__: y\n", "__init__", 8),
])
def test_unknown_keys_refused(tmp_path, content, key, line):
    refused(tmp_path, content, match=f"unknown key {key!r}", line=line)


def test_unknown_key_did_you_mean(tmp_path):
    err = refused(tmp_path, BASE.replace("prompt: a cat", "prompt: a cat\n    sead: 4"))
    assert any(p.hint and "seed" in p.hint for p in err.problems)


@pytest.mark.parametrize("key", ["1", "true", "-1", "[a, b]", "{a: 1}", "2020-01-01",
                                 "? [a]\n", "? {a: 1}\n", "? - a\n"])
def test_odd_keys_refused_cleanly(tmp_path, key):
    if key.startswith("?"):
        content = BASE + "vars:\n  " + key.replace("\n", "\n  ") + ": 1\n"
    else:
        content = BASE + f"vars:\n  {key}: 1\n"
    # reported at the key, or at `vars:` (line 6) for the whole mapping
    err = refused(tmp_path, content)
    assert err.problems[0].line in (6, 7)
    assert err.problems[0].loc[:1] == ("vars",)


@pytest.mark.parametrize("key", ["1", "true", "null", "[a]"])
def test_odd_top_level_keys_refused(tmp_path, key):
    refused(tmp_path, BASE + f"{key}: 1\n", line=6)


@pytest.mark.parametrize("extra", [
    "characters: [a, b]\n", "characters: x\n", "vars: [1]\n", "templates: x\n", "layout: 3\n",
    "defaults: []\n", "style: null\n",
])
def test_wrong_shapes_refused(tmp_path, extra):
    refused(tmp_path, BASE + extra, line=6)


@pytest.mark.parametrize("panels", ["[]", "null", "x", "{}", "[1]", "[[]]", "[{}]"])
def test_bad_panels_refused(tmp_path, panels):
    refused(tmp_path, f"version: 1\nmodel: tiny-sdxl\npanels: {panels}\n", line=3)


@pytest.mark.parametrize("model", ["''", "'../../etc'", "a/b/c", "'org/na me'", "{}",
                                   "{builtin: tiny-sdxl, repo: a/b}", "{builtin: nope}",
                                   "{path: /dev/zero}", "{repo: a/b, revision: " + "r" * 200 + "}"])
def test_bad_models_refused(tmp_path, model):
    refused(tmp_path, BASE.replace("model: tiny-sdxl", f"model: {model}"), line=2)


def test_bad_version_refused(tmp_path):
    for v in ("2", "'1'", "0", "-1", "0x1x", "null", "[1]", "99999999999999999999"):
        refused(tmp_path, BASE.replace("version: 1", f"version: {v}"), line=1)


@pytest.mark.parametrize("v", ["true", "1.0"])
def test_version_true_or_float_refused(tmp_path, v):
    refused(tmp_path, BASE.replace("version: 1", f"version: {v}"), line=1)


def test_empty_value_reported_on_its_own_line(tmp_path):
    refused(tmp_path, BASE.replace("model: tiny-sdxl", "model:"), line=2)


def test_unknown_character_reference_refused(tmp_path):
    content = with_extra("characters:\n  mira: {name: Mira}\n")
    content = content.replace("prompt: a cat", "prompt: a cat\n    characters: [mria]")
    err = refused(tmp_path, content, match="unknown character 'mria'", line=6)
    assert any(p.hint and "mira" in p.hint for p in err.problems)


@pytest.mark.parametrize("fname", ["/etc/passwd", "../../../../etc/shadow", "/dev/zero",
                                   "x" * 5000, "~root/.ssh/id_rsa"])
def test_lora_paths_outside_refused(tmp_path, fname):
    content = with_extra(f"characters:\n  c:\n    loras: [{json.dumps(fname)}]\n")
    content = content.replace("prompt: a cat", "prompt: a cat\n    characters: [c]")
    refused(tmp_path, content)


def test_scheduler_typo_refused(tmp_path):
    refused(tmp_path, with_panel_fields("scheduler: " + "x" * 60), match="unknown scheduler",
            line=6)


# ---------------------------------------------------------------------------------------------
# templates: sandbox escapes


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ lipsum() }}",
    "{{ range(10) }}",
    "{{ dict(a=1) }}",
    "{{ namespace(a=1) }}",
    "{{ joiner() }}",
    "{{ cycler(1, 2) }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    "{{ vars.__class__ }}",
    "{{ vars['__class__'] }}",
    "{{ vars.items.__self__ }}",
    "{{ vars.get.__globals__ }}",
    "{{ title.mro() }}",
    "{{ title.__class__.mro() }}",
    "{{ '{0.__class__}'.format(title) }}",
    "{{ '{x}'.format_map(vars) }}",
    "{{ title.format() }}",
    "{{ title.encode() }}",
    "{{ title.zfill(10) }}",
    "{{ vars.update(a=1) }}",
    "{{ vars.pop('a') }}",
    "{{ vars.clear() }}",
    "{{ [].append(1) }}",
    "{{ [vars]|map(attribute='__class__.__mro__')|first }}",
    "{{ [1, 2]|sort(attribute='__class__') }}",
    "{{ [title]|selectattr('__class__')|list }}",
    "{{ config }}",
    "{{ request }}",
    "{{ __builtins__ }}",
    "{{ loop }}",
    "{{ caller() }}",
    "{{ varargs }}",
    "{{ self.b() }}",
]


@pytest.mark.parametrize("tpl", [
    "{{ vars|map(attribute='__class__')|list }}",
    "{{ [1]|sort(attribute='__class__') }}",
    "{{ [vars]|map(attribute='items')|list }}",
    "{{ vars.items }}",
    "{{ self }}",
    "{{ title.split }}",
])
def test_unsafe_attributes_refused_or_harmless(tmp_path, tpl):
    content = with_template(tpl) + "vars:\n  a: 1\ntitle: t\n"
    path = write(tmp_path, content)
    try:
        _, jobs = load_and_compile(path)
    except StoryError as err:
        assert _is_clean_template_refusal(err)
        return
    prompt = jobs[0].prompt
    for leak in ("<class", "__", "function", "module", "globals", "mro", "os."):
        assert leak not in prompt, prompt


def _is_clean_template_refusal(err: StoryError) -> bool:
    return any(word in p.message.lower()
               for p in err.problems
               for word in ("not allowed", "undefined", "unsafe", "no filter", "failed",
                            "syntax error"))


@pytest.mark.parametrize("tpl", ESCAPES)
def test_sandbox_escapes_refused_in_template(tmp_path, tpl):
    err = refused(tmp_path, with_template(tpl), line=7)
    assert _is_clean_template_refusal(err), err.format_message()
    assert "uid=" not in err.format_message()


@pytest.mark.parametrize("tpl", ESCAPES)
def test_sandbox_escapes_refused_in_panel_prompt(tmp_path, tpl):
    err = refused(tmp_path, with_prompt(tpl), line=5)
    assert _is_clean_template_refusal(err), err.format_message()


@pytest.mark.parametrize("tpl, what", [
    ("{% for i in [1, 2] %}{{ i }}{% endfor %}", "`for`"),
    ("{% set x = 1 %}{{ x }}", "`set`"),
    ("{% set x %}y{% endset %}", "`set`"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "macros"),
    ("{% call m() %}x{% endcall %}", "`call`"),
    ("{% include '/etc/passwd' %}", "`include`"),
    ("{% include '../../../../etc/passwd' ignore missing %}", "`include`"),
    ("{% import '/etc/passwd' as p %}", "`import`"),
    ("{% from '/etc/passwd' import x %}", "`import`"),
    ("{% extends '/etc/passwd' %}", "`extends`"),
    ("{% block b %}x{% endblock %}", "`block`"),
    ("{% filter upper %}x{% endfilter %}", "`filter`"),
    ("{% with a = 1 %}{{ a }}{% endwith %}", "`with`"),
    ("{% autoescape true %}x{% endautoescape %}", "scopes"),
    ("{% if true %}{% for i in [1] %}{% endfor %}{% endif %}", "`for`"),
    ("{{ 'x' if true else 'y' }}{% if 1 %}{% set ns = 1 %}{% endif %}", "`set`"),
])
def test_forbidden_statements_refused(tmp_path, tpl, what):
    err = refused(tmp_path, with_template(tpl), match="not allowed in story templates", line=7)
    assert any(what in p.message for p in err.problems)
    assert "root:" not in err.format_message()


@pytest.mark.parametrize("tpl", [
    "{% break %}", "{% continue %}", "{% do vars.update(a=1) %}", "{% debug %}",
    "{% trans %}x{% endtrans %}", "{{ ", "{% if %}", "{{ 1 + }}", "{{ '\\x' }}{{",
    "{% endraw %}", "{# unclosed", "{{ ''' }}",
])
def test_unknown_or_broken_statements_refused(tmp_path, tpl):
    refused(tmp_path, with_template(tpl), match="template syntax error", line=7)


def test_undefined_variable_gets_hint(tmp_path):
    err = refused(tmp_path, with_template("{{ titel }}"), match="undefined", line=7)
    assert any(p.hint and "title" in p.hint for p in err.problems)


def test_template_error_line_in_block_scalar(tmp_path):
    content = BASE + "templates:\n  prompt: |\n    {{ prompt }}\n    {{ nope }}\n"
    refused(tmp_path, content, match="undefined", line=9)


# ---------------------------------------------------------------------------------------------
# templates: resource bombs


@pytest.mark.parametrize("tpl, match", [
    ("{{ 'a' * 10**9 }}", "length limit"),
    ("{{ 10**9 * 'a' }}", "length limit"),
    ("{{ ['a'] * 10**9 }}", "length limit"),
    ("{{ 'a' * 8000 * 8000 }}", "length limit"),
    ("{{ ('a' * 8000) * 2 }}", "length limit"),
    ("{{ '%9999999999d' % 1 }}", "not allowed"),
    ("{{ '%s' % title }}", "not allowed"),
    ("{{ 9 ** 99999999 }}", "too large"),
    ("{{ 2 ** 10000 }}", "too large"),
    ("{{ 2.0 ** 4096 }}", "too large"),
    ("{{ range(10**9)|list|join }}", "not allowed"),
    ("{{ ('x' * 100)|replace('x', 'y' * 100) }}", "length limit"),
    ("{{ ('x' * 100).replace('x', 'y' * 100) }}", "length limit"),
    ("{{ ('x' * 8000).replace('', 'y') }}", "length limit"),
    ("{{ 'x'|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx')"
     "|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx')"
     "|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx')"
     "|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx')|replace('x', 'xx') }}",
     "length limit"),
    ("{{ ('a' * 8000) ~ ('a' * 8000) }}", "longer than"),
    ("{{ vars }}" * 1, None),
    ("{{ 1 / 0 }}", "division by zero"),
    ("{{ 10 // 0 }}", "division"),
    ("{{ 2.0 ** 64 ** 64 }}", "failed"),
    ("{{ (10**64)|float ** 60 }}", None),
    ("{{ [1]|select('divisibleby', 0)|list }}", "failed"),
    ("{{ 'x'|map('nosuchfilter')|list }}", "failed"),
    ("{{ [1]|select('nosuchtest')|list }}", "failed"),
])
def test_template_resource_bombs_refused(tmp_path, tpl, match):
    if tpl == "{{ vars }}":
        content = with_template(tpl) + "vars:\n  s: " + "x" * 9000 + "\n"
        refused(tmp_path, content, match="longer than", line=7)
        return
    if match is None:
        refused(tmp_path, with_template(tpl), line=7)
        return
    refused(tmp_path, with_template(tpl), match=match, line=7)


def test_concat_chain_output_capped(tmp_path):
    tpl = "{{ " + " ~ ".join(["('a' * 8000)"] * 100) + " }}"
    refused(tmp_path, with_template(tpl), match="longer than 8,000", line=7)


def test_many_output_chunks_capped(tmp_path):
    tpl = "{{ 'a' * 8000 }}" * 300
    refused(tmp_path, with_template(tpl), match="longer than 8,000", line=7)


def test_huge_template_refused(tmp_path):
    refused(tmp_path, with_template("{{ title }}" + "x" * 9000), line=7)


def test_template_in_every_panel_is_refused_fast(tmp_path):
    panels = "".join(f"  - id: p{i}\n    prompt: \"{{{{ 'a' * 10**9 }}}}\"\n" for i in range(300))
    err = refused(tmp_path, "version: 1\nmodel: tiny-sdxl\npanels:\n" + panels,
                  match="length limit")
    # Reporting stops at MAX_PROBLEMS per file, with a line saying how many more there were.
    assert len([p for p in err.problems if "length limit" in p.message]) == 200
    assert "100 more problems not shown" in err.problems[-1].message


@pytest.mark.parametrize("tpl", ["{{ 'x'|center(10**9) }}", "{{ title|format(1) }}",
                                 "{{ vars|attr('__class__') }}", "{{ title|uper }}",
                                 "{{ title is nosuchtest }}"])
def test_unknown_filter_or_test_refused(tmp_path, tpl):
    refused(tmp_path, with_template(tpl), line=7)


def test_truncate_with_tiny_length_is_safe(tmp_path):
    # Jinja's own truncate asserts on this; storyboard's replacement just cuts.
    path = tmp_path / "story.yaml"
    path.write_text(with_template("{{ 'abcdef'|truncate(4) }}"), encoding="utf-8")
    _, (job,) = load_and_compile(path)
    assert job.prompt == "a..."


@pytest.mark.parametrize("tpl", ["{{ " + "(" * 100 + "1" + ")" * 100 + " }}",
                                 "{{ " + "-" * 500 + "1 }}",
                                 "{{ " + "not " * 1500 + "1 }}",
                                 "{{ " + "[" * 300 + "]" * 300 + " }}"])
def test_deeply_nested_template_refused(tmp_path, tpl):
    refused(tmp_path, with_template(tpl), line=7)


def test_power_tower_refused(tmp_path):
    refused(tmp_path, with_template("{{ 10**64**64**64 > 1 }}"), line=7)


def test_power_tower_does_not_hang(tmp_path):
    assert_refused_isolated(tmp_path, with_template("{{ 10**64**64**64**64 > 1 }}"))


def test_join_memory_bomb_refused(tmp_path):
    refused(tmp_path, with_template("{{ (['a' * 8000] * 8000) | join | length }}"), line=7)


def test_sum_of_lists_refused(tmp_path):
    refused(tmp_path, with_template("{{ ([[1] * 1000] * 300) | sum(start=[]) | length }}"),
            line=7)


def test_striptags_on_concatenation_refused(tmp_path):
    tpl = "{{ (" + " ~ ".join(["('<>' * 4000)"] * 120) + ") | striptags | length }}"
    assert_refused_isolated(tmp_path, with_template(tpl))


def test_vars_alias_amplification_refused(tmp_path):
    content = (with_template("{{ vars.b | join | length }}") + "vars:\n  s: &s '"
               + "x" * 19_990 + "'\n  b: [" + ", ".join(["*s"] * 2000) + "]\n")
    refused(tmp_path, content)


# ---------------------------------------------------------------------------------------------
# cost amplification (run isolated: these hang when the bug is present)


def test_many_duplicate_keys_refused_fast(tmp_path):
    assert_refused_isolated(tmp_path, BASE + "vars: {" + ", ".join(["a: 1"] * 6000) + "}\n")


def test_many_unknown_character_refs_refused_fast(tmp_path):
    chars = "characters:\n" + "".join(f"  c{i}: {{}}\n" for i in range(3000))
    refs = "[" + ", ".join(f"x{i}" for i in range(2000)) + "]"
    content = BASE.replace("prompt: a cat", "prompt: a cat\n    characters: " + refs) + chars
    assert_refused_isolated(tmp_path, content)


def test_large_file_with_late_attack_refused_fast(tmp_path):
    row = "  k{}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n"
    body = "vars:\n" + "".join(row.format(i) for i in range(7000))
    content = BASE + body + "title: !!python/name:os.system\n"
    assert len(content.encode()) < 1 << 20
    assert_refused_isolated(tmp_path, content)


def test_isolated_runner_sees_fast_refusal(tmp_path):
    # The harness used above: a plain hostile input is refused well within budget.
    path = write(tmp_path, _laughs(10, 10, style="list"))
    outcome, secs = run_isolated(path)
    assert outcome == "STORYERROR" and secs is not None and secs < FAST_S


# ---------------------------------------------------------------------------------------------
# the command line


CLI_CASES = {
    "alias-bomb": (_laughs(10, 10, style="list"), None),
    "python-tag": (BASE + "title: !!python/object/apply:os.system ['id']\n", 6),
    "duplicate-key": (BASE + "model: tiny-kolors\n", 6),
    "two-docs": (BASE + "---\nx: 1\n", 6),
    "deep": (BASE + "vars: " + "[" * 5000 + "]" * 5000 + "\n", 6),
    "gbk": ((BASE + "title: 紫发女孩\n").encode("gbk"), 6),
    "utf16": (BASE.encode("utf-16"), 1),
    "empty": (b"", 1),
    "huge-int": (with_panel_fields("seed: " + "9" * 10_000), 6),
    "inf": (with_panel_fields("guidance: .inf"), 6),
    "bad-id": (BASE.replace("id: p1", "id: ../../etc"), 4),
    "unknown-key": (BASE + "promt: x\n", 6),
    "escape": (with_template("{{ ''.__class__.__mro__ }}"), 7),
    "include": (with_template("{% include '/etc/passwd' %}"), 7),
    "big-repeat": (with_template("{{ 'a' * 10**9 }}"), 7),
    "prompt-escape": (with_prompt("{{ cycler.__init__.__globals__ }}"), 5),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_validate_refuses(tmp_path, name):
    content, line = CLI_CASES[name]
    path = write(tmp_path, content)
    start = time.perf_counter()
    assert_cli_refuses(path, line)
    assert time.perf_counter() - start < FAST_S


@pytest.mark.parametrize("tpl", ["{{ ''.__class__ }}", "{{ 'a' * 10**9 }}",
                                 "{% include '/etc/passwd' %}"])
def test_templates_in_panel_negative_refused(tmp_path, tpl):
    refused(tmp_path, with_panel_fields("negative: " + json.dumps(tpl)), line=6)


def test_cli_plan_refuses(tmp_path):
    path = write(tmp_path, with_template("{{ self._TemplateReference__context }}"))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 2
    assert not (result.exception and not isinstance(result.exception, SystemExit))
    assert f"{path}:7" in result.output and "Traceback" not in result.output


def test_cli_validate_reports_every_file(tmp_path):
    bad1 = write(tmp_path, BASE + "model: x\n", "a.yaml")
    bad2 = write(tmp_path, BASE.replace("id: p1", "id: CON"), "b.yaml")
    good = write(tmp_path, BASE, "c.yaml")
    result = CliRunner().invoke(cli, ["validate", str(bad1), str(bad2), str(good)])
    assert result.exit_code == 2
    assert f"{bad1}:6" in result.output and f"{bad2}:4" in result.output
    assert f"{good}: ok" in result.output


def test_cli_folder_and_missing_file(tmp_path):
    for target in (tmp_path, tmp_path / "missing.yaml"):
        result = CliRunner().invoke(cli, ["validate", str(target)])
        assert result.exit_code == 2
        assert "Traceback" not in result.output


def test_cli_unknown_filter(tmp_path):
    assert_cli_refuses(write(tmp_path, with_template("{{ title|center(99) }}")), 7)


def test_cli_huge_hex_seed(tmp_path):
    assert_cli_refuses(write(tmp_path, with_panel_fields("seed: 0x" + "f" * 5000)), 6)


def test_template_error_line_after_nel(tmp_path):
    content = BASE + "title: a\x85b\ntemplates:\n  prompt: |\n    line1\n    {{ nope }}\n"
    # YAML 1.1 parsers break lines at U+0085; editors do not. Refused where it stands.
    refused(tmp_path, content, match="U+0085", line=6)


# ---------------------------------------------------------------------------------------------
# fuzzing: arbitrary input never escapes as anything but StoryError


def _outcome(path: Path) -> str:
    try:
        load_and_compile(path)
        return "ok"
    except StoryError as exc:
        assert exc.problems
        exc.format_message()  # formatting must not crash either
        return "refused"


@settings(max_examples=150, deadline=1500, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(tmp_path, data):
    path = write(tmp_path, data, "fuzz.yaml")
    assert _outcome(path) in ("ok", "refused")


_YAML_BITS = st.sampled_from([
    "version: 1\n", "model: tiny-sdxl\n", "panels:\n", "  - id: p1\n", "    prompt: x\n",
    "&a ", "*a ", "<<: ", "? ", ": ", "- ", "[", "]", "{", "}", ", ", "!!str ", "!x ", "'",
    '"', "|\n", ">\n", "#", "---\n", "...\n", "%YAML 1.2\n", "\t", "  ", "\n", "0x1f", "1e999",
    ".nan", "-1", "18446744073709551616", "null", "true", "\ufeff", "\x85", "\u2028", "é",
    "{{ vars }}", "{% for %}", "seed: ", "width: ", "id: ", "vars:\n", "templates:\n",
    "  prompt: ", "characters:\n", "  c: ", "layout: ",
])


@settings(max_examples=300, deadline=1500, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(_YAML_BITS, max_size=40))
def test_fuzz_yamlish_text(tmp_path, bits):
    path = write(tmp_path, "".join(bits), "fuzz.yaml")
    assert _outcome(path) in ("ok", "refused")


_TEMPLATE_BITS = st.sampled_from([
    "{{ ", " }}", "{% if ", "{% else %}", "{% endif %}", " %}", "(", ")", "[", "]", "{", "}",
    "'a'", "1", "10", "64", " + ", " - ", " * ", " // ", " % ", " ~ ", " / ", ".", ",",
    ":", "vars", "title", "cast", "characters", "prompt", "panel", "sep", "style", "self",
    "__class__", "_x", "lower()", "split()", "replace('a', 'b')", "items()", "|lower", "|join",
    "|length", "|list", "|first", "|sort", "|int", "|string", "|trim", " if ", " else ",
    " not ", " and ", " or ", " in ", " is defined", "true", "none", "{#", "#}",
])


@settings(max_examples=300, deadline=1500, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(_TEMPLATE_BITS, max_size=25))
def test_fuzz_templates(tmp_path, bits):
    path = write(tmp_path, with_template("".join(bits)), "fuzz.yaml")
    assert _outcome(path) in ("ok", "refused")
