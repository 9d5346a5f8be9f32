"""docs/isa.md is generated from hw/isa.py; a stale page fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hw import isa

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gen_isa_doc.py"


def test_isa_doc_is_current():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_isa_doc_lists_every_opcode_and_field():
    text = (REPO_ROOT / "docs" / "isa.md").read_text()
    for spec in isa.OPCODES.values():
        assert f"`0x{spec.code:02X}` {spec.name}" in text
        for name, _kind, lsb, width in isa.field_layout(spec.name):
            assert f"| `{name}` | `{_kind}` | [{lsb + width - 1}:{lsb}] |" in text


def test_isa_doc_states_each_opcodes_meaning():
    """Engine, cost family and every register and range of the table are on the page."""
    text = (REPO_ROOT / "docs" / "isa.md").read_text()
    sections = text.split("\n### ")[1:]
    for spec in isa.OPCODES.values():
        section = next(s for s in sections if f"`0x{spec.code:02X}` {spec.name}\n" in s)
        assert section.startswith(f"{spec.engine}: "), spec.name
        entry = section.split(f"`0x{spec.code:02X}` {spec.name}\n", 1)[1].split("\n#### ")[0]
        assert f"- cost family `{spec.cost}`" in entry
        for name in spec.reads + spec.writes:
            assert f" `{name}`" in entry, (spec.name, name)
        for r in spec.vreads + spec.vwrites + spec.hreads + spec.hwrites:
            assert f"`{r}`" in entry, (spec.name, str(r))
