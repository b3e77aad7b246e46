"""Every HTTP endpoint fuzzed with schemathesis against the app's OpenAPI schema: no 5xx.

A short run of ``scripts/fuzz_http.py`` (40 Hypothesis examples per operation, a fixed seed) over
a copy of the small demo catalog, in process through the ASGI app, with the tight limits of the
other web tests. The script's full run over the 70k-image demo catalog is
``python scripts/fuzz_http.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("litestar")
pytest.importorskip("schemathesis")

from web import Settings, create_app  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_http.py"
EXAMPLES = 40


def _fuzz_http():
    """``scripts/fuzz_http.py`` as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("fuzz_http", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app(web_demo_copy):
    """The app over a copy of the demo catalog, with tight limits."""
    path = web_demo_copy()
    settings = Settings(page_size=24, sql_time_limit_s=1.0, sql_max_rows=100, results_kept=8)
    return create_app([path], settings)


def test_no_endpoint_answers_with_a_server_error(app):
    report = _fuzz_http().fuzz(app, "fashion", max_examples=EXAMPLES, seed=0)
    operations = report["operations"]
    assert len(operations) >= 13, sorted(operations)
    assert all(counts["cases"] >= EXAMPLES // 2 for counts in operations.values()), operations
    assert report["total_cases"] >= 0.9 * EXAMPLES * len(operations)
    failures = json.dumps(report["server_failures"], indent=1)
    assert report["server_errors"] == 0 and report["unanswered"] == 0, failures
