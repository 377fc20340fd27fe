"""How the environment reaches a storefront. Three transports with one interface and the same
behaviour: `start(cookies)` opens a fresh browsing context with these cookies, `get(url)` loads a page,
`submit(snapshot, form_id, fills, button_id)` submits a form as a browser would (following
redirects); each returns a `Page` with the status, the canonical path?query and the HTML.

- `AsgiTransport`: in-process, the app called through httpx's ASGITransport on a private event
  loop (no sockets, no threads: faster than starlette's TestClient, which hops to a portal thread
  for every request).
- `HttpTransport`: real HTTP to a running server (`simpersona storefront serve`).
- `BrowserTransport`: Debian's Chromium driven by Playwright: fills and clicks the real page.

`cookie_key` is the server's cookie-signing key (see `cookies`): the in-process transport takes it
from the app; give it to the others (`cookies.load_or_create_key(path)[0]`) so that the
environment can choose a visitor's ids and variant; without it `ShopEnv.reset` refuses.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import httpx

from simpersona.storefront.snapshot import Snapshot

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


@dataclass
class Page:
    status: int
    url: str  # canonical path?query (no scheme or host)
    html: str


def canonical_url(url: str) -> str:
    """path?query with one percent-encoding whatever the client did (so transports agree)."""
    parts = urlsplit(url)
    path = quote(unquote(parts.path), safe="/")
    if not parts.query:
        return path
    return path + "?" + urlencode(parse_qsl(parts.query, keep_blank_values=True))


def form_request(snap: Snapshot, form_id: str, fills: dict[str, str], button_id: str | None) -> tuple[str, str, str | None]:
    """(method, url, urlencoded body or None) that a browser sends for this form submission."""
    form = snap.forms[form_id]
    pairs = [(name, fills.get(eid, value) if eid else value) for name, value, eid in form.fields]
    if button_id is not None:
        b = snap.elements[button_id]
        if b.name:
            pairs.append((b.name, b.value))
    action = form.action or snap.url.split("?")[0]
    body = urlencode(pairs)
    if form.method == "get":
        return "GET", action + "?" + body, None
    return "POST", action, body


class _HttpxTransport:
    """Shared by the ASGI and HTTP transports: a cookie jar per episode, redirects followed."""

    _client: httpx.Client | httpx.AsyncClient
    cookie_key: bytes | None = None

    def start(self, cookies: dict[str, str]) -> None:
        jar = self._client.cookies
        jar.clear()
        for k, v in cookies.items():
            jar.set(k, v, domain=self._client.base_url.host)

    def _send(self, method: str, url: str, body: str | None) -> httpx.Response:
        raise NotImplementedError

    def _page(self, method: str, url: str, body: str | None) -> Page:
        r = self._send(method, url, body)
        return Page(r.status_code, canonical_url(r.url.raw_path.decode("ascii")), r.text)

    @staticmethod
    def _headers(body: str | None) -> dict[str, str] | None:
        return None if body is None else {"content-type": "application/x-www-form-urlencoded"}

    def get(self, url: str) -> Page:
        return self._page("GET", url, None)

    def submit(self, snap: Snapshot, form_id: str, fills: dict[str, str], button_id: str | None) -> Page:
        return self._page(*form_request(snap, form_id, fills, button_id))


class AsgiTransport(_HttpxTransport):
    """In-process: requests go straight into the ASGI app (no lifespan; flush its log yourself)."""

    def __init__(self, app, base_url: str = "http://storefront.local"):
        self.app = app
        self.cookie_key = app.state.store.cookie_key
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url=base_url, follow_redirects=True
        )

    def _send(self, method, url, body):
        return self._loop.run_until_complete(
            self._client.request(method, url, content=body, headers=self._headers(body))
        )

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


class HttpTransport(_HttpxTransport):
    """Real HTTP to a running storefront at `base_url` (e.g. http://127.0.0.1:8000)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, cookie_key: bytes | None = None):
        self.cookie_key = cookie_key
        self._client = httpx.Client(base_url=base_url, follow_redirects=True, timeout=timeout_s)

    def _send(self, method, url, body):
        return self._client.request(method, url, content=body, headers=self._headers(body))

    def close(self) -> None:
        self._client.close()


def _selector(element_id: str) -> tuple[str, int]:
    """CSS selector and index of an element id (`x#2` is the second element with data-sp-id x)."""
    base, n = element_id, 0
    head, sep, tail = element_id.rpartition("#")
    if sep and tail.isdigit():
        base, n = head, int(tail) - 1
    escaped = base.replace("\\", "\\\\").replace('"', '\\"')
    return f'[data-sp-id="{escaped}"]', n


class BrowserTransport:
    """Headless Chromium (Debian's, at `executable_path`) through Playwright, never a download:
    links are loaded, fields filled and buttons clicked in the real page."""

    def __init__(self, base_url: str, executable_path: str = CHROMIUM, timeout_s: float = 15.0,
                 cookie_key: bytes | None = None):
        from playwright.sync_api import sync_playwright

        self.cookie_key = cookie_key
        self.base_url = base_url.rstrip("/")
        self.timeout_ms = timeout_s * 1000
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=executable_path, headless=True, args=list(CHROMIUM_ARGS))
        self._context = None
        self._page = None

    def start(self, cookies: dict[str, str]) -> None:
        if self._context is not None:
            self._context.close()
        self._context = self._browser.new_context()
        self._context.add_cookies([{"name": k, "value": v, "url": self.base_url + "/"} for k, v in cookies.items()])
        self._page = self._context.new_page()
        self._page.set_default_timeout(self.timeout_ms)

    def _result(self, response) -> Page:
        status = response.status if response is not None else 200
        return Page(status, canonical_url(self._page.url), self._page.content())

    def get(self, url: str) -> Page:
        return self._result(self._page.goto(self.base_url + url))

    def submit(self, snap: Snapshot, form_id: str, fills: dict[str, str], button_id: str | None) -> Page:
        page = self._page
        for eid, value in fills.items():
            if snap.elements[eid].form != form_id:
                continue
            sel, n = _selector(eid)
            loc = page.locator(sel).nth(n)
            if snap.elements[eid].kind == "select":
                loc.select_option(value)
            else:
                loc.fill(value)
        with page.expect_navigation() as nav:
            if button_id is not None:
                sel, n = _selector(button_id)
                page.locator(sel).nth(n).click()
            else:
                page.locator(f'{_selector(form_id)[0]} input:not([type=hidden])').first.press("Enter")
        return self._result(nav.value)

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
        self._browser.close()
        self._pw.stop()
