"""keel's layers (``.importlinter``) hold, they have teeth, and no import hides in a function.

A layer imports only the layers below it (cli, graphs.studio → console → api, evals → engine →
graphs.support → nodes → graphs.state, graphs.context → gateway → tools, guards → keel),
no package has an import cycle among its modules, plus the forbidden contracts. Checked by import-linter on the real tree, then on a copy
with one violating import added per contract, which must break it. An import inside a
function (or under ``if TYPE_CHECKING:``) would hide a cycle from the reader while the
linter still counts it, so first-party imports live at module level only. One listed
exception (:data:`DEFERRED`): the CLI, the top layer, imports the HTTP stack inside the two
commands that serve or document it, so the other commands do not pay its start-up second;
the top layer importing a lower one cannot make a cycle.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFERRED = {
    "cli/service.py": {"api.app", "console"},
    "cli/apidocs.py": {"api.app", "api.reference", "console"},
}
"""First-party imports allowed inside a function, by file: the HTTP stack in the CLI commands
that need it (``keel serve``, ``keel api-docs``)."""
PACKAGES = ("cli", "console", "api", "evals", "engine", "graphs", "nodes", "gateway", "tools", "guards", "keel")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail("import-linter is a development dependency; install '.[dev]'")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_layer_contracts_hold():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _source_copy(dest: Path) -> None:
    """The packages' Python files and the contract file, nothing else."""
    shutil.copy(ROOT / ".importlinter", dest / ".importlinter")
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            target = dest / f.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)


VIOLATIONS: list[tuple[dict[str, str], str]] = [
    ({"keel/_probe.py": "import engine.runtime"}, "Layers"),  # the ground floor reaching up
    ({"guards/_probe.py": "import tools.runner"}, "Layers"),  # siblings of one layer
    ({"nodes/_probe.py": "import graphs.support"}, "Layers"),  # a node importing its graph: a cycle
    ({"api/_probe.py": "import console"}, "Layers"),  # the API reaching up into the review console
    ({"engine/_probe.py": "import fastapi"}, "HTTP stays in the API"),
    ({"gateway/_probe.py": "import tools.registry"}, "never reaches the tools"),
    ({"guards/_probe.py": "import langgraph"}, "plain Python"),
    ({"nodes/_probe.py": "from keel.config import get_settings"}, "only through their SupportContext"),
    ({"engine/queue/_probe_a.py": "import engine.queue._probe_b", "engine/queue/_probe_b.py": "import engine.queue._probe_a"},
     "No import cycles"),  # within one layer
]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("layers")
    _source_copy(dest)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("probes, contract", VIOLATIONS, ids=[" + ".join(v[0].values()) for v in VIOLATIONS])
def test_a_violating_import_breaks_its_contract(source_copy: Path, probes: dict[str, str], contract: str):
    for path, line in probes.items():
        (source_copy / path).write_text(line + "\n")
    try:
        out = _lint_imports(source_copy)
    finally:
        for path in probes:
            (source_copy / path).unlink()
    assert out.returncode != 0, out.stdout[-3000:]
    text = " ".join(out.stdout.split())  # long contract names wrap in the report
    after = text[text.index(contract) + len(contract):]
    verdict = min((after.find(v), v) for v in (" KEPT", " BROKEN") if after.find(v) >= 0)[1]
    assert verdict == " BROKEN", (contract, out.stdout[-3000:])
    assert any(Path(path).stem in out.stdout for path in probes)  # the report names the offending module


def _hidden_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """First-party imports inside a function or an ``if TYPE_CHECKING:`` block."""
    found: list[tuple[int, str]] = []

    def first_party(node: ast.AST) -> str | None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                return "." * node.level + (node.module or "")
            if node.module and node.module.split(".")[0] in PACKAGES:
                return node.module
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    return a.name
        return None

    for node in ast.walk(tree):
        scoped = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
            isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
        if scoped:
            for sub in ast.walk(node):
                name = first_party(sub)
                if name is not None:
                    found.append((sub.lineno, name))
    return found


def test_no_first_party_import_hides_inside_a_function():
    hidden = [f"{f.relative_to(ROOT)}:{line}: {name}"
              for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))
              for line, name in _hidden_imports(ast.parse(f.read_text(encoding="utf-8")))
              if name not in DEFERRED.get(f.relative_to(ROOT).as_posix(), set())]
    assert hidden == [], "\n".join(hidden)


def test_the_hidden_import_check_sees_both_kinds():
    code = ("from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from engine.runtime import Runtime\n"
            "def f():\n    from keel.db import Database\n    import json\n")
    assert _hidden_imports(ast.parse(code)) == [(3, "engine.runtime"), (5, "keel.db")]
