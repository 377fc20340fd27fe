"""Small inline-SVG charts (strings), no dependencies. Every label is HTML-escaped."""

from __future__ import annotations

from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def _svg(w: int, h: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="{escape(title)}" font-family="sans-serif" font-size="11">' + "".join(body) + "</svg>")


def hbars(items: list[tuple[str, float | None]], title: str, lo: float = 0.0, hi: float = 1.0,
          marks: dict[str, float] | None = None, fmt: str = "{:.2f}") -> str:
    """Horizontal bars (label, value); `marks`: label → reference value drawn as a black tick."""
    lw, bw, rh = 170, 300, 18
    h = 24 + rh * len(items) + 10
    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>']
    span = (hi - lo) or 1.0
    x0 = lw + bw * (0 - lo) / span if lo < 0 < hi else lw
    for i, (label, v) in enumerate(items):
        y = 24 + i * rh
        body.append(f'<text x="{lw - 4}" y="{y + 12}" text-anchor="end">{escape(label[:28])}</text>')
        if v is None:
            body.append(f'<text x="{lw + 4}" y="{y + 12}" fill="#888">n/a</text>')
            continue
        xv = lw + bw * (min(max(v, lo), hi) - lo) / span
        x, w = min(x0, xv), abs(xv - x0)
        body.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{max(w, 0.5):.1f}" height="{rh - 5}" fill="{PALETTE[0]}"/>')
        body.append(f'<text x="{lw + bw + 6}" y="{y + 12}">{escape(fmt.format(v))}</text>')
        if marks and label in marks and marks[label] is not None:
            xm = lw + bw * (min(max(marks[label], lo), hi) - lo) / span
            body.append(f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{y}" y2="{y + rh - 1}" stroke="#000" stroke-width="2"/>')
    return _svg(lw + bw + 60, h, body, title)


def stacked(rows: list[tuple[str, list[float]]], keys: list[str], title: str) -> str:
    """Horizontal 100% stacked bars, one per row (shares summing to ~1), with a legend of keys."""
    lw, bw, rh = 150, 380, 16
    h = 40 + rh * len(rows) + 6
    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>']
    for j, k in enumerate(keys[:10]):
        body.append(f'<rect x="{lw + j * 48}" y="20" width="10" height="10" fill="{PALETTE[j % 10]}"/>'
                    f'<text x="{lw + j * 48 + 13}" y="29">{escape(str(k)[:6])}</text>')
    for i, (label, shares) in enumerate(rows):
        y = 36 + i * rh
        body.append(f'<text x="{lw - 4}" y="{y + 11}" text-anchor="end">{escape(label[:24])}</text>')
        x = float(lw)
        tot = sum(shares) or 1.0
        for j, s in enumerate(shares):
            w = bw * s / tot
            if w > 0:
                body.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{rh - 3}" fill="{PALETTE[j % 10]}">'
                            f'<title>{escape(f"{label} {keys[j]}: {s:.1%}")}</title></rect>')
            x += w
    return _svg(lw + bw + 10, h, body, title)


def grouped(rows: list[tuple[str, list[float | None]]], series: list[str], title: str, hi: float | None = None) -> str:
    """Vertical grouped bars: one group per row, one bar per series."""
    n, m = len(rows), len(series)
    gw, bw, ph = max(14 * m + 10, 40), 12, 160
    w = max(50 + gw * n + 10, 60 + 110 * m)
    vals = [v for _, vs in rows for v in vs if v is not None]
    top = hi or (max(vals) if vals else 1.0) or 1.0
    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>']
    for j, s in enumerate(series):
        body.append(f'<rect x="{50 + j * 110}" y="20" width="10" height="10" fill="{PALETTE[j % 10]}"/>'
                    f'<text x="{50 + j * 110 + 13}" y="29">{escape(s)}</text>')
    y0 = 40 + ph
    body.append(f'<line x1="48" x2="{w}" y1="{y0}" y2="{y0}" stroke="#444"/>')
    for t in (0.0, 0.5, 1.0):
        yt = y0 - ph * t
        body.append(f'<text x="44" y="{yt + 4:.1f}" text-anchor="end">{top * t:.2g}</text>')
    for i, (label, vs) in enumerate(rows):
        gx = 50 + i * gw
        for j, v in enumerate(vs):
            if v is None:
                continue
            hh = ph * min(v, top) / top
            body.append(f'<rect x="{gx + j * (bw + 2)}" y="{y0 - hh:.1f}" width="{bw}" height="{hh:.1f}" fill="{PALETTE[j % 10]}">'
                        f'<title>{escape(f"{label} {series[j]}: {v:.3g}")}</title></rect>')
        body.append(f'<text x="{gx + gw / 2 - 5:.1f}" y="{y0 + 12}" text-anchor="middle">{escape(label[:10])}</text>')
    return _svg(w, y0 + 20, body, title)


def lines(series: dict[str, list[tuple[float, float]]], title: str, ylabel: str = "") -> str:
    """Line chart of (x, y) series with a shared y axis."""
    w, h, l, b = 520, 200, 50, 30
    pts = [p for s in series.values() for p in s]
    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>']
    if not pts:
        return _svg(w, 40, body + ['<text x="4" y="32">no data</text>'], title)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(0.0, min(ys)), max(ys) or 1.0
    sx = lambda x: l + (w - l - 10) * (x - x0) / ((x1 - x0) or 1)  # noqa: E731
    sy = lambda y: h - b - (h - b - 30) * (y - y0) / ((y1 - y0) or 1)  # noqa: E731
    body.append(f'<line x1="{l}" x2="{w - 10}" y1="{h - b}" y2="{h - b}" stroke="#444"/><line x1="{l}" x2="{l}" y1="30" y2="{h - b}" stroke="#444"/>')
    body.append(f'<text x="{l - 4}" y="34" text-anchor="end">{y1:.3g}</text><text x="{l - 4}" y="{h - b}" text-anchor="end">{y0:.3g}</text>')
    body.append(f'<text x="{l}" y="{h - b + 14}">{x0:.0f}</text><text x="{w - 10}" y="{h - b + 14}" text-anchor="end">{x1:.0f}</text>')
    body.append(f'<text x="{w / 2}" y="{h - 4}" text-anchor="middle">{escape(ylabel)}</text>')
    for j, (name, s) in enumerate(series.items()):
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        body.append(f'<polyline fill="none" stroke="{PALETTE[j % 10]}" stroke-width="1.5" points="{d}"/>')
        body.append(f'<text x="{w - 150}" y="{40 + 13 * j}" fill="{PALETTE[j % 10]}">{escape(name)}</text>')
    return _svg(w, h, body, title)


def scatter(points: list[tuple[float, float, str]], title: str, xlabel: str, ylabel: str) -> str:
    """Scatter of (x, y, label) in [0, max] on both axes, with the y = x diagonal."""
    w = h = 260
    l, b = 40, 34
    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>']
    if not points:
        return _svg(w, 40, body + ['<text x="4" y="32">no data</text>'], title)
    top = max(max(p[0] for p in points), max(p[1] for p in points)) or 1.0
    sx = lambda x: l + (w - l - 10) * x / top  # noqa: E731
    sy = lambda y: h - b - (h - b - 24) * y / top  # noqa: E731
    body.append(f'<line x1="{l}" x2="{w - 10}" y1="{h - b}" y2="{h - b}" stroke="#444"/><line x1="{l}" x2="{l}" y1="24" y2="{h - b}" stroke="#444"/>')
    body.append(f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(top):.1f}" y2="{sy(top):.1f}" stroke="#bbb" stroke-dasharray="4 3"/>')
    body.append(f'<text x="{l - 4}" y="28" text-anchor="end">{top:.2g}</text><text x="{l - 4}" y="{h - b}" text-anchor="end">0</text>')
    body.append(f'<text x="{w - 10}" y="{h - b + 12}" text-anchor="end">{top:.2g}</text>')
    body.append(f'<text x="{(l + w) / 2}" y="{h - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    body.append(f'<text x="10" y="{(h - b) / 2 + 12}" transform="rotate(-90 10 {(h - b) / 2 + 12})" text-anchor="middle">{escape(ylabel)}</text>')
    for x, y, label in points:
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{PALETTE[0]}" fill-opacity="0.7">'
                    f'<title>{escape(f"{label}: {x:.3f} / {y:.3f}")}</title></circle>')
    return _svg(w, h, body, title)
