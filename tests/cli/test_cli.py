"""The command line: plan output (golden), schema freshness, init, and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import EXAMPLES, GOLDEN, ROOT, check_golden, run_cli
from storyboard.cli.story_cmds import schema_text
from storyboard.story import load_story

PLAN_KEYS = {"panel", "prompt", "negative_prompt", "seed", "width", "height", "steps",
             "guidance", "scheduler", "hash"}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """`plan` shows what a build would render now: with nothing cached, every panel."""
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "empty-cache"))


@pytest.mark.parametrize("name", ["quickstart", "course-kolors"])
def test_plan_json_golden(name, empty_cache):
    result = run_cli("plan", "--json", f"{name}.yaml", cwd=EXAMPLES)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert all(PLAN_KEYS <= set(job) for job in plan["jobs"])
    check_golden(GOLDEN / "plans" / f"{name}.json", result.output)


def test_plan_text_golden(empty_cache):
    result = run_cli("plan", "quickstart.yaml", cwd=EXAMPLES)
    assert result.exit_code == 0, result.output
    check_golden(GOLDEN / "plans" / "quickstart.txt", result.output)


def test_plan_shows_each_panels_batch_and_whether_it_would_compile(empty_cache, tmp_path):
    panels = "".join(f"  - {{id: p{i}, prompt: cat {i}}}\n" for i in range(40))
    story = tmp_path / "big.yaml"
    story.write_text("version: 1\nmodel: tiny-sdxl\ndefaults: {steps: 50}\npanels:\n" + panels,
                     encoding="utf-8")
    result = run_cli("plan", str(story))
    assert result.exit_code == 0, result.output
    headers = {line.split()[0]: line for line in result.output.splitlines()
               if line.startswith("p") and "seed" in line}
    assert headers["p0"].endswith("batch 1/5") and headers["p39"].endswith("batch 5/5")
    assert "render (for --device cuda) in fp16: 5 batches (8+8+8+8+8; up to 8 panels per call)" \
        in result.output
    # Whether compiling pays is for the build to decide, by this machine's timings.
    assert "compile: auto (2000 panel-steps over 1 batch shape): only batch shapes this " \
        "machine has compiled before" in result.output
    smaller = run_cli("plan", "--batch-size", "6", "--no-compile", str(story)).output
    assert "7 batches (6+6+6+6+6+5+5" in smaller and "compile: no (" in smaller
    assert "compile: yes (2000 panel-steps" in run_cli("plan", "--compile", str(story)).output
    on_cpu = json.loads(run_cli("plan", "--json", "--device", "cpu", str(story)).output)
    assert on_cpu["render"]["batch_size"] == 2 and on_cpu["render"]["speedups"] == []
    assert on_cpu["jobs"][39]["batch"] == 19 and not on_cpu["render"]["compiles"]
    forced = json.loads(run_cli("plan", "--json", "--compile", str(story)).output)["render"]
    assert forced["compiles"] and forced["speedups"][-1] == "cross_kv_once"


def test_plan_leaves_out_what_is_cached(empty_cache, tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text("version: 1\nmodel: tiny-sdxl\ndefaults: {steps: 2, width: 64, "
                     "height: 64}\npanels:\n  - {id: a, prompt: x}\n  - {id: b, prompt: y}\n",
                     encoding="utf-8")
    assert run_cli("build", "-q", "--only", "a", str(story)).exit_code == 0
    plan = json.loads(run_cli("plan", "--json", str(story)).output)
    assert [j["batch"] for j in plan["jobs"]] == [None, 0]
    assert run_cli("build", "-q", str(story)).exit_code == 0
    text = run_cli("plan", str(story)).output
    assert "render: nothing to do, every panel is cached" in text
    assert json.loads(run_cli("plan", "--json", "--force", str(story)).output)[
        "render"]["batches"] == [["a", "b"]]


def test_course_story_matches_the_notebook():
    """Seeds, CFG 4, 50 steps, 1024x1024 and the shared negative, as the course renders them."""
    jobs = json.loads(run_cli("plan", "--json", "course-kolors.yaml", cwd=EXAMPLES).output)[
        "jobs"]
    assert [j["seed"] for j in jobs] == [0, 1, 2, 5, 0, 1, 7, 0]
    assert {(j["guidance"], j["steps"], j["width"], j["height"]) for j in jobs} == {
        (4.0, 50, 1024, 1024)}
    assert all(j["negative_prompt"].startswith("丑陋、变形、嘈杂、模糊、低对比度") for j in jobs)
    assert jobs[2]["negative_prompt"].endswith("色情擦边")
    assert jobs[3]["negative_prompt"].endswith("扭曲的手指，多余的手指")
    assert all(j["prompt"].startswith("二次元，紫色头发的小女孩，") for j in jobs)
    assert "粉色吊带漏肩连衣裙" in jobs[1]["prompt"]


def test_plan_of_invalid_story_exits_2():
    result = run_cli("plan", "bad-types.yaml", cwd=GOLDEN / "errors")
    assert result.exit_code == 2
    assert "bad-types.yaml:8:11: panels[0].seed" in result.output


def test_checked_in_schema_is_current():
    on_disk = (ROOT / "schemas" / "story.schema.json").read_text("utf-8")
    assert on_disk == schema_text(), "run: storyboard schema > schemas/story.schema.json"
    assert run_cli("schema").output == on_disk


def test_schema_describes_the_format():
    schema = json.loads(schema_text())
    assert schema["required"] == ["version", "model", "panels"]
    assert schema["additionalProperties"] is False
    panel = schema["$defs"]["PanelSpec"]
    assert {"id", "characters", "prompt", "negative", "seed", "caption"} <= set(panel["properties"])


def test_init_writes_a_valid_story_and_refuses_to_overwrite(tmp_path):
    result = run_cli("init", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "story.schema.json").read_text("utf-8") == schema_text()
    story = load_story(tmp_path / "story.yaml")
    assert story.warnings == ()
    text = (tmp_path / "story.yaml").read_text("utf-8")
    assert text.startswith("# yaml-language-server: $schema=story.schema.json")
    assert text.count("\n#") > 10, "the starter story explains itself in comments"

    again = run_cli("init", cwd=tmp_path)
    assert again.exit_code == 2 and "already exists" in again.output
    assert run_cli("init", "--force", cwd=tmp_path).exit_code == 0


def test_init_never_overwrites_a_schema_file_of_the_users(tmp_path):
    mine = tmp_path / "story.schema.json"
    mine.write_text('{"title": "my own schema"}')
    result = run_cli("init", "other.yaml", cwd=tmp_path)
    assert result.exit_code == 2 and "story.schema.json" in result.output
    assert mine.read_text() == '{"title": "my own schema"}' and not (tmp_path / "other.yaml").exists()
    # storyboard's own schema (an older version's, say) is refreshed without --force.
    mine.write_text(schema_text().replace("Stable id", "An older description"))
    assert run_cli("init", "other.yaml", cwd=tmp_path).exit_code == 0
    assert mine.read_text() == schema_text()


def test_validate_and_plan_never_import_torch():
    code = (
        "import sys\n"
        "from storyboard.cli import cli\n"
        "for args in (['validate', 'examples/course-kolors.yaml'], ['plan', '--json',"
        " 'examples/two-friends-sdxl.yaml'], ['plan', 'examples/quickstart.yaml']):\n"
        "    try:\n"
        "        cli(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text("utf-8")
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    demo, tests = blocks
    assert "storyboard" in demo and "pytest" in tests
    head = readme.split("```bash", 1)[0]
    assert head.count("\n") < 12, "the commands come first"
    ci = (ROOT / ".ci" / "run").read_text("utf-8")
    test_cmd = tests.splitlines()[-1].split("&&")
    for part in test_cmd:
        part = part.strip()
        if part.startswith(("python3 -m venv", ". .venv")):
            continue
        assert part in ci, f"{part!r} from the README is not in .ci/run"


def test_version_option():
    result = run_cli("--version")
    assert result.exit_code == 0 and "storyboard" in result.output


def test_readme_shows_real_output():
    readme = (ROOT / "README.md").read_text("utf-8")
    validate = (GOLDEN / "errors" / "readme.txt").read_text("utf-8").split("\n", 1)[1]
    assert validate.replace("readme.yaml", "story.yaml") in readme
    plan = (GOLDEN / "plans" / "quickstart.txt").read_text("utf-8")
    assert "\n".join(plan.splitlines()[:6]) in readme


def test_plan_batches_twins_as_build_renders_them(empty_cache, tmp_path):
    """Panels with identical settings render once: plan shows the twin in its original's batch,
    and plans the batches from distinct jobs, as build renders them."""
    story = tmp_path / "story.yaml"
    story.write_text("version: 1\nmodel: tiny-sdxl\ndefaults: {steps: 2, width: 64, height: 64}\n"
                     "panels:\n  - {id: a, prompt: a cat, seed: 1}\n"
                     "  - {id: b, prompt: a dog, seed: 2}\n"
                     "  - {id: twin, prompt: a cat, seed: 1}\n", encoding="utf-8")
    plan = json.loads(run_cli("plan", "--json", "--batch-size", "2", str(story)).output)
    assert plan["render"]["batches"] == [["a", "b"]]
    assert [j["batch"] for j in plan["jobs"]] == [0, 0, 0]
    assert "cuda:1" in run_cli("plan", "--json", "--device", "cuda:1", str(story)).output
    bad = run_cli("plan", "--device", "gpu", str(story))
    assert bad.exit_code == 2 and "expected cuda, cuda:N, mps or cpu" in bad.output


def test_a_process_that_used_the_gpu_ends_at_once_with_its_code(monkeypatch):
    """After a build on the GPU every file is written and closed; tearing down the CUDA
    context only made the writer wait (2.2 s for SDXL on an H200)."""
    import os

    import torch

    from storyboard import cli as cli_module

    ended = []
    monkeypatch.setattr(os, "_exit", lambda code: ended.append(code))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    for code, expected in ((None, 0), (0, 0), (1, 1), (2, 2), (130, 130)):
        cli_module._exit(code)
        assert ended[-1] == expected
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with pytest.raises(SystemExit) as leaving:
        cli_module._exit(2)
    assert leaving.value.code == 2 and len(ended) == 5
