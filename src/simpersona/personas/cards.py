"""Persona cards: what each code stands for, as JSON and a readable Markdown page.

Per code: size and share of buyers, stratum mix P(stratum | k), the aux heads' labels at the code
vector (argmax of each head applied to e_k: low / medium / high engagement, exploration, purchase
intensity), centroid scalars in raw units (means of buyers.parquet's raw columns over the code's
buyers), and the most frequent collections, brands, queries and viewed products of its buyers'
sessions (buyer_sessions.parquet joined to assignments in DuckDB; counts are sessions).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from simpersona.contracts.labels import HEADS, LEVELS
from simpersona.features.layout import SCALAR_NAMES
from simpersona.vqvae.model import VQVAE

TOP_FIELDS: dict[str, str] = {
    "collections": "collections", "brands": "brands", "queries": "queries", "products": "viewed_titles",
}


def top_items(assignments: Path, sessions: Path, top_n: int) -> dict[int, dict[str, list[list]]]:
    """code → field → [[item, sessions], …] (the top_n most frequent, ties by name)."""
    out: dict[int, dict[str, list[list]]] = {}
    if not sessions.exists():
        return out
    con = duckdb.connect()
    have = set(pq.read_schema(sessions).names)
    for field, col in TOP_FIELDS.items():
        if col not in have:
            continue
        rows = con.execute(f"""
            WITH s AS (
              SELECT a.code, unnest(s."{col}") AS item
              FROM read_parquet('{sessions}') s JOIN read_parquet('{assignments}') a USING (shop_id, buyer_id))
            SELECT code, item, count(*) AS n FROM s WHERE item IS NOT NULL AND item <> '' GROUP BY code, item
            QUALIFY row_number() OVER (PARTITION BY code ORDER BY n DESC, item) <= {int(top_n)}
            ORDER BY code, n DESC, item""").fetchall()
        for code, item, n in rows:
            out.setdefault(int(code), {}).setdefault(field, []).append([item, int(n)])
    return out


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def to_markdown(cards: list[dict]) -> str:
    lines = ["# Persona cards", "",
             f"{len(cards)} codes with buyers. Labels are the auxiliary heads' argmax at the code vector; "
             "centroid scalars are means in raw units; top lists count sessions.", ""]
    for c in sorted(cards, key=lambda c: -c["size"]):
        mix = " · ".join(f"{s} {100 * p:.0f}%" for s, p in c["strata"].items() if p > 0)
        lab = c["labels"]
        lines += [f"## persona {c['code']} — {c['size']:,} buyers ({100 * c['share']:.2f}%)", "",
                  f"- strata: {mix}",
                  f"- engagement **{lab['engage']}**, exploration **{lab['explore']}**, purchase **{lab['purchase']}**",
                  "- centroid: " + ", ".join(f"{k} {_fmt(v)}" for k, v in c["centroid"].items())]
        for field, items in c["top"].items():
            lines.append(f"- top {field}: " + ", ".join(f"{it} ({n})" for it, n in items))
        lines.append("")
    return "\n".join(lines)


def write_cards(model: VQVAE, out_dir: Path, feat_dir: Path, top_n: int) -> int:
    """Write out_dir/cards.json and cards.md from the assign outputs; returns the number of cards."""
    means = pq.read_table(out_dir / "code_means.parquet").to_pydict()
    strata = pq.read_table(out_dir / "code_strata.parquet").to_pydict()
    labels = {h: v.tolist() for h, v in model.code_labels().items()}
    tops = top_items(out_dir / "assignments.parquet", Path(feat_dir) / "buyer_sessions.parquet", top_n)
    total = sum(means["n"])
    cards = []
    for i, code in enumerate(means["code"]):
        if means["n"][i] == 0:
            continue
        mix = {s: p for c, s, p in zip(strata["code"], strata["stratum"], strata["share"]) if c == code}
        cards.append({
            "code": int(code), "size": int(means["n"][i]), "share": means["n"][i] / total,
            "strata": dict(sorted(mix.items())),
            "labels": {h: LEVELS[labels[h][code]] for h in HEADS},
            "centroid": {c: means[c][i] for c in SCALAR_NAMES},
            "top": tops.get(int(code), {}),
        })
    (out_dir / "cards.json").write_text(json.dumps(cards, indent=2) + "\n")
    (out_dir / "cards.md").write_text(to_markdown(cards))
    return len(cards)
