"""The pure core stays pure: no framework, database or broker import, and no clock or environment
read, so replays and tests are deterministic (the brief's "time is passed in, never read")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGES = ("core", "cases", "models", "registry")
# Edges the core must not reach for: they belong in streams/, api/, sinks/ and recallwatch/.
EDGE_IMPORTS = (
    "faust", "fastapi", "starlette", "uvicorn", "chdb", "clickhouse_driver", "kafka", "aiokafka",
    "slack_sdk", "aiohttp", "httpx", "pydantic_settings", "api", "sinks", "streams", "recallwatch",
)  # fmt: skip
# What reads the clock or the environment: time and configuration are passed in instead.
CLOCK_READS = {
    ("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("time", "perf_counter"),
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
    ("os", "environ"), ("os", "getenv"),
}  # fmt: skip


def core_files() -> list[Path]:
    return sorted(p for pkg in CORE_PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def clock_reads(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in CLOCK_READS:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "os"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if (node.module, a.name) in CLOCK_READS]  # fmt: skip
    return found


def test_there_is_a_core_to_check() -> None:
    assert len(core_files()) > 20


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_no_edge_and_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    edges = sorted(m for m in imported_modules(tree) if m.split(".")[0] in EDGE_IMPORTS)
    assert edges == [], f"{path.name} imports {edges}"
    assert clock_reads(tree) == [], f"{path.name} reads the clock or the environment"
