"""`storyboard lora inspect`, text and --json, on the demo LoRAs and on a file that is no LoRA,
compared with golden files (tests/golden/loras/<name>.txt). The repo root in the output is
written ``<ROOT>``, so the goldens hold on any machine.

Rewrite the goldens with STORYBOARD_UPDATE_GOLDENS=1, then review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import EXAMPLES, GOLDEN, ROOT, check_golden, run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("session_cache")

LORAS = {
    "mira": EXAMPLES / "loras" / "mira.safetensors",
    "bolt": EXAMPLES / "loras" / "bolt.safetensors",
    "hero": GOLDEN / "errors" / "loras" / "hero.safetensors",  # 15 bytes of text
}


def _transcript(path: Path) -> str:
    """Both inspections of ``path``, as a terminal would show them, with their exit codes."""
    parts = []
    for args in (["lora", "inspect", str(path)], ["lora", "inspect", "--json", str(path)]):
        result = run_cli(*args)
        assert "Traceback" not in result.output
        shown = " ".join(["storyboard", *args])
        parts.append(f"$ {shown}\n{result.output}[exit {result.exit_code}]\n")
    return "\n".join(parts).replace(str(ROOT), "<ROOT>")


@pytest.mark.parametrize("name", sorted(LORAS))
def test_lora_inspect_golden(name):
    check_golden(GOLDEN / "loras" / f"{name}.txt", _transcript(LORAS[name]))
