"""The web shop: `create_app(config, catalog)` builds a FastAPI app serving every shop of a
catalog under `/s/{shop}/`, server-rendered with Jinja2 (autoescape on, no JavaScript needed).

Routes (per shop; `{base}` = `/s/{shop}`) and the canonical event each successful request logs:

| request                                   | page                     | event                          |
|-------------------------------------------|--------------------------|--------------------------------|
| GET  {base}/                              | home                     | page_view                      |
| GET  {base}/collections/{path}?page=N     | collection               | collection_view (collection_id)|
| GET  {base}/search?q=…&page=N             | search results           | search (query); none if q empty|
| GET  {base}/products/{product_id}         | product                  | product_view                   |
| POST {base}/cart/add (product_id, quantity)| → cart                  | add_to_cart (price, quantity)  |
| POST {base}/cart/update (product_id, quantity)| → cart               | add_ or remove_from_cart (Δ)   |
| POST {base}/cart/remove (product_id)      | → cart                   | remove_from_cart (quantity)    |
| GET  {base}/cart                          | cart                     | page_view                      |
| GET  {base}/checkout                      | checkout form            | checkout_start (page_view on step 2) |
| POST {base}/checkout (fields)             | → order confirmation     | purchase per cart line (price, quantity) |
| GET  {base}/orders/{n}                    | order confirmation       | page_view                      |

Requests answered with a 4xx (unknown shop/product, bad quantity, invalid checkout form …) log
nothing and show a page with the reason. Sessions: cookies `sp_buyer` (kept a year) and
`sp_session` (browser session), signed with the server's key (`cookies`), issued when absent or
not validly signed. Variant: the server's alone, a hash of the session id (see VariantConfig),
unless a `sp_variant` cookie signed for that session says otherwise (minted by a key holder: the
agent environment); an unsigned or forged one is ignored.

Per request the app does little besides its own logic: routes are declared with FastAPI (and
its OpenAPI schema) but answered by a lean handler (`_LeanRoute`: parameters read by name, no
dependency injection), templates are compiled once per process, and a rendered page is kept by
its template and values (`PAGE_CACHE`), so a page served before costs a look-up.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from starlette.exceptions import HTTPException as StarletteHTTPException

from simpersona.contracts.storefront import COUNTRIES, shop_base
from simpersona.storefront.catalog import Product, Shop, load_catalog, sort_products
from simpersona.storefront.config import DEFAULT_EVENTS_OUT, StorefrontConfig, StorefrontError
from simpersona.storefront.cookies import (
    BUYER, SESSION, VARIANT, default_key_file, load_or_create_key, new_key, sign, verify,
)
from simpersona.storefront.eventlog import EventLog

TEMPLATES = Path(__file__).parent / "templates"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
POSTAL = re.compile(r"^[A-Za-z0-9 -]{2,12}$")
# Rendered pages an app keeps (least recently used dropped): a page is a pure function of its
# template and values, and most requests repeat one (the same home, listing or product page).
PAGE_CACHE = 2048


@lru_cache(maxsize=1)
def templates() -> Environment:
    """The Jinja environment with every template compiled, once per process and shared by its apps
    (and by processes forked after the first call); the package's templates never change while it
    runs, so no file check per page."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.globals.update(q=lambda s: quote(str(s), safe=""), qp=lambda s: quote(str(s), safe="/"), countries=COUNTRIES)
    for name in env.list_templates():
        env.get_template(name)
    return env


def _frozen(x):
    """A hashable stand-in for a template value, equal exactly when the value is (classes included:
    True is not 1, a list is not a tuple); TypeError for a value that is not plain data (then the
    page is rendered uncached). Exact classes only: a str subclass (markup) may render otherwise."""
    t = x.__class__
    if t is str or t is int or t is float or t is bool or t is Product or x is None:
        return t, x
    if t is list or t is tuple:
        return t, tuple([_frozen(v) for v in x])
    if t is dict:
        return t, tuple([(k, _frozen(v)) for k, v in x.items()])
    raise TypeError(f"not a plain template value: {type(x).__name__}")


@dataclass
class Session:
    """Server-side state of one (shop, buyer, session)."""

    variant: str
    cart: dict[str, int] = field(default_factory=dict)
    email: str = ""
    orders: list[dict] = field(default_factory=list)


@dataclass
class Visit:
    """One request's shop, ids, session state and the cookies to set on the response."""

    shop: Shop
    buyer_id: str
    session_id: str
    state: Session
    set_cookies: dict[str, str]


