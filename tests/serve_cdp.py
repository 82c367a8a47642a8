"""A minimal Chrome DevTools Protocol driver for the page test: headless Chromium, one tab, over a websocket.

    with Browser("/usr/bin/chromium", profile_dir, url) as page:
        page.evaluate("1 + 1"); page.type_text("hi"); page.click("#send"); page.screenshot()

Chromium picks a free debugging port and writes it to ``DevToolsActivePort`` in the fresh profile folder.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,800", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0"]


class Browser:
    def __init__(self, binary: str, profile: Path, url: str):
        self.binary, self.profile, self.url = binary, Path(profile), url
        self.proc = None
        self.ws = None
        self._ids = itertools.count(1)

    def __enter__(self) -> "Browser":
        import websocket  # websocket-client, from the 'dev' extra

        self.profile.mkdir(parents=True, exist_ok=True)
        self.log = self.profile.parent / "chromium.log"  # a file, not a pipe: a full pipe would block Chromium
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.profile}", self.url],
                                         stdout=subprocess.DEVNULL, stderr=log)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.log.read_text(errors='replace')[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its debugging port in 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        ws_url = None
        while ws_url is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
            if ws_url is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium opened no page")
                time.sleep(0.1)
        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def send(self, method: str, **params) -> dict:
        """One CDP command -> its result (events that arrive meanwhile are dropped)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(expression):
                    return
            except RuntimeError:  # the page is still loading
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied: {expression}")
            time.sleep(0.2)

    def type_text(self, text: str) -> None:
        """Type into the focused element, as a keyboard would insert it."""
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            f".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
