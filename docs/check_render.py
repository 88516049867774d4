"""Build the site and render every page in headless Chromium, as a reader sees it.

    python docs/check_render.py                      # build, then check every page
    python docs/check_render.py --site site/         # check an existing build
    python docs/check_render.py --screenshots shots/ index.html \
        guides/getting_started/index.html           # also save these pages as PNGs

Fails (exit status 1) on any of, for every page:

- a console error or an uncaught exception in the page;
- a request that fails or answers 400 or more (a missing image, stylesheet,
  script or search index);
- an image that did not load (`naturalWidth == 0`);
- a list item that Markdown ran into the paragraph before it, shown as a
  literal "- **…**";
- a link to an anchor (`page/#anchor` or `#anchor`) that no element of the
  target page has as its id;
- on the home page, a code block wider than its box (the reader would have to
  scroll it sideways); on other pages these are listed, not failed.

Uses Debian's `chromium` (`apt-get install chromium`) through the DevTools
protocol over a WebSocket, with the standard library only: no browser
download, no Selenium or Playwright. The site is served over HTTP from a
local port (`file://` pages cannot load the search index).
"""

import argparse
import base64
import contextlib
import functools
import http.server
import json
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)
WIDTH, HEIGHT = 1280, 900
# Collected in the page after it loads.
PAGE_REPORT = r"""(() => {
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  const images = [...document.images]
    .filter(i => i.complete && i.naturalWidth === 0)
    .map(i => i.getAttribute('src'));
  const links = [...document.querySelectorAll('a[href*="#"]')]
    .map(a => a.href)
    .filter(h => h.startsWith(location.origin));
  const wide = [...document.querySelectorAll('pre > code')]
    .filter(c => c.scrollWidth > c.clientWidth + 1)
    .map(c => c.textContent.split('\n').reduce((a, b) => a.length > b.length ? a : b));
  // A list item that Markdown ran into the paragraph before it.
  const bullets = [...document.querySelectorAll('.md-content p')]
    .filter(p => /(^|[.:;)]\s+)[-*] (<strong>|<code>|\*\*)/.test(p.innerHTML.trim()))
    .map(p => p.textContent.slice(0, 120));
  return JSON.stringify({ids, images, links, wide, bullets,
                         height: document.documentElement.scrollHeight});
})()"""


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """A minimal WebSocket client (RFC 6455): text frames, masked, in order."""

    def __init__(self, url):
        parsed = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        head, self.buffer = response.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.decode(errors="replace"))

    def _read(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the browser closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send(self, text):
        payload = text.encode()
        header = bytearray([0x81])
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + mask + masked)

    def receive(self):
        message = b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            message += self._read(length)
            if first & 0x80:  # the last fragment
                return message.decode()


class Page:
    """One browser tab, driven through the DevTools protocol."""

    def __init__(self, websocket_url):
        self.ws = WebSocket(websocket_url)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(
            json.dumps({"id": self.next_id, "method": method, "params": params})
        )
        while True:
            message = json.loads(self.ws.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(json.loads(self.ws.receive()))
        raise TimeoutError(method)


@contextlib.contextmanager
def serve(folder):
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def browser(chromium):
    # Chromium's helper processes may still write to the profile while they
    # exit: the folder is removed as far as it can be.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers in a group of their own
        )
        try:
            active = pathlib.Path(profile, "DevToolsActivePort")
            deadline = time.monotonic() + 60
            while not (active.exists() and active.read_text().count("\n") >= 1):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{chromium} did not start")
                time.sleep(0.1)
            port = int(active.read_text().split("\n")[0])
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT"
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                target = json.load(response)
            yield Page(target["webSocketDebuggerUrl"])
        finally:
            # The browser and the helpers it started: the group this
            # function created, by its id.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def pages_of(site):
    """Every HTML page of the site, as paths relative to it."""
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if p.name != "404.html"
    )


def problems_in(events, base):
    found = []
    requests = {}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            requests[params["requestId"]] = params["request"]["url"]
        elif method == "Network.responseReceived":
            status = params["response"]["status"]
            if status >= 400:
                found.append(f"HTTP {status}: {params['response']['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = requests.get(params["requestId"], "?")
            found.append(f"failed to load {url}: {params.get('errorText')}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details["text"]
            found.append(f"uncaught exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            text = " ".join(
                str(a.get("value", a.get("description"))) for a in params["args"]
            )
            found.append(f"console error: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"console error: {params['entry']['text']}")
    return [p.replace(base, "/") for p in found]


def check(site, chromium, screenshots=None, shots=()):
    """Renders every page of `site`; returns `(failures, notes)` as text lines."""
    failures, notes, ids, links = [], [], {}, []
    with serve(site) as base, browser(chromium) as page:
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        for path in pages_of(site):
            page.events.clear()
            page.call("Page.navigate", url=base + path)
            page.wait_for("Page.loadEventFired")
            time.sleep(0.3)  # scripts that run after load (search, highlighting)
            result = page.call(
                "Runtime.evaluate", expression=PAGE_REPORT, returnByValue=True
            )
            report = json.loads(result["result"]["value"])
            # Drain what arrived while the page settled.
            page.call("Runtime.evaluate", expression="1")
            name = "/" + path.removesuffix("index.html")
            for problem in problems_in(page.events, base):
                failures.append(f"{name}: {problem}")
            for text in report["bullets"]:
                failures.append(f"{name}: a list item rendered as text: {text!r}")
            for image in report["images"]:
                failures.append(f"{name}: image did not load: {image}")
            for line in report["wide"]:
                message = f"{name}: code wider than its box: {line.strip()[:90]!r}"
                (failures if path == "index.html" else notes).append(message)
            ids[path] = set(report["ids"])
            links += [(name, link) for link in report["links"]]
            if screenshots and path in shots:
                shot = page.call(
                    "Page.captureScreenshot",
                    format="png",
                    captureBeyondViewport=True,
                    clip={
                        "x": 0,
                        "y": 0,
                        "width": WIDTH,
                        "height": min(report["height"], 4000),
                        "scale": 1,
                    },
                )
                target = pathlib.Path(screenshots) / (
                    path.replace("/index.html", "").replace("/", "_") or "index"
                )
                target = target.with_suffix(".png")
                target.write_bytes(base64.b64decode(shot["data"]))
                notes.append(f"screenshot: {target}")
        for name, link in links:
            url, _, anchor = link.partition("#")
            target = urllib.parse.urlparse(url).path.lstrip("/")
            if not target or target.endswith("/"):
                target += "index.html"
            if (
                target in ids
                and anchor
                and urllib.parse.unquote(anchor) not in ids[target]
            ):
                failures.append(f"{name}: broken anchor {link.replace(base, '/')}")
    return failures, notes


def build(folder):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(folder)],
        cwd=ROOT,
        env=env,
        check=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", help="a built site (default: build one)")
    parser.add_argument("--screenshots", help="folder for the PNGs of SHOTS")
    parser.add_argument(
        "shots",
        nargs="*",
        default=["index.html"],
        help="pages to screenshot, relative to the site (default: index.html)",
    )
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        sys.exit("No Chromium found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as folder:
        site = pathlib.Path(args.site or folder)
        if not args.site:
            build(site)
        if args.screenshots:
            os.makedirs(args.screenshots, exist_ok=True)
        failures, notes = check(site, chromium, args.screenshots, set(args.shots))
    for line in notes:
        print(line)
    for line in failures:
        print("FAIL", line)
    print(
        f"{len(pages_of(site)) if args.site else 'all'} pages; {len(failures)} failures"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
