"""HTML page → compact DOM snapshot: the interactive elements (stable ids from `data-sp-id`)
and the visible text marked `data-sp-text`, rendered as lines pruned to a token budget.

The same parser reads the HTML of every transport (in-process, HTTP, Chromium's serialised
DOM), so observations agree across them. Forms are kept whole (action, method, hidden fields)
so that the HTTP transports can submit them as a browser would. `parse_cached` memoises `parse`
(pages repeat: the same home, collection and product pages across sessions), and a snapshot keeps
its rendered text without typed-in values, so a page seen before costs a dictionary look-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from html.parser import HTMLParser

# Distinct (html, url) pages whose snapshots `parse_cached` keeps (least recently used dropped).
PARSE_CACHE = 1024
VOID = frozenset({"input", "br", "img", "meta", "link", "hr", "area", "base", "col", "embed", "source", "track", "wbr"})


@dataclass
class Element:
    """One interactive element: a link, a button, a text input or a select."""

    id: str
    kind: str  # "link" | "button" | "input" | "select"
    label: str = ""
    href: str | None = None
    form: str | None = None  # data-sp-id of the enclosing form
    name: str | None = None
    value: str = ""
    options: list[tuple[str, str]] = field(default_factory=list)  # select: (value, text)


@dataclass
class Form:
    id: str
    action: str
    method: str
    # (name, value, element id or None for hidden fields) in document order.
    fields: list[tuple[str, str, str | None]] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    url: str
    title: str
    # (kind, text or element id) in document order; kind "text" or "element".
    items: list[tuple[str, str]]
    elements: dict[str, Element]
    forms: dict[str, Form]
    # render() results without typed-in values, by (token_budget, chars_per_token)
    _rendered: dict[tuple[int, float], str] = field(default_factory=dict, repr=False, compare=False)

    def element_line(self, e: Element, values: dict[str, str]) -> str:
        if e.kind == "link":
            return f"[{e.id}] link: {e.label}"
        if e.kind == "button":
            return f"[{e.id}] button: {e.label}"
        if e.kind == "select":
            opts = ", ".join(v for v, _ in e.options if v)
            return f"[{e.id}] select {e.label} = {values.get(e.id, e.value)!r} (options: {opts})"
        return f"[{e.id}] input {e.label} = {values.get(e.id, e.value)!r}"

    def render(self, token_budget: int, chars_per_token: float = 4.0, values: dict[str, str] | None = None) -> str:
        """Page text for the agent: URL, title, then text and element lines in page order.
        Past the budget, listed links (products, collections, pages) go first, then lines
        from the end; a last line says how many were left out. `values`: typed-in input values."""
        if not values:
            key = (token_budget, chars_per_token)
            text = self._rendered.get(key)
            if text is None:
                text = self._rendered[key] = self._render(token_budget, chars_per_token, {})
            return text
        return self._render(token_budget, chars_per_token, values)

    def _render(self, token_budget: int, chars_per_token: float, values: dict[str, str]) -> str:
        head = [f"URL: {self.url}", f"TITLE: {self.title}"]
        lines = [
            (t if k == "text" else self.element_line(self.elements[t], values), k == "element" and self.elements[t].kind == "link")
            for k, t in self.items
        ]
        budget = max(0, int(token_budget * chars_per_token))
        size = sum(len(x) + 1 for x in head) + sum(len(x) + 1 for x, _ in lines)
        keep = [True] * len(lines)
        dropped = 0
        for pass_links in (True, False):
            for i in range(len(lines) - 1, -1, -1):
                if size <= budget:
                    break
                if keep[i] and (lines[i][1] or not pass_links):
                    keep[i] = False
                    size -= len(lines[i][0]) + 1
                    dropped += 1
        out = head + [x for (x, _), k in zip(lines, keep) if k]
        if dropped:
            out.append(f"({dropped} more lines not shown)")
        return "\n".join(out)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.items: list[tuple[str, str]] = []
        self.elements: dict[str, Element] = {}
        self.forms: dict[str, Form] = {}
        self.form: Form | None = None
        # Open text captures: [tag, depth, parts, sink]; sink is an Element, "text", "title" or an option list.
        self.captures: list[list] = []

    def _id(self, raw: str) -> str:
        eid, n = raw, 1
        while eid in self.elements:
            n += 1
            eid = f"{raw}#{n}"
        return eid

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        for c in self.captures:
            if c[0] == tag:
                c[1] += 1
        if tag == "title":
            self.captures.append([tag, 1, [], "title"])
            return
        if tag == "form":
            fid = a.get("data-sp-id") or f"form-{len(self.forms) + 1}"
            self.form = Form(fid, a.get("action", ""), (a.get("method") or "get").lower())
            self.forms[fid] = self.form
            return
        if tag == "input":
            itype = (a.get("type") or "text").lower()
            name = a.get("name")
            if itype == "hidden":
                if self.form is not None and name:
                    self.form.fields.append((name, a.get("value", ""), None))
                return
            if "data-sp-id" not in a:
                return
            e = Element(self._id(a["data-sp-id"]), "input", a.get("aria-label") or a.get("placeholder") or name or "",
                        form=self.form.id if self.form else None, name=name, value=a.get("value", ""))
            self._add(e)
            if self.form is not None and name:
                self.form.fields.append((name, e.value, e.id))
            return
        if tag == "option" and self.captures and isinstance(self.captures[-1][3], Element) and self.captures[-1][3].kind == "select":
            sel = self.captures[-1][3]
            sel.options.append((a.get("value", ""), ""))
            if "selected" in a:
                sel.value = a.get("value", "")
            self.captures.append([tag, 1, [], ("option", sel)])
            return
        if "data-sp-id" in a and tag in ("a", "button", "select"):
            kind = {"a": "link", "button": "button", "select": "select"}[tag]
            e = Element(self._id(a["data-sp-id"]), kind, a.get("aria-label", "") if tag == "select" else "",
                        href=a.get("href") if tag == "a" else None, form=self.form.id if self.form else None,
                        name=a.get("name"), value=a.get("value", ""))
            self._add(e)
            if self.form is not None and tag == "button":
                self.form.buttons.append(e.id)
            if self.form is not None and tag == "select" and e.name:
                self.form.fields.append((e.name, "", e.id))
            self.captures.append([tag, 1, [], e])
            return
        if "data-sp-text" in a and tag not in VOID:
            self.captures.append([tag, 1, [], "text"])

    def _add(self, e: Element) -> None:
        self.elements[e.id] = e
        self.items.append(("element", e.id))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "form":
            self.form = None
            return
        for c in self.captures:
            if c[0] == tag:
                c[1] -= 1
        while self.captures and self.captures[-1][1] <= 0:
            _, _, parts, sink = self.captures.pop()
            text = " ".join("".join(parts).split())
            if sink == "title":
                self.title = text
            elif sink == "text":
                if text:
                    self.items.append(("text", text))
            elif isinstance(sink, tuple):
                sel = sink[1]
                value, _ = sel.options[-1]
                sel.options[-1] = (value, text)
            elif sink.kind in ("link", "button") and not sink.label:
                sink.label = text

    def handle_data(self, data):
        for c in self.captures:
            c[2].append(data)


def parse(html: str, url: str) -> Snapshot:
    """The snapshot of one page; a select without a selected option has its first option's value."""
    p = _Parser()
    p.feed(html)
    p.close()
    for e in p.elements.values():
        if e.kind == "select" and not e.value and e.options:
            e.value = e.options[0][0]
    for f in p.forms.values():
        f.fields = [(n, (p.elements[i].value if i else v), i) for n, v, i in f.fields]
    return Snapshot(url, p.title, p.items, p.elements, p.forms)


@lru_cache(maxsize=PARSE_CACHE)
def parse_cached(html: str, url: str) -> Snapshot:
    """`parse`, memoised: one snapshot per distinct (html, url), shared by every caller (read it, never change it)."""
    return parse(html, url)
