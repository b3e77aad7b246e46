"""The numbered schema migrations under ``migrations/``: the one description of a catalog's
tables. :mod:`engine.store.database` applies them in order and records each in ``schema_version``."""

from __future__ import annotations

import re
from functools import cache

from ..resources import resource_dir

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@cache
def migrations() -> tuple[tuple[int, str, str], ...]:
    """``(version, name, sql)`` for every file in ``migrations/``, by version."""
    found = []
    for path in resource_dir("migrations").iterdir():
        m = _NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 0001, 0002, ... without gaps; found {versions}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())
