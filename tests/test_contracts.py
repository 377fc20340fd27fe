"""The contracts layer: persona ids and the tokenizer check, the storefront vocabulary against
the pages the storefront really renders, one order per label vocabulary."""

from __future__ import annotations

import pytest

from simpersona.contracts import labels, persona, storefront as V


class _Tok:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_persona_token_round_trip():
    for k in (0, 7, 255):
        assert persona.parse_persona_token(persona.persona_token(k)) == k
    assert persona.parse_persona_token(None) is None and persona.token_or_none(None) is None
    with pytest.raises(ValueError, match="not a persona token"):
        persona.parse_persona_token("<|persona_x|>")


def test_check_tokenizer_names_checkpoint_and_missing_tokens():
    ok = _Tok({t: i for i, t in enumerate(["a", *persona.persona_tokens(4)])})
    persona.check_tokenizer(ok, 4, "ckpt/stage2")  # K = 4: all there
    persona.check_tokenizer(ok, 2, "ckpt/stage2")  # a smaller K is a subset
    with pytest.raises(ValueError, match=r"checkpoint ckpt/stage2: .*<\|persona_4\|>.*K = 6"):
        persona.check_tokenizer(ok, 6, "ckpt/stage2")
    shared = _Tok({"<|persona_0|>": 1, "<|persona_1|>": 1})
    with pytest.raises(ValueError, match="share ids"):
        persona.check_tokenizer(shared, 2, "x")


def test_label_orders_match_their_users():
    from simpersona.events.schema import EVENT_TYPES
    from simpersona.features.layout import STRATA
    from simpersona.vqvae.data import LABEL_COLUMNS

    assert EVENT_TYPES == labels.EVENT_TYPES
    assert STRATA == labels.STRATA
    assert LABEL_COLUMNS == tuple(f"{h}_label" for h in labels.HEADS)
    assert set(labels.BUY_STRATA) < set(labels.STRATA) and set(labels.STRATUM_NAMES) == set(labels.STRATA)


def test_page_types_and_urls():
    assert V.page_type(V.shop_base("my shop") + V.CART_PATH) == "cart"
    assert V.page_type(V.shop_base("s") + "/collections/a/b?page=2") == "collection"
    assert set(V.SECTIONS.values()) | {"home"} == set(V.PAGE_TYPES)
    assert [V.field_id(f) for f in V.CHECKOUT_FIELDS] == list(V.CHECKOUT_VALUES) == list(V.FIELD_NAMES)
    assert V.CHECKOUT_VALUES["field-country"] in dict(V.COUNTRIES)


def test_storefront_pages_use_the_vocabulary():
    """Walk the real storefront (home → collection → product → add → cart → checkout → order) and
    check every fixed id and per-item prefix of the contract is on the page where it belongs."""
    pytest.importorskip("fastapi")
    import pyarrow as pa

    from simpersona.storefront.app import create_app
    from simpersona.storefront.config import StorefrontConfig
    from simpersona.storefront.env import ShopEnv
    from simpersona.storefront.transports import AsgiTransport

    from simpersona.events.schema import CATALOG_SCHEMA

    rows = [("s1", "p1", "red sock", "wear/socks", None, 3.0, None), ("s1", "p2", "blue sock", "wear/socks", None, 4.0, None),
            ("s1", "p3", "green hat", "wear/hats", None, 9.0, None)]
    cat = pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)
    env = ShopEnv(AsgiTransport(create_app(StorefrontConfig(), cat)))
    obs, _ = env.reset(seed=0, options={"shop": "s1"})
    seen = {V.page_type(obs["url"]): V.elements(obs["page"])}
    for fixed in (V.NAV_HOME, V.NAV_CART, V.SEARCH_BOX):
        assert fixed in seen["home"]
    colls = [e for e in seen["home"] if e.startswith(V.COLLECTION_PREFIX)]
    obs = env.step({"action": "click", "element_id": colls[0]})[0]
    assert V.page_type(obs["url"]) == "collection"
    prods = [e for e in V.elements(obs["page"]) if e.startswith(V.PRODUCT_PREFIX)]
    obs = env.step({"action": "click", "element_id": prods[0]})[0]
    assert V.page_type(obs["url"]) == "product" and V.ADD_BUTTON in V.elements(obs["page"])
    obs = env.step({"action": "add_to_cart", "quantity": 1})[0]
    els = V.elements(obs["page"])
    pid = prods[0][len(V.PRODUCT_PREFIX):]
    assert V.page_type(obs["url"]) == "cart"
    assert {V.QTY_PREFIX + pid, V.UPDATE_PREFIX + pid, V.REMOVE_PREFIX + pid, V.CHECKOUT_LINK} <= set(els)
    obs = env.step({"action": "checkout"})[0]
    els = V.elements(obs["page"])
    assert V.page_type(obs["url"]) == "checkout" and V.PLACE_ORDER in els
    while (fid := V.next_empty_field(els)) is not None:
        obs = env.step({"action": "fill", "element_id": fid, "value": V.CHECKOUT_VALUES[fid]})[0]
        assert obs["error"] is None, obs["error"]
        els = V.elements(obs["page"])
    assert set(V.CHECKOUT_VALUES) <= set(els)
    obs = env.step({"action": "click", "element_id": V.PLACE_ORDER})[0]
    assert V.page_type(obs["url"]) == "order", obs["page"][:300]
    env.close()
