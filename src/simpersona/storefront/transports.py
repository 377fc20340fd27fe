"""How the environment reaches a storefront. Three transports with one interface and the same
behaviour: `start(cookies)` opens a fresh browsing context with these cookies, `get(url)` loads a page,
`submit(snapshot, form_id, fills, button_id)` submits a form as a browser would (following
redirects); each returns a `Page` with the status, the canonical path?query and the HTML.

- `AsgiTransport`: in-process, each request one call of the ASGI app on a private event loop
  (no sockets, no threads, no HTTP client library: a cookie jar and redirects as a browser
  keeps them, ≈ 4× less client work per request than httpx's ASGITransport, which it replaced).
- `HttpTransport`: real HTTP to a running server (`simpersona storefront serve`).
- `BrowserTransport`: Debian's Chromium driven by Playwright: fills and clicks the real page.

`cookie_key` is the server's cookie-signing key (see `cookies`): the in-process transport takes it
from the app; give it to the others (`cookies.load_or_create_key(path)[0]`) so that the
environment can choose a visitor's ids and variant; without it `ShopEnv.reset` refuses.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit

import httpx

from simpersona.storefront.snapshot import Snapshot

CHROMIUM = "/usr/bin/chromium"
# Redirects followed per request before giving up (httpx's default).
MAX_REDIRECTS = 20
# Characters left as they are in a request's path and query (RFC 3986 pchar, "%" of escapes).
PATH_SAFE, QUERY_SAFE = "/%:@!$&'()*+,;=~", "/?%:@!$&'()*+,;=~"
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


class AsgiTransport:
    """In-process: each request goes straight into the ASGI app (no lifespan; flush its log
    yourself). The client side is a browser's minimum: the cookies the app sets are kept and sent
    back, redirects are followed (303, and 301/302 after a POST, become a GET; 307/308 repeat the
    request), an exception in the app is a 500 page."""

    def __init__(self, app, host: str = "storefront.local"):
        self.app = app
        self.cookie_key = app.state.store.cookie_key
        self.host = host
        self.cookies: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()

    def start(self, cookies: dict[str, str]) -> None:
        self.cookies = dict(cookies)

    def get(self, url: str) -> Page:
        return self._page("GET", url, None)

    def submit(self, snap: Snapshot, form_id: str, fills: dict[str, str], button_id: str | None) -> Page:
        return self._page(*form_request(snap, form_id, fills, button_id))

    def _page(self, method: str, url: str, body: str | None) -> Page:
        for _ in range(MAX_REDIRECTS + 1):
            status, headers, content = self._loop.run_until_complete(self._call(method, url, body))
            location = None
            for k, v in headers:
                if k == b"set-cookie":
                    self._set_cookie(v.decode("latin-1"))
                elif k == b"location":
                    location = v.decode("latin-1")
            if status not in (301, 302, 303, 307, 308) or location is None:
                return Page(status, canonical_url(url), content.decode("utf-8", "replace"))
            parts = urlsplit(urljoin(url, location))
            url = parts.path + ("?" + parts.query if parts.query else "")
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = "GET", None
        raise RuntimeError(f"more than {MAX_REDIRECTS} redirects, the last to {url!r}")

    def _set_cookie(self, header: str) -> None:
        pair, *attrs = header.split(";")
        name, _, value = pair.strip().partition("=")
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = value[1:-1]
        gone = any(a.strip().lower().startswith("max-age=") and a.strip()[8:].lstrip("-").isdigit() and int(a.strip()[8:]) <= 0
                   for a in attrs)
        if gone:
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value

    async def _call(self, method: str, url: str, body: str | None) -> tuple[int, list, bytes]:
        parts = urlsplit(url)
        raw_path = quote(parts.path or "/", safe=PATH_SAFE)
        data = b"" if body is None else body.encode("utf-8")
        headers = [(b"host", self.host.encode("ascii"))]
        if self.cookies:
            headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode("latin-1")))
        if body is not None:
            headers += [(b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", str(len(data)).encode())]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "headers": headers,
                 "scheme": "http", "path": unquote(raw_path), "raw_path": raw_path.encode("ascii"),
                 "query_string": quote(parts.query, safe=QUERY_SAFE).encode("ascii"), "server": (self.host, 80),
                 "client": ("127.0.0.1", 123), "root_path": ""}
        done = self._loop.create_future()
        out: dict = {"status": None, "headers": [], "body": []}
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            await done  # the client stays connected until the response is complete
            return {"type": "http.disconnect"}

        async def send(message) -> None:
            if message["type"] == "http.response.start":
                out["status"], out["headers"] = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                out["body"].append(message.get("body", b""))
                if not message.get("more_body", False) and not done.done():
                    done.set_result(None)

        try:
            await self.app(scope, receive, send)
        except Exception:  # the app failed: a 500, as a server would answer
            if out["status"] is None:
                return 500, [], b""
        return out["status"] or 500, out["headers"], b"".join(out["body"])

    def close(self) -> None:
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
