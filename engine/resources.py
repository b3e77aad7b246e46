"""Locate the project's SQL files: ``migrations/`` and ``sql/`` at the repository root, or the
copies bundled into the wheel under ``engine/_bundled``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Directory ``name`` ("migrations" or "sql") of the source tree or the installed wheel."""
    for candidate in (_HERE.parent / name, _HERE / "_bundled" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the engine's {name}/ directory is missing from the installation")


@cache
def sql_text(name: str) -> str:
    """Text of ``sql/<name>.sql``."""
    return (resource_dir("sql") / f"{name}.sql").read_text(encoding="utf-8")
