"""A real Chromium (Debian's, driven by Playwright) and dashboard servers in processes of their own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _install_missing() -> str | None:
    """Install Playwright (PyPI) and Chromium (apt) if missing; say what is still missing."""
    try:
        import playwright
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "playwright"], check=False)
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env)
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None if Path(CHROMIUM).exists() else f"{CHROMIUM} is missing"


# Per module: Playwright's sync API holds an event loop on the test thread while
# it runs, which other tests' ``anyio.run`` would trip over.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _install_missing()
    if missing:
        if os.environ.get("TASKFLOW_REQUIRE_SERVICES"):
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 600})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(command: list[str], db: Path, port: int) -> Iterator[str]:
    """Run ``command`` until the test ends; yield its base URL once it answers."""
    env = {**os.environ, "TASKFLOW_TEST_SQLITE": str(db)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"server did not start: {err[-2000:]}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "dashboard.sqlite3"


@pytest.fixture
def fastapi_server(db: Path) -> Iterator[str]:
    """The FastAPI app of ``tests.apps.dashboard_app`` under uvicorn."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.apps.dashboard_app:app"]
    yield from serve([*command, "--port", str(port), "--log-level", "warning"], db, port)


@pytest.fixture
def cli_server(db: Path) -> Iterator[str]:
    """``taskflow dashboard tests.apps.dashboard_app:broker``."""
    port = free_port()
    command = [sys.executable, "-m", "taskflow", "dashboard", "tests.apps.dashboard_app:broker"]
    yield from serve([*command, "--port", str(port)], db, port)
