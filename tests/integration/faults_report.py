"""The figures of the fault-injection scenarios (tests/integration/test_faults.py): one row per
scenario, printed at the end of the run and written to ``.omniprofile/faults-report.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT = Path(".omniprofile/faults-report.json")


@dataclass
class Figures:
    scenario: str
    events: int = 0  # distinct valid events sent
    kills: int = 0
    outages: str = ""
    bad_inputs: int = 0
    lost: int = 0
    duplicated: int = 0
    differing: int = 0  # (view, profile) pairs that differ from the oracle
    recovery_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""


FIGURES: list[Figures] = []


def table(rows: list[Figures]) -> str:
    head = ["scenario", "events", "kills", "outage", "bad inputs", "lost", "duplicated", "views differing", "recovery s", "run s", "note"]
    body = [[f.scenario, f"{f.events:,}", str(f.kills), f.outages or "-", f"{f.bad_inputs:,}", str(f.lost),
             str(f.duplicated), str(f.differing), ", ".join(f"{r:.1f}" for r in f.recovery_s) or "-", f"{f.seconds:.0f}", f.note]
            for f in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write(rows: list[Figures], full: bool) -> Path:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({"full": full, "scenarios": [asdict(f) for f in rows]}, indent=2) + "\n")
    return REPORT
