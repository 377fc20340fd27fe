"""The forest plot of an experiment (inline SVG, no dependencies): one row per metric, the relative
lift of B over A with its analytic interval (thick) and bootstrap interval (thin), a line at 0."""

from __future__ import annotations

import math
from html import escape


def forest_svg(rows: list[tuple[str, float | None, float | None, float | None, float | None, float | None]],
               title: str, subtitle: str = "") -> str:
    """rows: (label, lift, lo, hi, boot_lo, boot_hi) in relative terms (0.05 = +5%); None where
    undefined. The axis spans every finite bound and 0.

    >>> "<svg" in forest_svg([("purchase", 0.1, 0.0, 0.2, -0.01, 0.21)], "t")
    True
    """
    vals = [v for r in rows for v in r[1:] if v is not None and math.isfinite(v)] + [0.0]
    lo, hi = min(vals), max(vals)
    pad = 0.08 * ((hi - lo) or 1.0)
    lo, hi = lo - pad, hi + pad
    lw, pw, rh, top = 120, 380, 22, 44
    w, h = lw + pw + 150, top + rh * len(rows) + 30

    def x(v: float) -> float:
        return lw + pw * (v - lo) / (hi - lo)

    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>',
            f'<text x="4" y="30" fill="#555">{escape(subtitle)}</text>',
            f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 4}" y2="{top + rh * len(rows)}" stroke="#888" stroke-dasharray="3,3"/>']
    for i, (label, lift, a, b, ba, bb) in enumerate(rows):
        y = top + i * rh + rh / 2
        body.append(f'<text x="{lw - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        if lift is None or not math.isfinite(lift):
            body.append(f'<text x="{lw + 4}" y="{y + 4:.1f}" fill="#888">n/a (arm A mean is 0)</text>')
            continue
        if ba is not None and bb is not None and math.isfinite(ba) and math.isfinite(bb):
            body.append(f'<line x1="{x(ba):.1f}" x2="{x(bb):.1f}" y1="{y + 5:.1f}" y2="{y + 5:.1f}" stroke="#f28e2b" stroke-width="1.5"/>')
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            body.append(f'<line x1="{x(a):.1f}" x2="{x(b):.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#4e79a7" stroke-width="4"/>')
        body.append(f'<circle cx="{x(lift):.1f}" cy="{y:.1f}" r="4" fill="#000"/>')
        ci = f" [{a:+.1%}, {b:+.1%}]" if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) else ""
        body.append(f'<text x="{lw + pw + 8}" y="{y + 4:.1f}">{lift:+.1%}{escape(ci)}</text>')
    yb = top + rh * len(rows) + 16
    for v in (lo, 0.0, hi):
        body.append(f'<text x="{x(v):.1f}" y="{yb}" text-anchor="middle" fill="#555">{v:+.0%}</text>')
    body.append(f'<text x="{lw + pw + 8}" y="{yb}" fill="#555">lift of B over A: ● point, '
                f'<tspan fill="#4e79a7">━ t/delta</tspan> <tspan fill="#f28e2b">─ bootstrap</tspan></text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 160}" height="{h}" viewBox="0 0 {w + 160} {h}" role="img" '
            f'aria-label="{escape(title)}" font-family="sans-serif" font-size="11">' + "".join(body) + "</svg>")
