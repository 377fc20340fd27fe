"""`ShopEnv`: a Gymnasium-style environment in which an agent shops on a storefront."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from simpersona.contracts import storefront as V
from simpersona.storefront.actions import (
    Action, ActionError, AddToCart, Back, Checkout, Click, EndSession, Fill, RemoveFromCart, Search, Submit,
    ViewCart, action_to_dict, bounded, parse_action,
)
from simpersona.storefront.config import EnvConfig
from simpersona.storefront.cookies import COOKIE_ID, visitor_cookies
from simpersona.storefront.snapshot import Snapshot, parse_cached
from simpersona.storefront.transports import Page

OPTIONS = ("shop", "persona_token", "goal", "buyer_id", "session_id", "variant", "start_path")


class ShopEnv:
    """A shopping episode on one shop of a storefront, through any transport (in-process ASGI,
    HTTP or Chromium); the server logs every request as canonical events, exactly as for people.

    `reset(seed=None, options={"shop": …, "persona_token": …, "goal": …})` → `(obs, info)`;
    optional options: `buyer_id`, `session_id` (cookies; default: a hash of persona token and
    seed, and a fresh random id), `variant` ("A"/"B"; default drawn from the seed with
    `variant_share_b`), `start_path` (landing page under the shop, default "/"). The cookies are
    signed with the transport's `cookie_key` (the server's; see `storefront.cookies`).
    `step(action)` → `(obs, reward, terminated, truncated, info)`.

    Action Space
        One JSON object (text, dict or an `actions` dataclass), parsed by `actions.parse_action`;
        schema in `actions.ACTION_SCHEMA`: search{query}, click{element_id}, add_to_cart{quantity},
        remove_from_cart{product_id}, view_cart, checkout, fill{element_id, value},
        submit{element_id?}, back, end_session{goal_reached}. An unparseable or non-executable
        action (bad JSON, any JSON value of the wrong type in any field, unknown element id,
        add_to_cart off a product page …) does not crash: it uses a step, leaves the page as it
        was, is counted in `info["invalid_actions"]` and described in `info["error"]` and
        `obs["error"]` (at most `actions.MAX_ERROR_CHARS`, 500, characters).

    Observation
        A dict: `url` (path?query), `page` (the compact DOM snapshot: URL, title, visible text
        and the interactive elements as `[id] link: …`, `[id] input … = value`, in page order,
        pruned to `obs_token_budget` tokens), `status` (HTTP status of the page), `error` (the
        last action's problem or None), `goal` and `persona_token` (as given to reset).

    Episode End
        terminated: the agent sent end_session (reward 1.0 when it says goal_reached, else 0.0;
        self-reported, a judge decides elsewhere). truncated: the step budget (`max_steps`, 30)
        is used up, the wall clock passed `time_limit_s`, or the transport failed or the
        server answered 5xx. `info["outcome"]`: "goal_reached", "ended", "steps_limit",
        "time_limit", "crash", or None while the episode goes on. Steps after the end are
        reported as errors; call reset().
    """

    def __init__(self, transport, config: EnvConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.transport = transport
        self.config = config or EnvConfig()
        self.clock = clock
        self.snap: Snapshot | None = None
        self.done = True

    # -- episode -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; valid: {list(OPTIONS)}")
        if not isinstance(opts.get("shop"), str) or not opts["shop"]:
            raise ValueError("reset needs options['shop'], the shop id to visit")
        rng = random.Random(seed)
        self.shop = opts["shop"]
        self.persona_token = str(opts.get("persona_token") or "")
        self.goal = str(opts.get("goal") or "")
        digest = hashlib.sha256(f"{self.persona_token}|{seed}|{rng.random()}".encode()).hexdigest()
        self.buyer_id = str(opts.get("buyer_id") or f"agent-{digest[:16]}")
        self.session_id = str(opts.get("session_id") or f"ep-{random.SystemRandom().getrandbits(64):016x}")
        for name in ("buyer_id", "session_id"):
            if not COOKIE_ID.match(getattr(self, name)):
                raise ValueError(f"{name} must match {COOKIE_ID.pattern}")
        draw = rng.random()
        self.variant = str(opts.get("variant") or ("B" if draw < self.config.variant_share_b else "A"))
        if self.variant not in ("A", "B"):
            raise ValueError("variant must be 'A' or 'B'")
        self.base = V.shop_base(self.shop)
        self.steps = 0
        self.invalid = 0
        self.started = self.clock()
        self.history: list[str] = []
        self.fills: dict[str, str] = {}
        self.done = False
        self.terminated = self.truncated = False
        self.outcome: str | None = None
        key = self.transport.cookie_key
        if key is None:
            raise ValueError("the transport holds no cookie key, so the episode cannot choose its visitor: give "
                             "HttpTransport/BrowserTransport the server's key (cookie_key=…, see storefront.cookies)")
        self.transport.start(visitor_cookies(key, self.buyer_id, self.session_id, self.variant))
        start = str(opts.get("start_path") or "/")
        self._load(self.transport.get(self.base + (start if start.startswith("/") else "/" + start)))
        if self.page.status == 404 and self.snap.title == "Error 404":
            raise ValueError(f"the storefront has no page {self.page.url!r} (no shop {self.shop!r}?)")
        return self._obs(None), self._info(None, None)

    def step(self, action: str | dict | Action) -> tuple[dict, float, bool, bool, dict]:
        if self.done:
            self.invalid += 1
            err = "the episode is over; call reset()"
            return self._obs(err), 0.0, self.terminated, self.truncated, self._info(err, None)
        self.steps += 1
        error: str | None = None
        parsed: Action | None = None
        reward = 0.0
        try:
            parsed = parse_action(action)
            self._execute(parsed)
            if isinstance(parsed, EndSession):
                self.terminated = True
                self.outcome = "goal_reached" if parsed.goal_reached else "ended"
                reward = 1.0 if parsed.goal_reached else 0.0
            elif self.page.status >= 500:
                error = f"the server failed (HTTP {self.page.status})"
                self.truncated, self.outcome = True, "crash"
        except ActionError as e:
            error = str(e)
            self.invalid += 1
        except Exception as e:  # transport or browser failure: the episode crashes, the env does not
            error = bounded(f"crash: {type(e).__name__}: {e}")
            self.truncated, self.outcome = True, "crash"
        if not (self.terminated or self.truncated):
            if self.steps >= self.config.max_steps:
                self.truncated, self.outcome = True, "steps_limit"
            elif self.config.time_limit_s and self.clock() - self.started > self.config.time_limit_s:
                self.truncated, self.outcome = True, "time_limit"
        self.done = self.terminated or self.truncated
        return self._obs(error), reward, self.terminated, self.truncated, self._info(error, parsed)

    def close(self) -> None:
        self.transport.close()

    # -- observation -------------------------------------------------------------------------
    def _load(self, page: Page, push: bool = True) -> None:
        self.page = page
        self.snap = parse_cached(page.html, page.url)
        self.fills = {}
        if push:
            self.history.append(page.url)

    def _obs(self, error: str | None) -> dict:
        text = self.snap.render(self.config.obs_token_budget, self.config.chars_per_token, self.fills)
        return {"url": self.page.url, "page": text, "status": self.page.status, "error": error,
                "goal": self.goal, "persona_token": self.persona_token}

    def _info(self, error: str | None, action: Action | None) -> dict:
        return {"step": self.steps, "invalid_actions": self.invalid, "error": error, "outcome": self.outcome,
                "action": action_to_dict(action) if action is not None else None, "status": self.page.status,
                "buyer_id": self.buyer_id, "session_id": self.session_id, "variant": self.variant,
                "elapsed_s": self.clock() - self.started}

    # -- actions -----------------------------------------------------------------------------
    def _element(self, element_id: str):
        e = self.snap.elements.get(element_id)
        if e is None:
            ids = list(self.snap.elements)
            shown = ", ".join(ids[:12]) + (" …" if len(ids) > 12 else "")
            raise ActionError(f"no element {element_id!r} on this page; ids here: {shown}")
        return e

    def _submit(self, form_id: str, button_id: str | None, fills: dict[str, str] | None = None) -> None:
        form = self.snap.forms[form_id]
        if button_id is None:
            button_id = form.buttons[0] if form.buttons else None
        merged = {**self.fills, **(fills or {})}
        self._load(self.transport.submit(self.snap, form_id, merged, button_id))

    def _execute(self, a: Action) -> None:
        snap = self.snap
        if isinstance(a, Search):
            if V.SEARCH_FORM not in snap.forms or V.SEARCH_BOX not in snap.elements:
                raise ActionError("this page has no search box")
            self._submit(V.SEARCH_FORM, V.SEARCH_BUTTON, {V.SEARCH_BOX: a.query})
        elif isinstance(a, Click):
            e = self._element(a.element_id)
            if e.kind == "link":
                if not e.href:
                    raise ActionError(f"link {e.id!r} leads nowhere")
                self._load(self.transport.get(e.href))
            elif e.kind == "button":
                if e.form is None:
                    raise ActionError(f"button {e.id!r} belongs to no form")
                self._submit(e.form, e.id)
            else:
                raise ActionError(f"{e.id!r} is an {e.kind}: use fill to type into it")
        elif isinstance(a, AddToCart):
            if V.ADD_FORM not in snap.forms or V.QUANTITY not in snap.elements:
                raise ActionError("no add-to-cart button on this page: open a product page first")
            self._submit(V.ADD_FORM, V.ADD_BUTTON, {V.QUANTITY: str(a.quantity)})
        elif isinstance(a, RemoveFromCart):
            bid = V.REMOVE_PREFIX + a.product_id
            if bid not in snap.elements:
                where = "it is not in the cart" if V.NAV_CART in snap.elements and snap.url.endswith(V.CART_PATH) else "open the cart first (view_cart)"
                raise ActionError(f"cannot remove {a.product_id!r} here: {where}")
            self._submit(snap.elements[bid].form, bid)
        elif isinstance(a, ViewCart):
            self._load(self.transport.get(self.base + V.CART_PATH))
        elif isinstance(a, Checkout):
            self._load(self.transport.get(self.base + V.CHECKOUT_PATH))
        elif isinstance(a, Fill):
            e = self._element(a.element_id)
            if e.kind not in ("input", "select"):
                raise ActionError(f"{e.id!r} is a {e.kind}, not a field: use click")
            value = a.value
            if e.kind == "select":
                match = [v for v, t in e.options if value in (v, t) or value.lower() == t.lower()]
                if not match:
                    raise ActionError(f"{e.id!r} has no option {value!r}; options: {[t for _, t in e.options]}")
                value = match[0]
            self.fills[e.id] = value
        elif isinstance(a, Submit):
            if a.element_id is not None:
                if a.element_id in snap.forms:
                    form_id = a.element_id
                else:
                    form_id = self._element(a.element_id).form
                    if form_id is None:
                        raise ActionError(f"{a.element_id!r} is in no form")
            else:
                forms = sorted({snap.elements[i].form for i in self.fills if snap.elements[i].form})
                if len(forms) != 1:
                    raise ActionError("say which form to submit: give the element_id of one of its fields or buttons")
                form_id = forms[0]
            button = a.element_id if a.element_id in snap.elements and snap.elements[a.element_id].kind == "button" else None
            self._submit(form_id, button)
        elif isinstance(a, Back):
            if len(self.history) < 2:
                raise ActionError("there is no previous page")
            self.history.pop()
            self._load(self.transport.get(self.history[-1]), push=False)
        elif isinstance(a, EndSession):
            pass
