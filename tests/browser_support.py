"""Shared by the browser tests: the system Chromium, Jupyter servers on free ports, artefacts, the script detector.

Playwright drives Debian's ``chromium`` (or ``$INT8LAB_CHROMIUM``); its own browser download is never used.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hostile import SCRIPT_MARK as MARK

ROOT = Path(__file__).resolve().parents[1]
#: How long a page may take to show what a test waits for. An honest wait is seconds; with the suite's class
#: gradings beside it on a busy 2-core machine, a kernel running a whole notebook took over two minutes once. A
#: hang still shows, after five.
PATIENCE_MS = 300_000
#: Screenshots land here (gitignored), so that a human can look at what the browser showed.
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def chromium_path() -> str:
    """The browser to drive: $INT8LAB_CHROMIUM, else Debian's chromium, else Playwright's own build if
    `.ci/ensure-chromium` installed one; a missing one fails the test, clearly."""
    chosen = os.environ.get("INT8LAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    chosen = chosen or _playwright_chromium()
    if not chosen or not os.access(chosen, os.X_OK):
        pytest.fail(
            "the browser tests need Chromium: `apt-get install -y chromium` (make test tries it), or point "
            "INT8LAB_CHROMIUM at a Chromium binary, or deselect them with "
            "make test PYTEST_ARGS='-m \"not browser\"'",
            pytrace=False,
        )
    return chosen


def _playwright_chromium() -> str | None:
    """The Chromium that `playwright install chromium` downloaded, if any."""
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            path = playwright.chromium.executable_path
    except Exception:  # no Playwright, or no browser of its own: the caller says what to install
        return None
    return path if path and os.path.exists(path) else None


@contextmanager
def chromium() -> Iterator:
    """One headless Chromium for a module (launching costs about a second)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its own sandbox.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class JupyterServer:
    process: subprocess.Popen
    base: str
    token: str
    log: Path

    def url(self, path: str) -> str:
        separator = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{separator}token={self.token}"

    def get_json(self, path: str):
        request = urllib.request.Request(f"{self.base}/{path.lstrip('/')}")
        request.add_header("Authorization", f"token {self.token}")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)


@contextmanager
def jupyter(app: str, root: Path, ready: str = "api/status", env: dict | None = None) -> Iterator[JupyterServer]:
    """``jupyter lab`` or ``jupyter server`` in ``root`` on 127.0.0.1, a fresh token, no browser; killed on exit.

    ``ready`` is a path that answers once the server (and the extension under test) is up.
    """
    token = secrets.token_hex(16)
    port = free_port()
    log = root.parent / f"{app}-{port}.log"
    command = [sys.executable, "-m", "jupyter", app, "--no-browser", f"--port={port}", "--ip=127.0.0.1"]
    command += [f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    command += ["--allow-root"] if os.geteuid() == 0 else []
    with open(log, "wb") as sink:
        # Its own session, so that teardown ends the server and the kernels it started, and nothing else.
        process = subprocess.Popen(
            command, cwd=root, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = JupyterServer(process, f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise AssertionError(f"jupyter {app} exited: {log.read_text()[-3000:]}")
            try:
                server.get_json(ready)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    tail = log.read_text()[-3000:]
                    raise AssertionError(f"jupyter {app} did not answer within 90 s: {tail}") from error
                time.sleep(0.3)
        yield server
    finally:
        end_session(process)


def end_session(process: subprocess.Popen) -> None:
    """End a process started with start_new_session=True, and every process it started (kernels, workers)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def screenshot(target, name: str) -> Path:
    """Save a PNG of a page or locator under test-artifacts/browser/ and say where (pytest -s shows it)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    target.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


@dataclass
class ScriptWatch:
    """Every sign that a page ran script it was not meant to: dialogs, console lines and the title."""

    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def attach(self, page) -> ScriptWatch:
        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("console", lambda message: self.console.append(message.text))
        return self

    def fired(self, page) -> list[str]:
        """What gave the payload away; empty when no script of the student's ran."""
        signs = [f"dialog: {text}" for text in self.dialogs]
        signs += [f"console: {text}" for text in self.console if MARK in text]
        if MARK in page.title():
            signs.append(f"title: {page.title()}")
        if page.evaluate(f"() => window.{MARK} !== undefined"):
            signs.append(f"global: window.{MARK}")
        return signs
