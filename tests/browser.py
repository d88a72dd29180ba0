"""Open a page in headless Chromium and collect its console errors (DevTools protocol over a pipe).

`open_page(url, screenshot)` starts ``chromium --headless --remote-debugging-pipe``, loads ``url``,
waits for the load event plus ``settle`` seconds, saves a PNG screenshot and returns the errors:
uncaught exceptions (``Runtime.exceptionThrown``), ``console.error``/``console.assert``
calls and browser log entries at level error (failed resource loads, CSP violations), each as one
line. No third-party package: the protocol's messages are NUL-terminated JSON on fds 3 and 4.

`require_chromium()` finds the browser; without one the caller skips, unless
``SFTRL_REQUIRE_CHROMIUM=1`` (CI), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("SFTRL_CHROMIUM")
    if env:
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium executable; skip the test without one, fail instead when CI requires it."""
    path = find_chromium()
    if path is None:
        msg = "headless Chromium not found (apt-get install chromium, or set SFTRL_CHROMIUM)"
        if os.environ.get("SFTRL_REQUIRE_CHROMIUM") == "1":
            pytest.fail(msg + "; SFTRL_REQUIRE_CHROMIUM=1 requires it")
        pytest.skip(msg)
    return path


class _Pipe:
    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int):
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for m in self._drain(deadline):
                if m.get("id") == self.next_id:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m.get("result", {})
                self.events.append(m)

    def wait_event(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout

        def seen():
            return any(e.get("method") == method for e in self.events)

        while not seen():
            if time.monotonic() > deadline:
                return False
            self.events.extend(self._drain(deadline))
        return True

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.events.extend(self._drain(deadline, allow_timeout=True))

    def _drain(self, deadline: float, allow_timeout: bool = False) -> list[dict]:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if allow_timeout:
                    return []
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
            self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]


def _describe(event: dict) -> str | None:
    method, p = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        d = p["exceptionDetails"]
        text = d.get("exception", {}).get("description") or d.get("text", "")
        return f"uncaught exception: {text} ({d.get('url', '')}:{d.get('lineNumber')})"
    if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
        return f"console.{p['type']}: {args}"
    if method == "Log.entryAdded" and p["entry"].get("level") == "error":
        e = p["entry"]
        return f"browser log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip()
    return None


def open_page(
    url: str,
    screenshot: str | os.PathLike,
    settle: float = 1.5,
    size=(1280, 900),
    chromium: str | None = None,
    evaluate: str | None = None,
) -> list[str] | tuple[list[str], object]:
    """Load ``url`` in headless Chromium, save a screenshot, return the page's errors (see module);
    with ``evaluate`` (a JavaScript expression, run once the page has settled) return
    ``(errors, value)``."""
    chromium = chromium or require_chromium()
    with tempfile.TemporaryDirectory(prefix="sftrl-chromium-") as profile:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def child_fds():
            # Chromium reads commands on fd 3 and writes replies on fd 4. Move both ends above
            # any low fd first, so neither dup2 clobbers the other.
            import fcntl

            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ]
        proc = subprocess.Popen(
            cmd,
            preexec_fn=child_fds,
            close_fds=False,  # noqa: PLW1509 (fds 3/4 must be set in the child)
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(proc, to_browser_w, from_browser_r)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            if not pipe.wait_event("Page.loadEventFired", timeout=60):
                raise TimeoutError(f"{url}: no load event within 60 s")
            pipe.pump(settle)
            value = None
            if evaluate is not None:
                res = pipe.send("Runtime.evaluate", {"expression": evaluate, "returnByValue": True}, session=session)
                value = res.get("result", {}).get("value")
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            errors = [d for e in pipe.events if e.get("sessionId") == session and (d := _describe(e))]
            try:
                pipe.send("Browser.close", timeout=10)
            except (RuntimeError, TimeoutError):
                pass
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return errors if evaluate is None else (errors, value)
