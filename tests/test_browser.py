"""The site as a reader sees it: headless Chromium loads every page of the built site from a local server.

Asserted on every page: the math is typeset (MathJax ran, no TeX error, no raw `\\(`, `\\[`, `$$` or `$...$` left
in the visible text), and the browser logged no error (console, uncaught exception, failed request: with no
network, a CDN script is one). On every notebook page: cell outputs and figures are shown, and no code or output
cell scrolls sideways in a 1280-pixel-wide window. The site's search finds a word of the reference page, and the
home page's first screen links to tutorial 1.

Chromium is Debian's `chromium` package (`.ci/run` installs it); where it is missing the test skips and says
why. The browser is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`: messages are
JSON terminated by NUL on file descriptors 3 and 4), so no driver or client package is needed.
ADALOOP_BROWSER_SHOTS=DIR saves a screenshot of every page there.
"""
from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from docs_site import build_site

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars"]
WINDOW = (1280, 900)  # a laptop screen: notebook cells must fit it without scrolling sideways
PAGE_TIMEOUT_S = 60
SEARCH_WORD = "Lipschitz"  # on the reference page ("The contraction checks")

# Run in the page after its load event: wait for MathJax's first typeset and the fonts, then report what a
# reader sees. Text inside code, preformatted output and typeset math is left out of `text`.
INSPECT = r"""
(async () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) { await mj.startup.promise; }
  await document.fonts.ready;
  const skip = "pre, code, script, style, textarea, noscript, mjx-container, .highlight, .md-search";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || !el.checkVisibility()) continue;
    parts.push(n.textContent);
  }
  const outputs = document.querySelectorAll(".jp-OutputArea-output");
  const figures = [...document.querySelectorAll(".jp-OutputArea-output img")];
  return {
    title: document.title,
    text: parts.join(" "),
    mathjax: !!(mj && mj.version),
    typeset: document.querySelectorAll("mjx-container").length,
    tex_errors: [...document.querySelectorAll("mjx-merror")].map(e => e.getAttribute("data-mjx-error")
                                                                      || e.textContent).slice(0, 3),
    arithmatex: document.querySelectorAll(".arithmatex").length,
    notebook: document.querySelectorAll(".jp-Notebook, .jupyter-wrapper").length > 0,
    outputs: outputs.length,
    figures: figures.length,
    broken_figures: figures.filter(img => !(img.complete && img.naturalWidth > 0)).length,
    // notebook code and output blocks wider than the page (they would scroll sideways)
    too_wide: [...document.querySelectorAll(".jp-Cell pre")]
      .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
      .map(pre => pre.textContent.split("\n").reduce((a, b) => (b.length > a.length ? b : a), ""))
      .slice(0, 3),
  };
})()
"""

# Raw TeX a reader must never see: MathJax's delimiters, or $...$ around something TeX-like.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\s][^$\n]{0,80}?[\\^_{}][^$\n]{0,80}?\$")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe (fd 3: commands in, fd 4: out)."""

    def __init__(self, binary: str, profile: str):
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # move the child's ends above fd 10, so bash can dup them onto 3 and 4 without clobbering either
        # (bash, not sh: dash refuses fd numbers above 9)
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.log = open(Path(profile) / "chromium.log", "w+")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{child_in} 4>&{child_out}', binary, *FLAGS,
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(child_in)
        os.close(child_out)
        self.writer, self.reader = to_browser_w, from_browser_r
        self.next_id = 0
        self.replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.reader, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.closed = True
                    self.cond.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self.cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self.cond.notify_all()

    def _wait(self, ready, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = ready()
                if got is not None:
                    return got
                if self.closed:
                    raise RuntimeError(f"Chromium exited while waiting for {what}: {self.browser_log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} within {timeout:.0f} s")
                self.cond.wait(left)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = PAGE_TIMEOUT_S) -> dict:
        with self.cond:
            self.next_id += 1
            msg_id = self.next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.writer, json.dumps(msg).encode() + b"\0")
        reply = self._wait(lambda: self.replies.pop(msg_id, None), timeout, f"reply to {method}")
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, since: int, timeout: float = PAGE_TIMEOUT_S) -> dict:
        def ready():
            return next((e for e in self.events[since:]
                         if e.get("method") == method and e.get("sessionId") == session), None)
        return self._wait(ready, timeout, method)

    def evaluate(self, session: str, expression: str, timeout: float = PAGE_TIMEOUT_S):
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True}, session, timeout)
        if "exceptionDetails" in res:
            raise RuntimeError(f"script failed in the page: {res['exceptionDetails']}")
        return res["result"].get("value")

    def browser_log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-2000:]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.writer, self.reader):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()


