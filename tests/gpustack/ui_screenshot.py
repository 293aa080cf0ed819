"""Open GPUStack's web UI in headless Chromium, logged in, and screenshot a page.

Run with the GPUStack environment's Python (it has ``websockets``):
    python ui_screenshot.py SERVER_URL PASSWORD_FILE CLICKS EXPECT_TEXT OUT_PNG
CLICKS is a ">"-separated list of labels to click in turn, as a user would
(e.g. "Inference Backends>SGLang"): the UI routes in the browser only, and
its deep links are not served.
Prints the page's visible text; exits 0 when EXPECT_TEXT appeared, 1 if not.
Drives Chromium over the DevTools protocol: log in through the API, hand
the session cookie to the browser, load the page, wait for the text, capture.
"""

from __future__ import annotations

import base64
import http.cookies
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

# The binary itself: /usr/bin/chromium-headless-shell is a shell wrapper whose
# child would outlive a terminate() of the wrapper.
CHROMIUM = "/usr/lib/chromium/chromium-headless-shell"


def _session_cookie(server: str, password: str) -> str:
    data = urllib.parse.urlencode({"username": "admin", "password": password}).encode()
    with urllib.request.urlopen(urllib.request.Request(server + "/auth/login", data=data), timeout=30) as r:
        for header in r.headers.get_all("Set-Cookie") or []:
            jar = http.cookies.SimpleCookie(header)
            if "gpustack_session" in jar:
                return jar["gpustack_session"].value
    raise SystemExit("login answered no gpustack_session cookie")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CDP:
    def __init__(self, ws) -> None:
        self.ws, self.ids = ws, itertools.count(1)

    def __call__(self, method: str, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})


_CLICK_MENU = """(() => {
  const hit = [...document.querySelectorAll('li, a, span, div')].reverse()
    .find(e => e.innerText && e.innerText.trim() === %s && e.offsetParent !== null);
  if (!hit) return false;
  hit.click();
  return true;
})()"""


def _wait_text(cdp: _CDP, expect: str, timeout_s: float) -> tuple[str, bool]:
    text, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = cdp("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                   returnByValue=True)["result"].get("value", "")
        if expect in text:
            return text, True
        time.sleep(1.0)
    return text, False


def main(server: str, password_file: str, clicks: str, expect: str, out_png: str) -> int:
    password = Path(password_file).read_text().splitlines()[0]
    cookie = _session_cookie(server, password)
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="dspark-chromium-")
    browser = subprocess.Popen(
        [CHROMIUM, f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--no-sandbox",
         "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("chromium did not open its DevTools port")
            time.sleep(0.5)
        with connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            cdp = _CDP(ws)
            cdp("Network.enable")
            cdp("Network.setCookie", name="gpustack_session", value=cookie, url=server, httpOnly=True)
            cdp("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
            cdp("Page.enable")
            cdp("Page.navigate", url=server + "/")
            found = True
            for label in clicks.split(">"):
                text, found = _wait_text(cdp, label, 120)
                if not found:
                    break
                found = cdp("Runtime.evaluate", expression=_CLICK_MENU % json.dumps(label),
                            returnByValue=True)["result"].get("value")
                time.sleep(1.0)
            if found:
                text, found = _wait_text(cdp, expect, 120)
            if found:
                # Bring the expected entry into view (it may sit at the end of a scrolling list).
                cdp("Runtime.evaluate", returnByValue=True, expression=(
                    "(() => { const e = [...document.querySelectorAll('*')].reverse().find("
                    f"x => x.innerText && x.innerText.trim() === {json.dumps(expect)}); "
                    "if (e) e.scrollIntoView({block: 'center'}); })()"))
                time.sleep(2.0)  # let the last render settle before the capture
            shot = cdp("Page.captureScreenshot", format="png")["data"]
            Path(out_png).parent.mkdir(parents=True, exist_ok=True)
            Path(out_png).write_bytes(base64.b64decode(shot))
        print(text)
        return 0 if found else 1
    finally:
        # The browser and its zygote/renderer children form one process group.
        os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
