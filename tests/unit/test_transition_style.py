"""One style of guarded transition (issue 23): the source states of every guard come from the machines of
common/states.py through common/db/transitions.py, and docs/state-machines.md's "who moves what" table is checked
against the code here, so it cannot go stale (it had omitted the pilot factory and the exchange's statements)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELPERS = re.compile(r"\b(guarded_transition|guarded_update|transition_one|may_move|may_move_sql)\(")
SERVICE_DIRS = {"task-manager": "task_manager", "task-executor": "task_executor", "job-manager": "job_manager",
                "job-executor": "job_executor", "pilot factory": "pilot_factory"}


def table_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "state-machines.md").read_text()
    section = text[text.index("## Who moves what"):]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| entity")
            and not line.startswith("| ---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def python_files() -> list[Path]:
    return [p for d in ("common", "services", "pilot", "tools") for p in (ROOT / d).rglob("*.py")]


def test_no_code_reads_a_machines_sources_but_the_transition_helpers() -> None:
    allowed = {ROOT / "common" / "states.py", ROOT / "common" / "db" / "transitions.py"}
    offenders = [str(p.relative_to(ROOT)) for p in python_files()
                 if p not in allowed and "sources_of(" in p.read_text()]
    assert offenders == []


def test_every_module_that_guards_a_transition_is_in_the_table() -> None:
    listed = {path for row in table_rows() for path in re.findall(r"`(services/[^`]+\.py)`", row[4])}
    guarding = {str(p.relative_to(ROOT)) for p in (ROOT / "services").rglob("*.py") if HELPERS.search(p.read_text())}
    assert guarding <= listed, guarding - listed
    assert all((ROOT / path).exists() for path in listed), listed


def test_every_function_the_table_names_exists() -> None:
    for entity, change, writer, where, _ in table_rows():
        services = [SERVICE_DIRS[w.strip().split(" (")[0]] for w in writer.split(",")]
        for name in re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)`", where):
            module, *path = name.split(".")
            candidates = [ROOT / "services" / s / f"{module}.py" for s in services]
            found = [c for c in candidates if c.exists() and _defines(c, path)]
            assert found, f"{entity} / {change}: {name} is not defined in {[str(c) for c in candidates]}"


def _defines(module: Path, path: list[str]) -> bool:
    """Whether ``module`` defines ``path`` (a function, or a class and its method)."""
    scope: list[ast.stmt] = ast.parse(module.read_text()).body
    for part in path:
        found = next((node for node in scope if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef)) and node.name == part), None)
        if found is None:
            return False
        scope = found.body
    return True
