"""Shared fixtures: deterministic code generators and a catalog factory.

Helpers are exposed as fixtures (not imported from this module); what test modules import by
name lives in ``tests/support.py`` (``pythonpath`` in pyproject.toml puts ``tests/`` on the path).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import engine

N_DIMS = 32
CHROMIUM = "/usr/bin/chromium"
TEST_OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


def uniform_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` codes drawn uniformly from 0..255 on every dim: uint8 (n, 32)."""
    return rng.integers(0, 256, size=(n, N_DIMS), dtype=np.uint8)


def clustered_codes(rng: np.random.Generator, n: int, n_clusters: int = 8, spread: int = 6) -> np.ndarray:
    """``n`` codes in ``n_clusters`` tight clusters (each dim within +-spread of a centre)."""
    if n == 0:
        return np.zeros((0, N_DIMS), dtype=np.uint8)
    centres = rng.integers(spread, 256 - spread, size=(n_clusters, N_DIMS))
    which = rng.integers(0, n_clusters, size=n)
    noise = rng.integers(-spread, spread + 1, size=(n, N_DIMS))
    return np.clip(centres[which] + noise, 0, 255).astype(np.uint8)


def mixed_codes(rng: np.random.Generator, n: int, clustered_fraction: float = 0.75) -> np.ndarray:
    """Clustered and uniform codes, shuffled together."""
    n_c = int(round(n * clustered_fraction))
    codes = np.concatenate([clustered_codes(rng, n_c), uniform_codes(rng, n - n_c)])
    return codes[rng.permutation(n)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def codegen():
    """Namespace of deterministic code generators: ``codegen.uniform(rng, n)`` etc."""

    class CodeGen:
        uniform = staticmethod(uniform_codes)
        clustered = staticmethod(clustered_codes)
        mixed = staticmethod(mixed_codes)

    return CodeGen


@pytest.fixture
def make_catalog(tmp_path) -> Callable[..., engine.Catalog]:
    """Factory: ``make_catalog(codes=None, ids=None, metadata=None, block_size=None, name=...)``.

    Creates a writable catalog file under ``tmp_path``, adds ``codes`` (if given) and builds
    the index when ``block_size`` is given. Every catalog is closed at teardown.
    """
    opened: list[engine.Catalog] = []
    counter = iter(range(10**6))

    def factory(codes=None, ids=None, metadata=None, block_size=None, name=None) -> engine.Catalog:
        path = tmp_path / (name or f"catalog_{next(counter)}.duckdb")
        cat = engine.Catalog.create(path)
        opened.append(cat)
        if codes is not None:
            cat.add_codes(codes, ids=ids, metadata=metadata)
        if block_size is not None:
            cat.build_index(block_size=block_size)
        return cat

    yield factory
    for cat in opened:
        cat.close()


@pytest.fixture(scope="session")
def web_demo(tmp_path_factory):
    """A demo catalog of 1,000 Fashion-MNIST images (100 per class), built by the CLI, for the
    web tests; skipped without the Debian dataset package."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("webdemo")
    path = root / "fashion.duckdb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "demo",
            str(path),
            "--limit",
            "500",
            "--epochs",
            "2",
            "--workers",
            "0",
            "--quiet",
            "--no-serve",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="session")
def web_demo_copy(web_demo, tmp_path_factory):
    """Factory: a fresh copy of the web demo catalog file, sharing its side folder (read-only
    use), so a test module can open it with its own DuckDB configuration."""

    def copy():
        import shutil

        root = tmp_path_factory.mktemp("webdemo-copy")
        path = root / web_demo.name
        shutil.copy(web_demo, path)
        (root / f"{web_demo.name}.d").symlink_to(f"{web_demo}.d")
        return path

    return copy


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], object]:
    """Factory: ``scripts/NAME.py`` as a module (see :func:`support.load_script`)."""
    from support import load_script

    return load_script


@pytest.fixture(scope="session")
def serve() -> Callable:
    """Factory: ``with serve(path, *args) as (url, port):`` runs ``clip-branches serve path
    --port PORT *args`` in its own process until ``/api/health`` answers, and stops it after."""
    import contextlib
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    @contextlib.contextmanager
    def run(path, *args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(path), "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"the server did not start: {proc.stdout.read()}")
            time.sleep(0.5)
        try:
            yield url, port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    return run


@pytest.fixture(scope="module")
def server(web_demo_copy, serve):
    """`clip-branches serve` on a copy of the demo catalog, for a module's tests: its URL."""
    with serve(web_demo_copy()) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through playwright (never `playwright install`), headless."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, server, request):
    """A 1280x900 page on the module's server with no script error, screenshotted to
    test-output/ when the test ends."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server + "/")
    yield pg
    TEST_OUTPUT.mkdir(exist_ok=True)
    pg.screenshot(path=str(TEST_OUTPUT / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == [], errors


@pytest.fixture(scope="module")
def spark():
    """A Spark session in local mode (the machine's Java) for a module's tests."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("clip-branches-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def flat_png(width: int, height: int, *, depth: int = 16, colour_type: int = 6) -> bytes:
    """A PNG of ``width`` x ``height`` zero pixels (16-bit RGBA by default), a few hundred kB
    however many pixels it claims: the upload that costs a naive server gigabytes to decode."""
    import struct
    import zlib

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" * (1 + width * channels * depth // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def png_bomb() -> bytes:
    """A 687 kB PNG of 9400 x 9400 16-bit RGBA pixels (88 megapixels, 700 MB raw)."""
    return flat_png(9400, 9400)


# The end-to-end tier: real CLI processes, servers, browsers, Spark, open_clip models and the
# scripts. `pytest -m "not e2e"` runs the rest (the engine's units, against their oracles) fast.
E2E_FILES = frozenset(
    {
        "test_chaos.py",
        "test_console_pool.py",
        "test_cli.py",
        "test_cli_user.py",
        "test_cli_concepts.py",
        "test_live.py",
        "test_pipeline.py",
        "test_spark_ingest.py",
        "test_spark_parquet.py",
        "test_spark_refine.py",
        "test_openclip_encoder.py",
        "test_demo_encoder.py",
        "test_web_browser.py",
        "test_web_session.py",
        "test_web_concepts.py",
        "test_fuzz_http.py",
        "test_attack_web_script.py",
        "test_soak.py",
        "test_eval_scripts.py",
        "test_eval_session_scale.py",
        "test_web_server.py",
    }
)
E2E_FIXTURES = frozenset({"web_demo", "web_demo_copy", "serve", "load_script"})


def pytest_ignore_collect(collection_path, config):
    """The fast tier (``-m "not e2e"``) does not even import the end-to-end files: their
    imports (Playwright, Spark, schemathesis, open_clip) cost seconds of the tier's budget."""
    if config.getoption("markexpr", "").replace(" ", "") == "note2e" and collection_path.name in E2E_FILES:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in E2E_FILES or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