class Store:
    """All shops, sessions and the event log of one app (kept on `app.state.store`)."""

    def __init__(self, config: StorefrontConfig, shops: dict[str, Shop], clock: Callable[[], dt.datetime]):
        self.config = config
        self.shops = shops
        self.clock = clock
        # The key signing visitor cookies (see `cookies`): from the key file, else fresh per app.
        self.key_created = False
        if config.cookie_key_file is not None:
            self.cookie_key, self.key_created = load_or_create_key(config.cookie_key_file)
        else:
            self.cookie_key = new_key()
        self.log = EventLog(config.events_out, config.flush_rows, config.flush_interval_s)
        self.sessions: OrderedDict[tuple[str, str, str], Session] = OrderedDict()
        self.lock = threading.Lock()
        self.templates = templates()
        self.pages: OrderedDict[tuple, str] = OrderedDict()  # rendered pages by (template, values): see PAGE_CACHE
        self.verified: dict[tuple[str, str], str] = {}  # (cookie name, cookie) → the id of a cookie whose tag checked out

    def cookie_id(self, name: str, cookie: str | None) -> str | None:
        """The id a sp_buyer / sp_session cookie carries, None when absent, unsigned or forged
        (`cookies.verify`); a valid cookie is checked once and remembered (at most 2 × max_sessions)."""
        if cookie is None:
            return None
        value = self.verified.get((name, cookie))
        if value is None:
            value = verify(self.cookie_key, name, cookie)
            if value is not None:
                if len(self.verified) >= 2 * self.config.max_sessions:
                    self.verified.clear()
                self.verified[(name, cookie)] = value
        return value

    def variant_of(self, session_id: str, cookie: str | None = None) -> str:
        """The variant served to a session: a hash of its id, unless `cookie` is a sp_variant
        cookie signed for this session (forged or foreign ones are ignored)."""
        v = self.config.variant
        if not v.name:
            return "A"
        chosen = verify(self.cookie_key, VARIANT, cookie, session_id)
        return chosen if chosen in ("A", "B") else v.arm(session_id)

    def visit(self, request: Request, shop_id: str) -> Visit:
        shop = self.shops.get(shop_id)
        if shop is None:
            raise HTTPException(404, f"no shop {shop_id!r}")
        set_cookies = {}
        ids = []
        for name in (BUYER, SESSION):
            value = self.cookie_id(name, request.cookies.get(name))
            if value is None:  # absent, unsigned or forged: a new visitor
                value = secrets.token_hex(8)
                set_cookies[name] = sign(self.cookie_key, name, value)
            ids.append(value)
        buyer_id, session_id = ids
        key = (shop_id, buyer_id, session_id)
        with self.lock:
            state = self.sessions.get(key)
            if state is None:
                state = Session(self.variant_of(session_id, request.cookies.get(VARIANT)))
                self.sessions[key] = state
                if len(self.sessions) > self.config.max_sessions:
                    self.sessions.popitem(last=False)
                self.log.session(shop_id, buyer_id, session_id, self.clock(), self.config.variant.name, state.variant)
            else:
                self.sessions.move_to_end(key)
        return Visit(shop, buyer_id, session_id, state, set_cookies)

    def event(self, visit: Visit, event_type: str, **fields) -> None:
        self.log.event(visit.shop.shop_id, visit.buyer_id, visit.session_id, self.clock(), event_type, **fields)

    def price(self, product: Product, variant: str) -> float | None:
        """The unit price served to `variant` (B may change a collection's prices)."""
        v = self.config.variant
        p = product.price
        if p is None or variant != "B" or not v.price_collection:
            return p
        c = product.collection or ""
        if c == v.price_collection or c.startswith(v.price_collection + "/"):
            return round(p * v.price_factor, 2)
        return p

    def page_size(self, variant: str) -> int:
        """Products per collection or search-results page served to `variant`."""
        b = self.config.variant.page_size
        return b if variant == "B" and b > 0 else self.config.page_size

    def render(self, visit: Visit | None, template: str, status: int = 200, **ctx) -> HTMLResponse:
        cfg = self.config
        if visit is not None:
            variant = visit.state.variant
            b = variant == "B"
            ctx.update(
                shop=visit.shop.shop_id,
                base=shop_base(visit.shop.shop_id),
                cart_count=sum(visit.state.cart.values()),
                free_shipping=b and cfg.variant.free_shipping_banner,
            )
        try:
            key = (template, _frozen(ctx))
        except TypeError:
            key = None
        html = self.pages.get(key) if key is not None else None
        if html is None:
            html = self.templates.get_template(template).render(money=self.money, **ctx)
            if key is not None:
                self.pages[key] = html
                if len(self.pages) > PAGE_CACHE:
                    self.pages.popitem(last=False)
        else:
            self.pages.move_to_end(key)
        response = HTMLResponse(html, status_code=status)
        if visit is not None:
            self.set_cookies(response, visit)
        return response

    @staticmethod
    def set_cookies(response: Response, visit: Visit) -> None:
        for name, value in visit.set_cookies.items():
            max_age = 365 * 24 * 3600 if name == BUYER else None
            response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax")

    def money(self, x: float | None) -> str:
        return "price on request" if x is None else f"{self.config.currency}{x:,.2f}"

    def redirect(self, visit: Visit, url: str) -> RedirectResponse:
        response = RedirectResponse(url, status_code=303)
        self.set_cookies(response, visit)
        return response


