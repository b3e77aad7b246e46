"""Every HTTP endpoint fuzzed with schemathesis against the app's OpenAPI schema: no 5xx.

A short run of ``scripts/fuzz_http.py`` (40 Hypothesis examples per operation, a fixed seed) over
a copy of the small demo catalog, in process through the ASGI app, with the tight limits of the
other web tests. The script's full run over the 70k-image demo catalog is
``python scripts/fuzz_http.py``.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("litestar")
pytest.importorskip("schemathesis")

from web import Settings, create_app  # noqa: E402

EXAMPLES = 40


@pytest.fixture(scope="module")
def app(web_demo_copy):
    """The app over a copy of the demo catalog, with tight limits."""
    path = web_demo_copy()
    settings = Settings(page_size=24, sql_time_limit_s=1.0, sql_max_rows=100, results_kept=8)
    return create_app([path], settings)


def test_no_endpoint_answers_with_a_server_error(app, load_script):
    report = load_script("fuzz_http").fuzz(app, "fashion", max_examples=EXAMPLES, seed=0)
    operations = report["operations"]
    assert len(operations) >= 14, sorted(operations)
    assert all(counts["cases"] >= EXAMPLES // 2 for counts in operations.values()), operations
    assert report["total_cases"] >= 0.9 * EXAMPLES * len(operations)
    failures = json.dumps(report["server_failures"], indent=1)
    assert report["server_errors"] == 0 and report["unanswered"] == 0, failures
