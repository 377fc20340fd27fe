"""Fuzzing the storefront's routes: no input gives a server error (bounded examples, quick)."""

from __future__ import annotations

from urllib.parse import quote

import pyarrow as pa
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpersona.events.schema import CATALOG_SCHEMA
from simpersona.storefront.app import create_app
from simpersona.storefront.config import StorefrontConfig


def catalog() -> pa.Table:
    rows = [
        ("s1", "p1", "Blue denim skirt", "apparel/women/skirts", "Acme", 19.99, None),
        ("s1", "p/2", "<script>alert(1)</script>", "apparel/women/tops", None, None, None),
        ("s1", "p%3", "Odd % id", "a b/c&d", "Ünï", 1.0, None),
    ]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


@pytest.fixture(scope="module")
def app():
    return create_app(StorefrontConfig(), catalog())


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz_no_server_error(case):
    response = case.call()
    assert response.status_code < 500, (case.path, case.path_parameters, case.query, case.body)


SEGMENT = st.one_of(
    st.sampled_from(["s1", "s", "collections", "products", "cart", "checkout", "orders", "search", "..", "%2e%2e", "%2F",
                     "apparel", "p1", "p%2F2", "1", "0", "-1", "%00", "~", "//"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12).map(lambda s: s.replace("?", "").replace("#", "")),
)


@given(
    segments=st.lists(SEGMENT, max_size=6),
    query=st.dictionaries(st.sampled_from(["q", "page", "step"]), st.text(max_size=300), max_size=3),
    form=st.dictionaries(st.sampled_from(["product_id", "quantity", "email", "name", "country", "step", "postal_code"]),
                         st.text(max_size=50), max_size=5),
    method=st.sampled_from(["GET", "POST"]),
    cookie=st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=";,\\\""), max_size=70),
)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_paths_and_forms_no_server_error(client, segments, query, form, method, cookie):
    c = client
    c.cookies.clear()
    c.cookies.update({"sp_session": cookie, "sp_variant": cookie})
    path = "/" + "/".join(quote(x, safe="%.~") for x in segments).lstrip("/")  # a path, never a //host
    r = c.get(path, params=query) if method == "GET" else c.post(path, params=query, data=form)
    assert r.status_code < 500, (method, path, query, form)
    assert "<script>alert" not in r.text