def _int(raw: str | None, name: str, lo: int, hi: int, default: int | None = None) -> int:
    """Parse a bounded integer request field; a 400 that names the field otherwise."""
    if raw is None or raw == "":
        if default is not None:
            return default
        raise HTTPException(400, f"{name} is required")
    if len(raw) > 12 or not re.fullmatch(r"[+-]?\d+", raw.strip()):
        raise HTTPException(400, f"{name} must be a whole number from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise HTTPException(400, f"{name} must be from {lo} to {hi}, got {value}")
    return value


def _page(items: list, page: int, size: int) -> tuple[list, int]:
    pages = max(1, math.ceil(len(items) / size))
    if page > pages:
        raise HTTPException(404, f"page {page} does not exist (there are {pages})")
    return items[(page - 1) * size : page * size], pages


class _LeanRoute(APIRoute):
    """FastAPI's route (declared as usual, same OpenAPI schema) answered by a lean handler: the
    route's path, query and `Form` parameters, all plain strings, are read by name — a form
    field sent empty counts as absent, as in FastAPI — and a missing required one is a 422 naming
    it; no dependency injection or validation models per request (each handler checks its own
    values), ≈ 8× less framework work per request."""

    def get_route_handler(self):
        d = self.dependant
        if d.dependencies or d.header_params or d.cookie_params or any(
            f.field_info.annotation not in (str, str | None) for f in (*d.path_params, *d.query_params, *d.body_params)
        ):
            raise TypeError(f"route {self.path}: only str path, query and Form parameters (and the Request)")
        query = [(f.name, f.alias, f.field_info.is_required(), f.field_info.default) for f in d.query_params]
        form = [(f.name, f.alias, f.field_info.is_required(), f.field_info.default) for f in d.body_params]
        call, request_name = d.call, d.request_param_name

        async def handler(request: Request) -> Response:
            values, errors = dict(request.path_params), []
            if request_name:
                values[request_name] = request
            for name, alias, required, default in query:
                v = request.query_params.get(alias)
                values[name] = default if v is None else v
                if v is None and required:
                    errors.append(f"{alias}: Field required")
            body = None
            if form:
                try:
                    body = await request.form()
                except Exception:
                    raise HTTPException(400, "There was an error parsing the body") from None
            try:
                for name, alias, required, default in form:
                    v = body.get(alias)
                    if v is None or v == "":
                        values[name] = default
                        if required:
                            errors.append(f"{alias}: Field required")
                    elif isinstance(v, str):
                        values[name] = v
                    else:
                        errors.append(f"{alias}: Input should be a valid string")
                if errors:
                    raise HTTPException(422, "; ".join(errors))
                return await call(**values)
            finally:
                if body is not None:
                    await body.close()

        return handler


class _BodyLimit:
    """Pure ASGI middleware: a body larger than `limit` bytes gets a 413 (declared by
    Content-Length, or counted while reading a chunked body before the app sees it)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _too_large(self, scope, receive, send) -> None:
        response = HTMLResponse(f"<p>request body larger than {self.limit} bytes</p>", status_code=413)
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    config: StorefrontConfig,
    catalog: pa.Table | Path | str,
    clock: Callable[[], dt.datetime] | None = None,
) -> FastAPI:
    """The storefront app for every shop in `catalog`; events go to `app.state.store.log`
    (flushed when the app shuts down, or by `store.log.flush()`). `clock` stamps events
    (default: UTC now)."""
    store = Store(config, load_catalog(catalog), clock or (lambda: dt.datetime.now(dt.timezone.utc)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.log.close()

    # FastAPI's OpenTelemetry hooks off (the storefront's record is its event log): no provider checks per request
    app = FastAPI(title="SimPersona storefront", lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.router.route_class = _LeanRoute
    app.state.store = store
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    cfg = config

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return store.render(None, "error.html", exc.status_code, code=exc.status_code, detail=exc.detail)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return store.render(None, "index.html", shops=list(store.shops))

    @app.get("/s/{shop}", response_class=HTMLResponse)
    async def shop_root(shop: str):
        if shop not in store.shops:
            raise HTTPException(404, f"no shop {shop!r}")
        return RedirectResponse(f"/s/{quote(shop, safe='')}/", status_code=308)

    @app.get("/s/{shop}/", response_class=HTMLResponse)
    async def home(request: Request, shop: str):
        v = store.visit(request, shop)
        products = [v.shop.products[pid] for pid in v.shop.order]
        if v.state.variant == "B":
            products = sort_products(products, cfg.variant.home_order)
        featured = [(p, store.price(p, v.state.variant)) for p in products[: cfg.featured]]
        store.event(v, "page_view")
        return store.render(v, "home.html", products=featured, collections=v.shop.collections(cfg.home_collections))

    @app.get("/s/{shop}/collections/{path:path}", response_class=HTMLResponse)
    async def collection(request: Request, shop: str, path: str, page: str | None = None):
        v = store.visit(request, shop)
        path = path.strip("/")
        if path not in v.shop.collection_sizes:
            raise HTTPException(404, f"no collection {path!r} in shop {shop!r}")
        n = _int(page, "page", 1, 100_000, default=1)
        listed = v.shop.in_collection(path)
        if v.state.variant == "B":
            listed = sort_products(listed, cfg.variant.sort_order, lambda p: store.price(p, "B"))
        items, pages = _page(listed, n, store.page_size(v.state.variant))
        parts = path.split("/")
        crumbs = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        store.event(v, "collection_view", collection_id=path)
        return store.render(
            v, "listing.html", heading=path, collection=path, crumbs=crumbs, subs=v.shop.subcollections(path),
            products=[(p, store.price(p, v.state.variant)) for p in items], page=n, pages=pages,
            page_url=f"/collections/{quote(path, safe='/')}?page=",
        )

    @app.get("/s/{shop}/search", response_class=HTMLResponse)
    async def search(request: Request, shop: str, q: str = "", page: str | None = None):
        v = store.visit(request, shop)
        if len(q) > cfg.max_query_chars:
            raise HTTPException(400, f"search query longer than {cfg.max_query_chars} characters")
        n = _int(page, "page", 1, 100_000, default=1)
        query = " ".join(q.split())
        if not query:
            return store.render(v, "listing.html", heading="Search", query="", products=[], page=1, pages=1, empty_query=True)
        found = v.shop.search(query)
        if v.state.variant == "B":
            found = sort_products(found, cfg.variant.search_ranking, lambda p: store.price(p, "B"))
        items, pages = _page(found, n, store.page_size(v.state.variant))
        store.event(v, "search", query=query)
        return store.render(
            v, "listing.html", heading=f"Search: {query}", query=query, crumbs=[], subs=[],
            products=[(p, store.price(p, v.state.variant)) for p in items], page=n, pages=pages,
            page_url=f"/search?q={quote(query, safe='')}&page=",
        )

    def product_of(v: Visit, product_id: str) -> Product:
        p = v.shop.products.get(product_id)
        if p is None:
            raise HTTPException(404, f"no product {product_id!r} in shop {v.shop.shop_id!r}")
        return p

    @app.get("/s/{shop}/products/{product_id:path}", response_class=HTMLResponse)
    async def product(request: Request, shop: str, product_id: str):
        v = store.visit(request, shop)
        p = product_of(v, product_id)
        price = store.price(p, v.state.variant)
        store.event(v, "product_view", product_id=p.product_id, price=price)
        return store.render(v, "product.html", p=p, price=price, max_quantity=cfg.max_quantity)

    def cart_lines(v: Visit) -> list[tuple[Product, int, float | None]]:
        return [(v.shop.products[pid], qty, store.price(v.shop.products[pid], v.state.variant)) for pid, qty in v.state.cart.items()]

    def cart_url(v: Visit) -> str:
        return f"/s/{quote(v.shop.shop_id, safe='')}/cart"

    @app.post("/s/{shop}/cart/add")
    async def cart_add(request: Request, shop: str, product_id: str = Form(...), quantity: str = Form("1")):
        v = store.visit(request, shop)
        p = product_of(v, product_id)
        qty = _int(quantity, "quantity", 1, cfg.max_quantity)
        have = v.state.cart.get(p.product_id, 0)
        if have + qty > cfg.max_quantity:
            raise HTTPException(400, f"at most {cfg.max_quantity} of one product per cart (you have {have})")
        if not have and len(v.state.cart) >= cfg.max_cart_lines:
            raise HTTPException(400, f"at most {cfg.max_cart_lines} different products per cart")
        v.state.cart[p.product_id] = have + qty
        store.event(v, "add_to_cart", product_id=p.product_id, price=store.price(p, v.state.variant), quantity=qty)
        return store.redirect(v, cart_url(v))

    @app.post("/s/{shop}/cart/update")
    async def cart_update(request: Request, shop: str, product_id: str = Form(...), quantity: str = Form(...)):
        v = store.visit(request, shop)
        p = product_of(v, product_id)
        if p.product_id not in v.state.cart:
            raise HTTPException(400, f"product {product_id!r} is not in the cart")
        qty = _int(quantity, "quantity", 0, cfg.max_quantity)
        have = v.state.cart[p.product_id]
        price = store.price(p, v.state.variant)
        if qty > have:
            store.event(v, "add_to_cart", product_id=p.product_id, price=price, quantity=qty - have)
        elif qty < have:
            store.event(v, "remove_from_cart", product_id=p.product_id, price=price, quantity=have - qty)
        if qty:
            v.state.cart[p.product_id] = qty
        else:
            del v.state.cart[p.product_id]
        return store.redirect(v, cart_url(v))

    @app.post("/s/{shop}/cart/remove")
    async def cart_remove(request: Request, shop: str, product_id: str = Form(...)):
        v = store.visit(request, shop)
        p = product_of(v, product_id)
        have = v.state.cart.pop(p.product_id, 0)
        if not have:
            raise HTTPException(400, f"product {product_id!r} is not in the cart")
        store.event(v, "remove_from_cart", product_id=p.product_id, price=store.price(p, v.state.variant), quantity=have)
        return store.redirect(v, cart_url(v))

    @app.get("/s/{shop}/cart", response_class=HTMLResponse)
    async def cart(request: Request, shop: str):
        v = store.visit(request, shop)
        lines = cart_lines(v)
        store.event(v, "page_view")
        return store.render(v, "cart.html", lines=lines, subtotal=sum((pr or 0.0) * q for _, q, pr in lines), max_quantity=cfg.max_quantity)

    def shipping(v: Visit) -> float:
        return 0.0 if (v.state.variant == "B" and cfg.variant.free_shipping_banner) else cfg.shipping_fee

    def checkout_page(v: Visit, step: str, status: int = 200, errors: dict | None = None, values: dict | None = None):
        lines = cart_lines(v)
        subtotal = sum((pr or 0.0) * q for _, q, pr in lines)
        return store.render(
            v, "checkout.html", status, step=step, lines=lines, subtotal=subtotal, shipping=shipping(v),
            total=subtotal + shipping(v), errors=errors or {}, values=values or {}, email=v.state.email,
        )

    def two_steps(v: Visit) -> bool:
        return v.state.variant == "B" and cfg.variant.extra_checkout_step

    @app.get("/s/{shop}/checkout", response_class=HTMLResponse)
    async def checkout(request: Request, shop: str, step: str = ""):
        v = store.visit(request, shop)
        if not v.state.cart:
            store.event(v, "page_view")
            return checkout_page(v, "empty")
        if two_steps(v) and step == "shipping" and v.state.email:
            store.event(v, "page_view")
            return checkout_page(v, "shipping")
        store.event(v, "checkout_start")
        return checkout_page(v, "contact" if two_steps(v) else "all")

    @app.post("/s/{shop}/checkout", response_class=HTMLResponse)
    async def place_order(
        request: Request, shop: str, step: str = Form("all"), email: str = Form(""), name: str = Form(""),
        address: str = Form(""), city: str = Form(""), postal_code: str = Form(""), country: str = Form(""),
    ):
        v = store.visit(request, shop)
        if not v.state.cart:
            raise HTTPException(400, "the cart is empty")
        values = {"email": email, "name": name, "address": address, "city": city, "postal_code": postal_code, "country": country}
        values = {k: x.strip() for k, x in values.items()}
        errors = {k: f"at most {cfg.max_field_chars} characters" for k, x in values.items() if len(x) > cfg.max_field_chars}
        need_email = not two_steps(v) or step == "contact"
        if need_email and not errors.get("email") and not EMAIL.match(values["email"]):
            errors["email"] = "enter an e-mail address like name@example.com"
        if two_steps(v) and step == "contact":
            if errors.get("email"):
                return checkout_page(v, "contact", 422, {"email": errors["email"]}, values)
            v.state.email = values["email"]
            return store.redirect(v, f"/s/{quote(shop, safe='')}/checkout?step=shipping")
        if two_steps(v) and not v.state.email:
            return store.redirect(v, f"/s/{quote(shop, safe='')}/checkout")
        for k in ("name", "address", "city"):
            if not values[k] and k not in errors:
                errors[k] = "required"
        if "postal_code" not in errors and not POSTAL.match(values["postal_code"]):
            errors["postal_code"] = "2 to 12 letters, digits, spaces or dashes"
        if values["country"] not in dict(COUNTRIES):
            errors["country"] = "choose a country from the list"
        if errors:
            return checkout_page(v, "shipping" if two_steps(v) else "all", 422, errors, values)
        lines = cart_lines(v)
        for p, qty, price in lines:
            store.event(v, "purchase", product_id=p.product_id, price=price, quantity=qty)
        subtotal = sum((pr or 0.0) * q for _, q, pr in lines)
        v.state.orders.append({"lines": lines, "subtotal": subtotal, "shipping": shipping(v), "total": subtotal + shipping(v)})
        v.state.cart = {}
        return store.redirect(v, f"/s/{quote(shop, safe='')}/orders/{len(v.state.orders)}")

    @app.get("/s/{shop}/orders/{number}", response_class=HTMLResponse)
    async def order(request: Request, shop: str, number: str):
        v = store.visit(request, shop)
        n = _int(number, "order number", 1, 1_000_000)
        if n > len(v.state.orders):
            raise HTTPException(404, f"no order {n} in this session")
        store.event(v, "page_view")
        return store.render(v, "order.html", number=n, order=v.state.orders[n - 1])

    return app


def serve(config: StorefrontConfig, echo: Callable[[str], None] | None = None) -> None:
    """Run the storefront with uvicorn until interrupted. Events go to `config.events_out`
    (default DEFAULT_EVENTS_OUT, announced), journaled per request and flushed every
    `flush_interval_s` and on shutdown. Operator errors raise StorefrontError, one line each."""
    import dataclasses

    import uvicorn

    from simpersona.config import write_meta

    echo = echo or (lambda line: print(line, flush=True))
    if config.catalog is None:
        raise StorefrontError("no catalog given (--catalog PATH or storefront.catalog)")
    if not config.flush_interval_s > 0:
        raise StorefrontError(f"storefront.flush_interval_s must be > 0, got {config.flush_interval_s}")
    events_out = Path(config.events_out or DEFAULT_EVENTS_OUT)
    key_file = Path(config.cookie_key_file or default_key_file())
    config = dataclasses.replace(config, events_out=events_out, cookie_key_file=key_file)
    try:
        app = create_app(config, config.catalog)
        if not app.state.store.shops:
            raise StorefrontError(f"catalog {config.catalog} holds no products (every row lacks shop_id or product_id)")
        write_meta(events_out, "storefront", config, shops=list(app.state.store.shops))
    except OSError as e:
        raise StorefrontError(f"events folder {events_out}: cannot write there ({e.strerror or e})") from None
    log = app.state.store.log
    if log.recovered or log.torn:
        echo(f"storefront: recovered {log.recovered:,} logged row(s) an earlier run left in {events_out / 'journal'}"
             + (f" ({log.torn} torn line(s) skipped)" if log.torn else ""))
    echo(f"storefront: {len(app.state.store.shops)} shop(s) on http://{config.host}:{config.port}/")
    echo(f"storefront: events → {events_out.resolve()} (each request journaled; Parquet parts every "
         f"{config.flush_interval_s:g} s and on exit)")
    echo(f"storefront: cookies signed with the key in {key_file}" + (" (new: cookies of earlier runs no longer count)" if app.state.store.key_created else ""))
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
