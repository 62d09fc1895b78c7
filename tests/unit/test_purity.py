"""``models/`` is the functional core: it never imports Faust, Kafka clients, Redis or mode.

Checked twice: at run time in a fresh interpreter (nothing pulls them in transitively), and
statically over every module of the package (also modules the import line does not name).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"faust", "aiokafka", "kafka", "redis", "mode"}
CORE_MODULES = (
    "models.events", "models.ingest", "models.profile", "models.view", "models.outputs", "models.synthetic",
    "models.features", "models.segments", "models.segmentation", "models.personas", "models.journeys",
    "models.identity", "models.stitching",
)


def test_importing_the_core_loads_no_broker_or_redis_client():
    code = (
        f"import {', '.join(CORE_MODULES)}; import sys, json; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_check_itself_can_fail():
    """The same probe sees a forbidden package once something imports it (here: a stand-in)."""
    code = (
        "import sys, types, json; sys.modules['redis'] = types.ModuleType('redis'); import models.events; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["redis"]


def test_no_module_of_the_core_imports_them():
    modules = sorted((ROOT / "models").rglob("*.py"))
    assert {p.stem for p in modules} >= {m.split(".")[1] for m in CORE_MODULES}
    offenders = []
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module",
                "__import__",
            ):
                names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
