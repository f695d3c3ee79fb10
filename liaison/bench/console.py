"""Web console page times: every page of both consoles, with the demo's data, over HTTPS.

Each page is fetched as a signed-in person (signed in through the development
provider, as the browser does) and timed from request to last byte; the
baseline is a static file from the same server in the same run, so the
ratio says what the page itself costs on a shared, noisy machine. The aim:
every page under 300 ms.
"""

from __future__ import annotations

import argparse
import http.client
import http.cookiejar
import io
import json
import ssl
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TextIO

from liaison.cli.render import table
from liaison.demo.consoles import GATEWAY_CONSOLE, NODE_CONSOLE
from liaison.demo.data import probes
from liaison.demo.run import build_federation, running_consoles, running_federation

BUDGET_MS = 300.0


class _Forms(HTMLParser):
    """The forms, links and images of a page: enough to sign in and to find pages."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.buttons: list[tuple[str, str]] = []
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}))
        elif tag == "input" and self.forms and a.get("type") == "hidden":
            self.forms[-1][1][a.get("name", "")] = a.get("value", "")
        elif tag == "button" and a.get("name"):
            self.buttons.append((a["name"], a.get("value", "")))
        elif tag == "a" and a.get("href", "").startswith("/"):
            self.links.append(a["href"])
        elif tag == "img" and a.get("src", "").startswith("/"):
            self.images.append(a["src"])


def _parse(html: str) -> _Forms:
    p = _Forms()
    p.feed(html)
    return p


class Browser:
    """Cookies and redirects like a browser's, and nothing else (no script)."""

    def __init__(self) -> None:
        context = ssl.create_default_context()
        # The demo's development CA: this bench talks to its own loopback servers.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.context = context
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar),
            urllib.request.HTTPSHandler(context=context),
        )

    def get(self, url: str) -> tuple[str, str]:
        with self.opener.open(url, timeout=30) as r:
            return r.geturl(), r.read().decode(errors="replace")

    def post(self, url: str, fields: dict[str, str]) -> tuple[str, str]:
        data = urllib.parse.urlencode(fields).encode()
        with self.opener.open(url, data=data, timeout=30) as r:
            return r.geturl(), r.read().decode(errors="replace")

    def sign_in(self, console: str, subject: str) -> None:
        url, page = self.get(f"{console}/signin")
        forms = _parse(page).forms
        if not forms:
            raise RuntimeError(f"no sign-in form at {url}")
        action, hidden = forms[0]
        target = urllib.parse.urljoin(url, action)
        landed, _ = self.post(target, {**hidden, "subject": subject})
        if not landed.startswith(console):
            raise RuntimeError(f"sign-in of {subject} ended at {landed}")


@dataclass(frozen=True, slots=True)
class PageTime:
    console: str
    page: str
    median_ms: float
    p95_ms: float
    ratio: float


def _time(browser: Browser, url: str, rounds: int) -> list[float]:
    """Fetch ``url`` ``rounds`` times over one kept-alive connection, as a browser does.

    A fresh TLS handshake per request would cost more than most pages.
    """
    parts = urllib.parse.urlsplit(url)
    cookies = "; ".join(f"{c.name}={c.value}" for c in browser.jar)
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port, context=browser.context, timeout=30
    )
    out = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            connection.request("GET", parts.path, headers={"Cookie": cookies})
            response = connection.getresponse()
            response.read()
            out.append((time.perf_counter() - start) * 1000)
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}")
    finally:
        connection.close()
    return out


def _pages(browser: Browser, console: str, start: Sequence[str]) -> list[str]:
    """``start`` and every console page linked from them (one level), and their images."""
    seen: list[str] = []
    for path in start:
        if path not in seen:
            seen.append(path)
        _, html = browser.get(f"{console}{path}")
        parsed = _parse(html)
        for link in [*parsed.links, *parsed.images]:
            if link.startswith("/static/") or link in seen or link.startswith("/signin"):
                continue
            seen.append(link)
    return seen


def _ask(browser: Browser, console: str) -> str:
    """Run one query from the compose form; return the address of its answers."""
    _, html = browser.get(f"{console}/investigate")
    csrf = next(f for _, f in _parse(html).forms if "csrf" in f)["csrf"]
    fields = {
        "csrf": csrf,
        "dataset": "media",
        "operation": "match",
        "field": "sha256",
        "values": probes().shared_sha256,
        "purpose": "csam-investigation",
        "case_ref": "GEN-BENCH-1",
        "do": "run",
    }
    landed, _ = browser.post(f"{console}/investigate", fields)
    return urllib.parse.urlsplit(landed).path


def measure(rounds: int, progress: TextIO | None = None) -> list[PageTime]:
    def say(line: str) -> None:
        if progress is not None:
            print(line, file=progress)

    results: list[PageTime] = []
    with tempfile.TemporaryDirectory(prefix="liaison-bench-console-") as tmp:
        root = Path(tmp)
        say("building the demo federation (4,000 media, 1,500 accounts records per agency)")
        build_federation(root, tls=True, progress=io.StringIO())
        quiet = io.StringIO()
        with (
            running_federation(root, progress=quiet) as gateway,
            running_consoles(root, gateway, progress=quiet) as urls,
        ):
            plan = (
                (GATEWAY_CONSOLE, "inv.alice", ["/investigate", "/followups"], True),
                (GATEWAY_CONSOLE, "aud.ann", ["/audit", "/audit/plots"], False),
                (NODE_CONSOLE, "duty.fred", ["/inbox"], False),
            )
            for name, subject, start, ask in plan:
                console = urls[name]
                browser = Browser()
                browser.sign_in(console, subject)
                pages = _pages(browser, console, start)
                if ask:
                    pages.append(_ask(browser, console))
                baseline = statistics.median(
                    _time(browser, f"{console}/static/console.css", rounds)
                )
                for page in pages:
                    say(f"  {name} as {subject}: {page}")
                    times = sorted(_time(browser, f"{console}{page}", rounds))
                    median = statistics.median(times)
                    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
                    results.append(
                        PageTime(f"{name} ({subject})", page, median, p95, median / baseline)
                    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="fetches per page (default 20)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    results = measure(args.rounds, progress=sys.stderr)
    over = [r for r in results if r.median_ms > BUDGET_MS]
    if args.json:
        print(
            json.dumps(
                {
                    "budget_ms": BUDGET_MS,
                    "pages": [
                        {
                            "console": r.console,
                            "page": r.page,
                            "median_ms": round(r.median_ms, 2),
                            "p95_ms": round(r.p95_ms, 2),
                            "ratio_to_static": round(r.ratio, 2),
                        }
                        for r in results
                    ],
                    "over_budget": len(over),
                },
                indent=2,
            )
        )
    else:
        print(
            table(
                ["console", "page", "median ms", "p95 ms", "x static file"],
                [
                    [r.console, r.page, f"{r.median_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.ratio:.1f}"]
                    for r in results
                ],
            )
        )
        print(
            f"\n{len(results) - len(over)} of {len(results)} pages under {BUDGET_MS:.0f} ms "
            "(median, demo data)"
        )
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
