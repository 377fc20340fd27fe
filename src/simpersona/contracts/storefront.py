"""The storefront's vocabulary: what its pages and URLs are made of, shared by the storefront
(which renders it), the agent environment, the policy, the scripted agent and the replayer.

URL grammar (`shop_base(shop) + section`):

    {base}/                          home                   page type "home"
    {base}/collections/{path}        a collection listing   "collection"
    {base}/search?q=…                search results         "search"
    {base}/products/{product_id}     a product              "product"
    {base}/cart                      the cart               "cart"
    {base}/checkout                  the checkout form      "checkout"
    {base}/orders/{order_id}         an order confirmation  "order"

Element ids (`data-sp-id` in the templates, `[id]` in a page snapshot): fixed ones below, and per
item `product-{product_id}`, `collection-{path}`, `qty-{product_id}`, `update-{product_id}`,
`remove-{product_id}`, `field-{name}` (name in CHECKOUT_FIELDS).
"""

from __future__ import annotations

import re
from urllib.parse import quote

# -- fixed element ids -----------------------------------------------------------------------
NAV_HOME = "nav-home"
NAV_CART = "nav-cart"
SEARCH_FORM = "search-form"
SEARCH_BOX = "search-q"
SEARCH_BUTTON = "search-go"
PAGE_NEXT = "page-next"
PAGE_PREV = "page-prev"
ADD_FORM = "add-form"
QUANTITY = "quantity"
ADD_BUTTON = "add-to-cart"
CHECKOUT_LINK = "checkout"
CHECKOUT_FORM = "checkout-form"
CONTINUE_BUTTON = "continue"
PLACE_ORDER = "place-order"

# -- per-item element id prefixes --------------------------------------------------------------
PRODUCT_PREFIX = "product-"
COLLECTION_PREFIX = "collection-"
QTY_PREFIX = "qty-"
UPDATE_PREFIX = "update-"
REMOVE_PREFIX = "remove-"
FIELD_PREFIX = "field-"


def product_link(product_id: str) -> str:
    return PRODUCT_PREFIX + str(product_id)


def collection_link(path: str) -> str:
    return COLLECTION_PREFIX + str(path)


def field_id(name: str) -> str:
    """The element id of a checkout field: `field_id("email")` → `'field-email'`."""
    return FIELD_PREFIX + name


# -- checkout form -----------------------------------------------------------------------------
# The checkout form's fields, in form order (e-mail first: the two-step variant asks it alone).
CHECKOUT_FIELDS: tuple[str, ...] = ("email", "name", "address", "city", "postal_code", "country")
# The countries the form's select offers (code, name).
COUNTRIES: tuple[tuple[str, str], ...] = (("US", "United States"), ("CA", "Canada"), ("GB", "United Kingdom"),
                                          ("DE", "Germany"), ("FR", "France"), ("NL", "Netherlands"), ("AU", "Australia"))
# What a simulated buyer types into each field (element id → value; the storefront takes no payment).
CHECKOUT_VALUES: dict[str, str] = {
    "field-email": "buyer@example.com", "field-name": "Sam Shopper", "field-address": "1 Market Street",
    "field-city": "Springfield", "field-postal_code": "12345", "field-country": "US",
}
# How the replayer's reasoning names each field.
FIELD_NAMES: dict[str, str] = {"field-email": "e-mail", "field-name": "name", "field-address": "street address",
                               "field-city": "city", "field-postal_code": "postal code", "field-country": "country"}

# -- URLs and page types -----------------------------------------------------------------------
PAGE_TYPES: tuple[str, ...] = ("home", "collection", "search", "product", "cart", "checkout", "order")
SECTIONS: dict[str, str] = {"collections": "collection", "search": "search", "products": "product", "cart": "cart",
                            "checkout": "checkout", "orders": "order"}
CART_PATH = "/cart"
CHECKOUT_PATH = "/checkout"


def shop_base(shop_id: str) -> str:
    """The URL prefix of a shop: `shop_base("a b")` → `'/s/a%20b'`."""
    return "/s/" + quote(shop_id, safe="")


def product_path(shop_id: str, product_id: str) -> str:
    """`product_path("s", "p 1")` → `'/s/s/products/p%201'`."""
    return f"{shop_base(shop_id)}/products/{quote(product_id, safe='')}"


def collection_path(shop_id: str, path: str) -> str:
    """`collection_path("s", "a/b c")` → `'/s/s/collections/a/b%20c'`."""
    return f"{shop_base(shop_id)}/collections/{quote(path, safe='/')}"


def page_type(url: str) -> str:
    """The page type (one of PAGE_TYPES) of a storefront URL.

    >>> [page_type(u) for u in ("/s/x/", "/s/x/products/p1", "/s/x/search?q=a", "/s/x/orders/1")]
    ['home', 'product', 'search', 'order']
    """
    parts = url.split("?")[0].split("/")  # ['', 's', shop, section, …]
    return SECTIONS.get(parts[3] if len(parts) > 3 else "", "home")


# -- page snapshots ----------------------------------------------------------------------------
_ELEMENT = re.compile(r"^\[([^\]]+)\] (\w+)(?::| )?(.*)$", re.M)
_VALUE = re.compile(r"= '(.*?)'")


def elements(page: str) -> dict[str, tuple[str, str]]:
    """id → (kind, rest of the line) of the `[id] kind: label` lines of a page snapshot.

    >>> elements("[nav-home] link: Home\\n[search-q] input = 'socks'")
    {'nav-home': ('link', ' Home'), 'search-q': ('input', "= 'socks'")}
    """
    return {m.group(1): (m.group(2), m.group(3)) for m in _ELEMENT.finditer(page)}


def typed_value(rest: str) -> str:
    """The value typed into an input, from the rest of its snapshot line ("" when empty).

    >>> typed_value("= 'a@b.c'"), typed_value("Full name")
    ('a@b.c', '')
    """
    m = _VALUE.search(rest)
    return m.group(1) if m else ""


def next_empty_field(els: dict[str, tuple[str, str]]) -> str | None:
    """The first checkout field on the page (element ids of CHECKOUT_VALUES, in form order) still
    empty, or None when every field shown is filled."""
    for fid in CHECKOUT_VALUES:
        if fid in els and not typed_value(els[fid][1]):
            return fid
    return None


# -- episode outcomes --------------------------------------------------------------------------
# How an episode ends: the agent ended (saying it reached its goal or not), the step budget or the
# wall clock ran out, the agent answered no valid action (`malformed`, the simulation's), the
# transport / server / agent backend failed (`crash`).
OUTCOMES: tuple[str, ...] = ("goal_reached", "ended", "steps_limit", "time_limit", "malformed", "crash")
