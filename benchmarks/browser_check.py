"""Load every page of the built book in headless Chromium; fail on what a reader should not see.

A page fails on a JS error, a broken image, a chapter without a figure, an nbval marker (``NBVAL_``)
or a progress-bar residue ("0%|", "it/s]") in its text, a code line clipped at 1280 px (a code block
whose content is wider than the block), or, on the results page, a headline table taller than the
screen. The report gives each page's weight (its HTML plus the local images it shows) and the size of
the whole ``_build/html``, which fails above ``--max-total-mb``.

Serves ``_build/html`` on 127.0.0.1, drives Debian's ``chromium`` over the Chrome DevTools Protocol
(the ``websocket-client`` package; no browser download), saves a full-page screenshot of each page to
``_build/screenshots/`` and prints one JSON object. Exit code 1 when any page (or the total) fails.

    .venv/bin/python benchmarks/browser_check.py [--html _build/html] [--out _build/screenshots]
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
    "--remote-debugging-port=0",
]
# Pages that are prose or tables by design; every other chapter page must show at least one figure.
NO_FIGURE_PAGES = ("index.html", "search.html", "genindex.html", "book/intro.html", "book/07_results.html")
RESULTS_PAGE = "book/07_results.html"  # its first table (the headline figures) must fit one screen
WIDTH, HEIGHT = 1280, 900  # the screen a reader has: code is checked for clipping at this width
NBVAL_MARKER = re.compile(r"NBVAL_[A-Z_]+")
PROGRESS_RESIDUE = re.compile(r"\d+%\|[^\n]{0,80}\||\bit/s\]|\?it/s")
PAGE_REPORT_JS = """(() => {
  const imgs = [...document.querySelectorAll('img')];
  const main = document.querySelector('main, article, .bd-article') || document.body;
  const figures = [...main.querySelectorAll('img')].filter(i => i.naturalWidth > 0 && !i.closest('.navbar-brand'));
  // code blocks a reader sees whose content is wider than the block: a line cut at the page edge
  const clipped = [...main.querySelectorAll('pre')]
    .filter(p => p.offsetParent !== null && p.clientWidth > 0 && p.scrollWidth > p.clientWidth + 1)
    .map(p => (p.textContent.split('\\n').find(l => l.length * 7 > p.clientWidth) || p.textContent).slice(0, 100));
  const table = main.querySelector('.cell_output table') || main.querySelector('table');  // the first computed table
  return JSON.stringify({
    title: document.title,
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src')),
    sources: [...new Set(imgs.map(i => i.src).filter(s => s.startsWith(location.origin)))],
    figures: figures.length,
    height: Math.ceil(document.documentElement.scrollHeight),
    text: main.textContent,
    clipped: clipped,
    first_table: table ? Math.ceil(table.getBoundingClientRect().height) : null,
    screen: window.innerHeight,
  });
})()"""


class DevTools:
    """A minimal CDP session on one page target: commands, and the events seen while waiting."""

    def __init__(self, ws_url: str, timeout: float):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True, enable_multithread=False)
        self.next_id, self.events, self.timeout = 0, [], timeout

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        self.ws.settimeout(self.timeout)
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == event for e in self.events):
                return True
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except Exception:  # timeout
                break
        return any(e.get("method") == event for e in self.events)

    def drain(self, seconds: float) -> None:
        self.wait_for("__never__", seconds)

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(
                    "JS exception: " + (d.get("exception", {}).get("description") or d.get("text", "?")).splitlines()[0]
                )
            elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(
                    "console.error: "
                    + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                )
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                if entry.get("url", "").endswith("/favicon.ico"):  # the browser asks for it, no page does
                    continue
                out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        return out


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def launch(chromium: str, profile_dir: Path, timeout: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"{chromium} exited with code {proc.returncode} before opening DevTools")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{chromium} did not open DevTools within {timeout:.0f} s")


def pages_of(html: Path) -> list[str]:
    pages = [p.relative_to(html).as_posix() for p in html.rglob("*.html")]
    skip = ("_static/", "_sources/", "_images/", "_sphinx_design_static/")
    return sorted(p for p in pages if not p.startswith(skip))


def reader_problems(page: str, report: dict) -> list[str]:
    """What a reader should not see: nbval markers, progress bars, clipped code, a tall results table."""
    problems = []
    text = report["text"]
    if markers := sorted(set(NBVAL_MARKER.findall(text))):
        problems.append(f"nbval marker shown: {markers}")
    if residue := PROGRESS_RESIDUE.search(text):
        start = max(0, residue.start() - 40)
        problems.append(f"progress-bar residue: {text[start:residue.end() + 20]!r}")
    if report["clipped"]:
        problems.append(f"{len(report['clipped'])} code block(s) clipped at {WIDTH} px, e.g. {report['clipped'][0]!r}")
    if page == RESULTS_PAGE and report["first_table"] and report["first_table"] > report["screen"]:
        problems.append(f"headline table {report['first_table']} px high, taller than the {report['screen']} px screen")
    return problems


def page_bytes(html: Path, url: str, page: str, sources: list[str]) -> int:
    """The page's HTML (inline figures and maps included) plus the local images it shows."""
    total = (html / page).stat().st_size
    for source in sources:
        path = html / urllib.parse.unquote(urllib.parse.urlparse(source).path).lstrip("/")
        if path.is_file() and source.startswith(url):
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check_page(
    tools: DevTools, url: str, page: str, shots: Path, timeout: float, max_height: int, html: Path
) -> dict:
    tools.events.clear()
    start = time.monotonic()
    tools.call("Page.navigate", url=f"{url}/{page}")
    loaded = tools.wait_for("Page.loadEventFired", timeout)
    tools.drain(0.5)  # late script errors
    report = json.loads(
        tools.call("Runtime.evaluate", expression=PAGE_REPORT_JS, returnByValue=True)["result"]["value"]
    )
    problems = tools.errors()
    if not loaded:
        problems.append(f"load event not fired within {timeout:.0f} s")
    if report["broken"]:
        problems.append(f"broken images: {report['broken'][:5]}")
    if page not in NO_FIGURE_PAGES and report["figures"] == 0:
        problems.append("chapter page without any figure")
    problems += reader_problems(page, report)
    height = min(max(report["height"], 800), max_height)
    tools.call("Emulation.setDeviceMetricsOverride", width=1280, height=height, deviceScaleFactor=1, mobile=False)
    shot = tools.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
    )
    tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
    target = shots / (page.replace("/", "__").removesuffix(".html") + ".png")
    target.write_bytes(base64.b64decode(shot["data"]))
    return {
        "page": page,
        "ok": not problems,
        "problems": problems,
        "bytes": page_bytes(html, url, page, report["sources"]),
        "images": report["images"],
        "figures": report["figures"],
        "title": report["title"],
        "seconds": round(time.monotonic() - start, 2),
        "screenshot": str(target.relative_to(ROOT) if target.is_relative_to(ROOT) else target),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per page load")
    parser.add_argument("--max-height", type=int, default=12000, help="cap of a screenshot's height in pixels")
    parser.add_argument("--max-total-mb", type=float, default=25.0, help="fail when _build/html is larger (MB)")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        print(json.dumps({"ok": False, "error": f"{args.html}/index.html not found: run make book first"}))
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    server, url = serve(args.html)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="browser-check-") as profile_dir:
        proc, port = launch(args.chromium, Path(profile_dir), args.timeout)
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
            target = json.loads(urllib.request.urlopen(request, timeout=args.timeout).read())
            tools = DevTools(target["webSocketDebuggerUrl"], args.timeout)
            for domain in ("Page", "Runtime", "Log"):
                tools.call(f"{domain}.enable")
            screen = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
            tools.call("Emulation.setDeviceMetricsOverride", **screen)
            version = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=10).read())
            results = [
                check_page(tools, url, page, args.out, args.timeout, args.max_height, args.html)
                for page in pages_of(args.html)
            ]
            tools.ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            server.shutdown()
    failed = [r for r in results if not r["ok"]]
    total = folder_bytes(args.html)
    too_heavy = total > args.max_total_mb * 1e6
    print(
        json.dumps(
            {
                "ok": not failed and not too_heavy,
                "browser": version.get("Browser"),
                "pages": len(results),
                "failed": len(failed),
                "figures": sum(r["figures"] for r in results),
                "html_bytes": total,
                "html_mb": round(total / 1e6, 1),
                "html_too_heavy": too_heavy,
                "heaviest_pages": sorted(((r["bytes"], r["page"]) for r in results), reverse=True)[:5],
                "seconds": round(time.monotonic() - start, 1),
                "screenshots": str(args.out),
                "results": results,
            },
            indent=2,
        )
    )
    return 1 if failed or too_heavy else 0


if __name__ == "__main__":
    sys.exit(main())
