"""The command line: plan output (golden), schema freshness, init, and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import EXAMPLES, GOLDEN, ROOT, check_golden, run_cli
from storyboard.cli import schema_text
from storyboard.spec import load_story

PLAN_KEYS = {"panel", "prompt", "negative_prompt", "seed", "width", "height", "steps",
             "guidance", "scheduler", "hash"}


@pytest.mark.parametrize("name", ["quickstart", "course-kolors"])
def test_plan_json_golden(name):
    result = run_cli("plan", "--json", f"{name}.yaml", cwd=EXAMPLES)
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.output)
    assert all(PLAN_KEYS <= set(job) for job in jobs)
    check_golden(GOLDEN / "plans" / f"{name}.json", result.output)


def test_plan_text_golden():
    result = run_cli("plan", "quickstart.yaml", cwd=EXAMPLES)
    assert result.exit_code == 0, result.output
    check_golden(GOLDEN / "plans" / "quickstart.txt", result.output)


def test_course_story_matches_the_notebook():
    """Seeds, CFG 4, 50 steps, 1024x1024 and the shared negative, as the course renders them."""
    jobs = json.loads(run_cli("plan", "--json", "course-kolors.yaml", cwd=EXAMPLES).output)
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
    assert story.warnings == []
    text = (tmp_path / "story.yaml").read_text("utf-8")
    assert text.startswith("# yaml-language-server: $schema=story.schema.json")
    assert text.count("\n#") > 10, "the starter story explains itself in comments"

    again = run_cli("init", cwd=tmp_path)
    assert again.exit_code == 2 and "already exists" in again.output
    assert run_cli("init", "--force", cwd=tmp_path).exit_code == 0


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
