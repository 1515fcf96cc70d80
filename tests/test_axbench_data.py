"""``make data`` (tests/axbench_data.py) and the rule that tests needing AxBench's files are
skipped with one line saying how to get them, and fail instead under ``CI=true``."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import axbench_data
from conftest import AXBENCH_DATA, require_axbench_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a copy of the AxBench files (the test suite's own
    copy), laid out as AxBench's repository is."""
    require_axbench_data()
    root = tmp_path / "mirror"
    for rel in axbench_data.FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((AXBENCH_DATA / rel).read_bytes())
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_checks_and_then_skips_present_files(mirror, tmp_path):
    root, url = mirror
    out = tmp_path / "data"
    assert axbench_data.fetch(out, source=url) == list(axbench_data.FILES)
    assert axbench_data.missing_files(out) == []
    assert axbench_data.fetch(out, source=url) == []  # already there: nothing downloaded


def test_fetch_refuses_a_changed_upstream_file(mirror, tmp_path):
    root, url = mirror
    rel = next(iter(axbench_data.FILES))
    (root / rel).write_text('{"concept_id": 0}\n')
    with pytest.raises(axbench_data.FetchError, match="SHA-256 .* differs"):
        axbench_data.fetch(tmp_path / "data", source=url)
    assert not (tmp_path / "data" / rel).exists()


def _run_a_data_test(tmp_path, ci: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AXBENCH_DATA": str(tmp_path / "empty"), "CI": ci, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_splits.py::test_heldin_copies_everything"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_without_the_data_a_test_is_skipped_with_how_to_get_it(tmp_path):
    result = _run_a_data_test(tmp_path, ci="")
    assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout[-2000:]
    assert "run `make data`" in result.stdout


def test_under_ci_a_missing_data_test_fails_instead(tmp_path):
    result = _run_a_data_test(tmp_path, ci="true")
    assert result.returncode == 1 and "1 error" in result.stdout, result.stdout[-2000:]
    assert "CI=true: these tests may not be skipped" in result.stdout