class Page:
    """One tab, attached in flat mode; collects what the browser reports as errors."""

    def __init__(self, browser: DevTools):
        self.b = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=self.session)
        browser.call("Emulation.setDeviceMetricsOverride", {"width": WINDOW[0], "height": WINDOW[1],
                                                             "deviceScaleFactor": 1, "mobile": False}, self.session)

    def open(self, url: str) -> tuple[dict, list[str]]:
        """Load url, wait for its load event and its math; returns (the page's report, the errors it logged)."""
        since = len(self.b.events)
        nav = self.b.call("Page.navigate", {"url": url}, self.session)
        if nav.get("errorText"):
            raise AssertionError(f"{url}: {nav['errorText']}")
        self.b.wait_event("Page.loadEventFired", self.session, since)
        report = self.b.evaluate(self.session, INSPECT)
        time.sleep(0.2)  # let late console messages of the load arrive
        return report, self.errors(since)

    def errors(self, since: int) -> list[str]:
        found = []
        for e in self.b.events[since:]:
            if e.get("sessionId") != self.session:
                continue
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                          for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                found.append("uncaught: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        return found

    def screenshot(self, path: Path) -> None:
        import base64
        data = self.b.call("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        path.write_bytes(base64.b64decode(data))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it), "
                    "so the site was not checked in a browser")
    profile = tempfile.mkdtemp(prefix="adaloop-chromium-")  # a fresh profile every run
    b = DevTools(binary, profile)
    try:
        b.call("Browser.getVersion", timeout=60)
        yield b
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def served_site():
    site = build_site()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield site, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def site_pages(site: Path) -> list[str]:
    """Every page of the site as a URL path ('' for the home page)."""
    return sorted(p.parent.relative_to(site).as_posix().removeprefix(".") + "/" if p.parent != site else ""
                  for p in site.rglob("index.html"))


def test_every_page_typesets_its_math_logs_no_error_and_shows_notebook_outputs(browser, served_site):
    site, base = served_site
    pages = site_pages(site)
    notebooks = [p for p in pages if p.startswith("tutorials/")]
    assert "" in pages and "reference/" in pages and len(notebooks) >= 6, pages
    shots = os.environ.get("ADALOOP_BROWSER_SHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
    tab = Page(browser)
    problems, typeset_total = [], 0
    for path in pages:
        report, errors = tab.open(base + path)
        name = path or "(home)"
        if shots:
            tab.screenshot(Path(shots) / f"{path.strip('/').replace('/', '_') or 'index'}.png")
        problems += [f"{name}: {e}" for e in errors]
        if not report["mathjax"]:
            problems.append(f"{name}: MathJax did not load")
        if report["arithmatex"] and not report["typeset"]:
            problems.append(f"{name}: {report['arithmatex']} equations, none typeset")
        if report["tex_errors"]:
            problems.append(f"{name}: TeX errors {report['tex_errors']}")
        raw = RAW_TEX.search(report["text"])
        if raw:
            around = report["text"][max(0, raw.start() - 40):raw.end() + 40].replace("\n", " ")
            problems.append(f"{name}: raw TeX in the visible text: ...{around}...")
        if path in notebooks:
            if not report["notebook"] or not report["outputs"]:
                problems.append(f"{name}: no cell outputs shown")
            if not report["figures"] or report["broken_figures"]:
                problems.append(f"{name}: figures shown {report['figures']}, broken {report['broken_figures']}")
            problems += [f"{name}: a cell scrolls sideways at {WINDOW[0]} px: {line[:70]!r}"
                         for line in report["too_wide"]]
        typeset_total += report["typeset"]
    assert not problems, "\n".join(problems)
    assert typeset_total > 100, f"only {typeset_total} typeset equations on the whole site"


def test_search_finds_a_word_of_the_reference_page(browser, served_site):
    site, base = served_site
    assert SEARCH_WORD in (site / "reference" / "index.html").read_text()
    tab = Page(browser)
    tab.open(base)
    found = tab.b.evaluate(tab.session, r"""
    (async (word) => {
      const input = document.querySelector("input.md-search__input");
      input.focus();
      input.value = word;
      input.dispatchEvent(new Event("input", {bubbles: true}));
      input.dispatchEvent(new KeyboardEvent("keyup", {bubbles: true, key: "n"}));
      for (let i = 0; i < 200; i++) {
        const hits = [...document.querySelectorAll(".md-search-result__item a")].map(a => a.href);
        if (hits.length) return hits;
        await new Promise(r => setTimeout(r, 100));
      }
      return [];
    })(%s)""" % json.dumps(SEARCH_WORD))
    assert any("/reference/" in h for h in found), f"searching {SEARCH_WORD!r} found {found[:5]}"


def test_the_home_page_leads_to_tutorial_1_in_one_click(browser, served_site):
    _, base = served_site
    tab = Page(browser)
    tab.open(base)
    since = len(browser.events)
    clicked = browser.evaluate(tab.session, r"""
    (() => {
      const link = [...document.querySelectorAll("article a")]
        .find(a => a.pathname.endsWith("/tutorials/01_looped_block_and_act/") && a.checkVisibility());
      if (!link) return null;
      const onFirstScreen = link.getBoundingClientRect().bottom <= window.innerHeight;
      link.click();
      return {text: link.textContent.trim(), onFirstScreen};
    })()""")
    assert clicked, "no visible link from the home page to tutorial 1"
    assert clicked["onFirstScreen"], f"the link to tutorial 1 ({clicked['text']!r}) is below the first screen"
    browser.wait_event("Page.loadEventFired", tab.session, since)
    title = browser.evaluate(tab.session, "document.title")
    assert title.startswith("Tutorial 1"), f"the click led to {title!r}"
