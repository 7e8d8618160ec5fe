"""The package layout's rules (ARCHITECTURE.md, "Rules"), checked on the source itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "storyboard"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")


def dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def phase(module: str) -> str:
    """The package a module belongs to: `storyboard.engine.speed.apply` -> `engine`; a
    top-level module (`storyboard.errors`) is its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in ``path``."""
    tree = ast.parse(path.read_text("utf-8"))
    here = dotted(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [alias.name for alias in node.names], node.lineno))
    return out


def test_every_module_says_what_goes_in_and_out():
    missing = [str(p.relative_to(ROOT)) for p in MODULES
               if not ast.get_docstring(ast.parse(p.read_text("utf-8")))]
    assert missing == []


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES
            if (n := len(p.read_text("utf-8").splitlines())) > 500}
    assert long == {}


def test_nothing_imports_another_packages_private_names():
    found = []
    for path in MODULES:
        here = phase(dotted(path))
        for module, names, line in imports(path):
            if not module.startswith("storyboard") or phase(module) == here:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") and not part.startswith("__")
                              for part in module.split(".")):
                found.append(f"{path.relative_to(ROOT)}:{line}: {module} {private}")
    assert found == []


def test_only_the_cli_knows_click():
    found = [f"{p.relative_to(ROOT)}:{line}" for p in MODULES
             if phase(dotted(p)) != "cli"
             for module, _, line in imports(p) if module.split(".")[0] == "click"]
    assert found == []


def test_only_the_engine_and_lora_files_import_torch_and_friends():
    allowed = {"engine", "loras"}
    found = [f"{p.relative_to(ROOT)}:{line}: {module}" for p in MODULES
             if phase(dotted(p)) not in allowed
             for module, _, line in imports(p) if module.split(".")[0] in HEAVY]
    # tokens.py may read an old repo's vocab.json through transformers' CLIP tokenizer (no
    # torch behind it); every other phase stays clear.
    assert found == [f"storyboard/plan/tokens.py:{_line('plan/tokens.py', 'CLIPTokenizer')}: "
                     "transformers"]


def _line(relative: str, text: str) -> int:
    lines = (PACKAGE / relative).read_text("utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if "import" in line and text in line)


def test_validating_and_planning_imports_no_heavy_library():
    """In a fresh interpreter: import every torch-free package, validate, compile and plan the
    examples, and look at what got imported."""
    code = f"""
import importlib, pkgutil, sys
import storyboard
for package in ("story", "plan", "training", "output", "commands"):
    pkg = importlib.import_module("storyboard." + package)
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
for name in ("errors", "constants", "samplers", "families", "paths", "options", "weightfiles"):
    importlib.import_module("storyboard." + name)
from storyboard.commands import load_and_compile
from storyboard.options import RuntimeOptions
from storyboard.plan import plan_render
for name in ("quickstart", "course-kolors", "two-friends-sdxl"):
    story, jobs = load_and_compile("examples/" + name + ".yaml")
    plan_render(jobs, RuntimeOptions().with_story(story.spec.render), device="cuda",
                dtype="fp16")
print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


# Facts that belong to one family, and must be read from families.py anywhere else.
FAMILY_FACTS = ("StableDiffusionXLPipeline", "KolorsPipeline", "StableDiffusionPipeline",
                "stabilityai/stable-diffusion-xl-base-1.0",
                "stable-diffusion-v1-5/stable-diffusion-v1-5", "conditioner.embedders.1.",
                "cond_stage_model.")
FAMILY_NAMES = {"sdxl", "kolors", "sd15"}


def test_family_facts_live_in_the_registry_alone():
    found = []
    for path in MODULES:
        if path.name == "families.py":
            continue
        tree = ast.parse(path.read_text("utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                        ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings \
                    and any(fact in node.value for fact in FAMILY_FACTS):
                found.append(f"{where}: {node.value[:60]!r}")
            elif isinstance(node, (ast.Name, ast.alias)) \
                    and (getattr(node, "id", None) or getattr(node, "name", "")) in FAMILY_FACTS:
                found.append(f"{where}: {getattr(node, 'id', None) or node.name}")
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                values = node.keys if isinstance(node, ast.Dict) else node.elts
                named = {v.value for v in values if isinstance(v, ast.Constant)} & FAMILY_NAMES
                if len(named) >= 2:  # a list of families: the registry's FAMILY_NAMES
                    found.append(f"{where}: {sorted(named)}")
    assert found == []
