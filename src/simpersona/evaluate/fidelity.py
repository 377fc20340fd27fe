"""`simpersona evaluate fidelity`: do simulated buyers behave like a shop's real buyers, on shops
the agent never saw?

Evaluation shops: `eval_shops`, else the run's shop split (`contracts.split`, its "eval" list),
else the shops FEAT_DIR holds out whole (buyers.split "holdout"), else the stable-hash split of
the ingested shops (`contracts.split.make_split`, a quarter of them). The fast policy
(`agents.policy`, per code and intent) is fitted here on the training shops' events only (the
split's "train" list, else every other shop); the run fails if no training shop is left, or the
split, or a supplied simulation's policy, has an evaluation shop on the training side. Agents compared (one fitted model, different conditioning):

    persona          p_{k,i}: the buyer's persona code and intent (the agent under test)
    no_persona       p_i: the intent only
    random_persona   p_{k',i}: a code drawn uniformly from the fitted codes (seeded)
    population       p_g: the population-wide policy (no code, no intent)
    majority         (next-action only) the training shops' most frequent next event / outcome
    storefront       (distributions only, when `simulation` is given) the sessions a `simpersona
                     simulate` run logged on the evaluation shops (any agent, on the storefront)
    LLM agent        (next-action only, `llm_agent: llm | endpoint`, on `llm_sessions` sessions) a
                     local checkpoint or an endpoint, replayed step by step on the storefront with
                     the persona, no persona and a random persona (`evaluate.nextaction`)

Persona codes and intents of the evaluation buyers (`codes`): `personas assign` codes a buyer from
ALL its sessions, so conditioning a prediction of those same sessions on that code lets them pick
their own condition. With `codes: history` (default) each evaluation buyer's sessions are split in
time (`personas.history`): its first ⌊f·n⌋ sessions (f = `history_fraction`) are encoded with the
features stage's fitted transforms and the trained VQ-VAE (code) and give its stratum (intent),
and only the later sessions are scored (next action and distributions); a buyer without an
earlier session has no code and no intent (the population-wide row; counted). The intent is the
one simulation and SFT give: "buy" for strata A–C, else "browse" (`intent: neutral`: none). The
per-stratum cells are the history's strata too ("none": no history). `codes:
assigned` takes the personas folder's codes and strata as they are: only for codes that were not
inferred from the scored sessions (a fabricated world's planted codes). `codes: truth` (generated data
only) is the ORACLE persona: history's buyers, intents and scored sessions, with each coded buyer's
true generator type (`truth`, else the synth folder's truth/buyers.parquet) as its code — the ceiling
a persona code could reach, not an agent (`bench/bench_fidelity_ceiling.py` compares the two).

1. Next-action prediction. Every real session of an evaluation shop (at most `max_sessions`,
   drawn by a seeded hash of its ids), step by step: before each event and after the last (the
   `stop`), the agent gets the prefix and its persona code and predicts the next event. The
   prediction is made from the event sequence with the observation feature the fast policy acts
   on (the page type the last event led to); sessions are NOT re-rendered on the storefront (the
   policy reads nothing else from a page, and per-step rendering costs ~1000x the prediction).
   The policy predicts its most likely next event (argmax p(·|page type)) and the target its
   storefront executor would take: add_to_cart → the product on screen, remove_from_cart → the
   cart's first item; for product/collection views and searches it picks among the page's
   items at random, so it names no target (a miss). Figures: type accuracy, exact accuracy
   (type, and target where the event has one: product, collection or query), macro-F1 over the
   event types present, and session-outcome macro-F1 (purchase / cart / none; the predicted
   outcome is the most likely one of the agent's Markov chain from the session start,
   `outcome_probs`). 95% CIs: percentile bootstrap over sessions; differences persona − baseline
   paired. (A plug-in JS divergence is biased upwards by sampling noise and resampling adds that
   bias again, so a JS interval can lie above its own estimate on small samples; compare agents by
   the paired difference, where the bias largely cancels.)
2. Session distributions, overall, per shop and per stratum: simulated sessions of each agent
   (`sim_per_real` per real session; codes from the shop's session-weighted persona mix, strata ~
   P(stratum | k) of the training shops and intents as `simpersona simulate` draws them, `draw_population`; rolled out from the page-type model, `agents.policy.rollout_events`, orders
   logged one purchase row per cart line as the storefront logs them, `orders_as_logged`; the
   products viewed follow a re-view rate per code fitted on the training shops) against the real
   ones: Jensen–Shannon divergence of event-type bigrams (with start/stop markers), pooled and within
   shop × stratum cells (mean over the cells with ≥ `min_sessions` a side, weighted by real sessions:
   pooled bigram counts are what a first-order chain fitted to the pooled transitions reproduces by
   construction, so pooled JS cannot tell a mixture of personas from the no-persona policy), Wasserstein
   distance of session length and of distinct products viewed, funnel rates (sessions with an
   add-to-cart / checkout / purchase, funnel closure) with bootstrap 95% CIs, and a classifier
   two-sample test: a cross-validated HistGradientBoosting classifier tells real from simulated
   sessions by `session_features`; its out-of-fold AUC (0.5 = indistinguishable) overall, and
   restricted to one shop's or stratum's sessions for the breakdowns.
3. Per persona: each code with ≥ `min_buyers` real buyers in the evaluation shops: real vs
   simulated funnel rates (simulated sessions grouped by the code of the buyer they stand for),
   their Pearson correlation across codes per agent, and the points of the persona agent for the
   report's scatter plot.

A metric with fewer than `min_sessions` sessions on a side (or too few codes for a correlation)
reads {"value": null, "note": "n too small (…)"}: never a crash, never a NaN.

Writes fidelity.json, fidelity.md, policy.npz (the fitted policy), meta.json; with `codes: history`
also history_codes.parquet and scored_sessions.parquet (`personas.history`); with `codes: truth` those
and truth_codes.parquet.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from simpersona.agents.llm import EndpointConfig, LLMConfig
from simpersona.agents.policy import EVENT_ORDER_SQL, EVENTS, INTENTS, NEXT_STATE, STATES, STOP, PolicyModel, fit_intent_counts, rollout_events
from simpersona.config import ConfigError, write_meta
from simpersona.contracts.labels import BUY_STRATA
from simpersona.storefront.config import StorefrontConfig

N_TYPES = STOP  # the 8 event types (EVENTS without stop)
START_TOKEN, STOP_TOKEN = N_TYPES, N_TYPES + 1  # bigram alphabet: events, start, stop
N_TOKENS = N_TYPES + 2
OUTCOMES: tuple[str, ...] = ("none", "cart", "purchase")
# the funnel level an event reaches (funnel closure: checkout and purchase sessions are cart sessions)
LEVEL = np.array([{"add_to_cart": 1, "checkout_start": 1, "purchase": 2}.get(e, 0) for e in EVENTS[:N_TYPES]])
TARGET_EVENTS = frozenset({"product_view", "add_to_cart", "remove_from_cart", "collection_view", "search"})
AGENTS: tuple[str, ...] = ("persona", "no_persona", "random_persona", "population")
BASELINES: tuple[str, ...] = ("no_persona", "random_persona", "population", "majority")
FEATURES: tuple[str, ...] = ("length", *(f"n_{e}" for e in EVENTS[:N_TYPES]), "distinct_products", "first_event", "last_event")
RATES: tuple[str, ...] = ("atc", "checkout", "purchase")


@dataclass
class FidelityConfig:
    # ingest folder of the REAL data (events.parquet)
    ingest: Path | None = None
    # FEAT_DIR of the real data (buyers.parquet: stratum, split)
    features: Path | None = None
    # personas folder (assignments.parquet, shop_mix.parquet, code_strata.parquet)
    personas: Path | None = None
    # a `simpersona simulate` run whose storefront sessions on the evaluation shops are compared too (None: skip)
    simulation: Path | None = None
    # evaluation shops ([] = the run's split's, else FEAT_DIR's held-out shops, else a stable-hash quarter); the policy fits on the rest
    eval_shops: list[str] = field(default_factory=list)
    # the run's shop split (split/shops.json or its folder; None: none): its evaluation shops, its training shops
    split: Path | None = None
    # stratum: buyers get their intent (A–C buy, else browse), as in simulation; neutral: no intent
    intent: Literal["stratum", "neutral"] = "stratum"
    # where an evaluation buyer's code and intent come from: history (its earlier sessions, which are not scored;
    # `personas.history`) or assigned (the personas folder's codes from ALL its sessions: only for codes not
    # inferred from the scored sessions, e.g. a fabricated world's planted ones); truth: the ORACLE persona on
    # generated data — history's buyers, intents and scored sessions, with the generator's true type as the code
    codes: Literal["history", "assigned", "truth"] = "history"
    # codes: truth — the generator's truth/buyers.parquet (shop_id, buyer_id, type; None: beside the ingest's synth input)
    truth: Path | None = None
    # codes: history — a buyer's first ⌊f·n⌋ of n sessions (by start) are its history, the rest are scored
    history_fraction: float = 0.5
    # codes: history — the VQ-VAE run folder that encodes the history (None: the one the personas folder was assigned with)
    vqvae: Path | None = None
    # real sessions evaluated, drawn by a seeded hash of their ids (0 = every session of the evaluation shops)
    max_sessions: int = 0
    # simulated sessions per real session, per agent (distributions)
    sim_per_real: int = 2
    # events after which a simulated session is cut
    max_events: int = 100
    # policy back-off strength m (pseudo-counts of the coarser table)
    strength: float = 5.0
    # policy additive smoothing α of the population-wide table
    alpha: float = 0.1
    # a metric needs at least this many sessions on each side ("n too small" otherwise)
    min_sessions: int = 20
    # per persona: codes with at least this many real buyers in the evaluation shops
    min_buyers: int = 10
    # per persona: a code's simulated rates need at least this many simulated sessions
    min_code_sessions: int = 10
    # bootstrap replicates of every CI
    n_boot: int = 1000
    # folds of the classifier two-sample test
    cv_folds: int = 5
    # seed of the session draw, random persona, rollouts, bootstrap and classifier
    seed: int = 0
    # DuckDB / classifier threads
    threads: int = 2
    # next-action prediction by the LLM agent on the storefront (`evaluate.nextaction`): none, llm (llm.checkpoint) or endpoint (endpoint.url)
    llm_agent: Literal["none", "llm", "endpoint"] = "none"
    # real sessions the LLM agent predicts step by step (seeded hash draw; each step is one decode per condition)
    llm_sessions: int = 16
    # conditions the LLM agent predicts under (same sessions and steps): persona, no_persona, random_persona
    llm_conditions: list[str] = field(default_factory=lambda: ["persona", "no_persona", "random_persona"])
    # the LLM agent on a local checkpoint (llm_agent: llm)
    llm: LLMConfig = field(default_factory=LLMConfig)
    # the LLM agent on an OpenAI-compatible endpoint (llm_agent: endpoint)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    # the storefront the LLM agent's sessions are replayed on (the shared `storefront:` section)
    storefront: StorefrontConfig = field(default_factory=StorefrontConfig)


# ---------------------------------------------------------------- metrics (pure functions)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the classes present in y_true or y_pred.

    >>> macro_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0]))
    0.7333333333333334
    """
    classes = np.union1d(y_true, y_pred)
    f1 = [2 * np.sum((y_true == c) & (y_pred == c)) / (np.sum(y_true == c) + np.sum(y_pred == c)) for c in classes]
    return float(np.mean(f1))


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Macro-F1 from per-class counts (..., C), over the classes with any count (bootstrap form).

    >>> f1_from_counts(np.array([2.0, 1]), np.array([1.0, 0]), np.array([0.0, 1])).round(4).tolist()
    0.7333
    """
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    return f1.sum(-1) / np.maximum((denom > 0).sum(-1), 1)


def outcome_probs(p: np.ndarray) -> np.ndarray:
    """P(outcome none / cart / purchase) of sessions of the page-type chain p (..., S, A) from the
    start state: absorbing-chain probabilities over (state, funnel level reached).

    >>> p = np.zeros((len(STATES), len(EVENTS))); p[:, STOP] = 1.0
    >>> p[0, STOP], p[0, EVENTS.index("add_to_cart")] = 0.5, 0.5
    >>> outcome_probs(p).tolist()
    [0.5, 0.5, 0.0]
    """
    s, n_l = len(STATES), len(OUTCOMES)
    lead = p.shape[:-2]
    q = np.zeros((*lead, s * n_l, s * n_l))
    r = np.zeros((*lead, s * n_l, n_l))
    for st in range(s):
        for lv in range(n_l):
            i = st * n_l + lv
            r[..., i, lv] = p[..., st, STOP]
            for a in range(N_TYPES):
                q[..., i, NEXT_STATE[a] * n_l + max(lv, int(LEVEL[a]))] += p[..., st, a]
    x = np.linalg.solve(np.eye(s * n_l) - q, r)  # (..., S·L, L)
    return x[..., 0, :]  # from (start, none)


def bigram_counts(offsets: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Event-type bigram counts per session, with start and stop markers: (n, N_TOKENS²).

    >>> b = bigram_counts(np.array([0, 2]), np.array([3, 4]))
    >>> sorted(np.flatnonzero(b[0]).tolist()) == sorted([START_TOKEN * N_TOKENS + 3, 3 * N_TOKENS + 4, 4 * N_TOKENS + STOP_TOKEN])
    True
    """
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    sess = np.repeat(np.arange(n), lengths)
    prev = np.full(len(events), START_TOKEN, dtype=np.int64)
    prev[1:] = events[:-1]
    prev[offsets[:-1][lengths > 0]] = START_TOKEN
    last = np.where(lengths > 0, events[np.maximum(offsets[1:] - 1, 0)] if len(events) else START_TOKEN, START_TOKEN)
    v = N_TOKENS * N_TOKENS
    out = np.bincount(sess * v + prev * N_TOKENS + events, minlength=n * v)
    out += np.bincount(np.arange(n) * v + last * N_TOKENS + STOP_TOKEN, minlength=n * v)
    return out.reshape(n, v)


def js_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between count rows p (B, V) and q (B, V).

    >>> js_rows(np.array([[1.0, 0], [1, 1]]), np.array([[0.0, 1], [2, 2]])).tolist()
    [1.0, 0.0]
    """
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
    q = q / np.maximum(q.sum(-1, keepdims=True), 1e-300)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(m > 0, m, 1)), 0.0).sum(-1)

    return np.maximum(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def cell_js(b_real: np.ndarray, cell_r: np.ndarray, b_sim: np.ndarray, cell_s: np.ndarray, cells: list[str],
            w_r: np.ndarray | None = None, w_s: np.ndarray | None = None) -> np.ndarray:
    """Bigram JS within cells, averaged over `cells` weighted by real sessions: per-session bigram
    counts (n, V) and cell labels (n,) of each side; w_r (B, n_r), w_s (B, n_s) bootstrap weights
    (None: each session once) → (B,).

    >>> b = np.eye(2)  # two sessions: one bigram each
    >>> cells = np.array(["x", "y"])
    >>> cell_js(b, cells, b, cells, ["x", "y"]).tolist(), cell_js(b, cells, b[::-1], cells, ["x", "y"]).tolist()
    ([0.0], [1.0])
    """
    w_r = np.ones((1, len(b_real))) if w_r is None else w_r
    w_s = np.ones((1, len(b_sim))) if w_s is None else w_s
    num, den = np.zeros(len(w_r)), np.zeros(len(w_r))
    for c in cells:
        ir, i_s = np.flatnonzero(cell_r == c), np.flatnonzero(cell_s == c)
        wt = w_r[:, ir].sum(1)
        num += wt * js_rows(w_r[:, ir] @ b_real[ir], w_s[:, i_s] @ b_sim[i_s])
        den += wt
    return num / np.maximum(den, 1e-12)


def wasserstein(real: np.ndarray, sim: np.ndarray) -> float:
    """1-Wasserstein distance between two samples (scipy.stats.wasserstein_distance).

    >>> wasserstein(np.array([1, 2, 3]), np.array([2, 3, 4]))
    1.0
    """
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(real, sim))


def auc(scores_real: np.ndarray, scores_sim: np.ndarray) -> float:
    """P(a simulated session scores above a real one), ties half (the Mann–Whitney AUC).

    >>> auc(np.array([0.1, 0.4]), np.array([0.35, 0.8])), auc(np.array([0.5]), np.array([0.5]))
    (0.75, 0.5)
    """
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([scores_real, scores_sim]))[len(scores_real):]
    n_r, n_s = len(scores_real), len(scores_sim)
    return float((r.sum() - n_s * (n_s + 1) / 2) / (n_r * n_s))


def classifier_scores(x_real: np.ndarray, x_sim: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold P(simulated) of every row of [x_real; x_sim] from a cross-validated
    HistGradientBoosting classifier (the classifier two-sample test).

    >>> s = classifier_scores(np.zeros((40, 2)), np.ones((40, 2)), 4, 0)
    >>> auc(s[:40], s[40:])
    1.0
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.concatenate([x_real, x_sim]).astype(np.float64)
    y = np.r_[np.zeros(len(x_real)), np.ones(len(x_sim))]
    clf = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=8, learning_rate=0.15, min_samples_leaf=10,
                                         early_stopping=False, random_state=seed)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]


def share_ci(k: int, n: int, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile-bootstrap 95% CI of a share k/n (resampling n binary values = a binomial draw).

    >>> share_ci(0, 10, 200, np.random.default_rng(0))
    (0.0, 0.0)
    """
    draws = rng.binomial(n, k / n, size=n_boot) / n
    return float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (callers check for ≥ 3 points and variance on both sides).

    >>> pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 7]))
    0.9933992677987828
    """
    return float(np.corrcoef(x, y)[0, 1])


# ---------------------------------------------------------------- sessions


@dataclass
class Sessions:
    """Sessions as flat arrays: session i's events are events[offsets[i]:offsets[i+1]] (EVENTS indices)."""

    shop: np.ndarray  # (n,) str
    code: np.ndarray  # (n,) int, -1 when unknown
    stratum: np.ndarray  # (n,) str
    intent: np.ndarray  # (n,) str: "buy", "browse" or "" (none)
    offsets: np.ndarray  # (n+1,) int64
    events: np.ndarray  # (T,) int64
    products: np.ndarray  # (n,) distinct products viewed
    buyer: np.ndarray  # (n,) str
    targets: np.ndarray | None = None  # (T,) str: product / collection / query ("" where the event has none)

    def __len__(self) -> int:
        return len(self.shop)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def type_counts(self) -> np.ndarray:
        """(n, 8) events per type."""
        n = len(self)
        return np.bincount(np.repeat(np.arange(n), self.lengths()) * N_TYPES + self.events,
                           minlength=n * N_TYPES).reshape(n, N_TYPES)

    def flags(self) -> np.ndarray:
        """(n, 3) bool: a session with an add-to-cart / checkout / purchase (funnel closure)."""
        c = self.type_counts()
        pur = c[:, EVENTS.index("purchase")] > 0
        chk = pur | (c[:, EVENTS.index("checkout_start")] > 0)
        return np.stack([chk | (c[:, EVENTS.index("add_to_cart")] > 0), chk, pur], 1)

    def outcome(self) -> np.ndarray:
        """(n,) index into OUTCOMES."""
        f = self.flags()
        return np.where(f[:, 2], 2, np.where(f[:, 0], 1, 0))


def session_features(s: Sessions) -> np.ndarray:
    """(n, len(FEATURES)) what the two-sample classifier sees of a session.

    >>> s = Sessions(np.array(["a"]), np.array([0]), np.array(["D"]), np.array([""]), np.array([0, 2]),
    ...              np.array([3, 4]), np.array([1]), np.array(["b"]))
    >>> session_features(s).tolist()
    [[2.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 3.0, 4.0]]
    """
    lengths = s.lengths()
    first = np.where(lengths > 0, s.events[np.minimum(s.offsets[:-1], max(len(s.events) - 1, 0))] if len(s.events) else -1, -1)
    last = np.where(lengths > 0, s.events[np.maximum(s.offsets[1:] - 1, 0)] if len(s.events) else -1, -1)
    return np.column_stack([lengths, s.type_counts(), s.products, first, last]).astype(np.float64)


def subset(s: Sessions, keep: np.ndarray) -> Sessions:
    """The sessions where `keep` (bool (n,)) holds."""
    idx = np.flatnonzero(keep)
    lengths = s.lengths()[idx]
    starts = s.offsets[:-1][idx]
    ev_idx = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
    return Sessions(s.shop[idx], s.code[idx], s.stratum[idx], s.intent[idx], np.r_[0, np.cumsum(lengths)].astype(np.int64),
                    s.events[ev_idx], s.products[idx], s.buyer[idx], None if s.targets is None else s.targets[ev_idx])


def _in_list(con, name: str, values: list[str]) -> None:
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT unnest($1::VARCHAR[]) AS shop_id", [list(values)])


@dataclass
class BuyerLabels:
    """What conditions the agents on a real evaluation session, and which sessions are scored."""

    sql: str  # relation (shop_id, buyer_id, code, stratum, intent_stratum): code/intent_stratum NULL when unknown
    sessions: str | None  # relation (shop_id, buyer_id, session_id) of the sessions that may be scored (None: all)
    info: dict[str, Any]  # how the codes were obtained (fidelity.json "codes")


def buyer_labels(cfg: FidelityConfig, shops: list[str], out_dir: Path) -> BuyerLabels:
    """Codes and intents of the evaluation buyers (`cfg.codes`). history: `personas.history` writes
    out_dir/history_codes.parquet and scored_sessions.parquet: a buyer's code and intent come from its
    earlier sessions, only the later ones are scored, and its stratum (the per-stratum cells) is the
    history's too ("none" without a history): the features stage's stratum of all its sessions would
    put a scored session into a cell by its own outcome (a bounce makes a bouncer), which no agent
    conditioned on the past can reproduce."""
    buyers = Path(cfg.features) / "buyers.parquet"
    if cfg.codes == "assigned":
        assignments = Path(cfg.personas) / "assignments.parquet"
        return BuyerLabels(f"SELECT b.shop_id, b.buyer_id, a.code, b.stratum, b.stratum AS intent_stratum FROM read_parquet('{buyers}') b "
                           f"LEFT JOIN read_parquet('{assignments}') a USING (shop_id, buyer_id)", None,
                           {"from": "assigned", "note": f"{assignments}: each buyer's code from ALL its sessions, the scored ones "
                                                        "included (honest only for codes not inferred from them)"})
    from simpersona.personas.history import history_codes, model_of

    try:
        model = Path(cfg.vqvae) if cfg.vqvae is not None else model_of(Path(cfg.personas))
    except FileNotFoundError as e:
        raise ConfigError(f"evaluate.fidelity.codes history needs the VQ-VAE: set evaluate.fidelity.vqvae ({e})") from None
    info = history_codes(Path(cfg.ingest) / "events.parquet", Path(cfg.ingest) / "catalog.parquet", Path(cfg.features), model,
                         shops, cfg.history_fraction, out_dir, cfg.threads)
    h = Path(out_dir) / "history_codes.parquet"
    if cfg.codes == "truth":
        return _truth_labels(cfg, buyers, h, out_dir, info)
    return BuyerLabels(f"SELECT b.shop_id, b.buyer_id, h.code, coalesce(h.stratum, 'none') AS stratum, h.stratum AS intent_stratum "
                       f"FROM read_parquet('{buyers}') b "
                       f"LEFT JOIN read_parquet('{h}') h USING (shop_id, buyer_id)",
                       f"SELECT shop_id, buyer_id, session_id FROM read_parquet('{Path(out_dir) / 'scored_sessions.parquet'}')",
                       {"from": "history", **info,
                        "note": f"each buyer's code and intent from its first ⌊{cfg.history_fraction}·n⌋ sessions (by start), "
                                "encoded with the features stage's fitted transforms and the VQ-VAE; only the later sessions are "
                                "scored, and the policy is fitted on the training shops' later sessions with their buyers' history "
                                "codes and intents (as it is used); a buyer without an earlier session has no code (population row) "
                                "and no intent"})


def truth_path(cfg: FidelityConfig) -> Path:
    """The generator's per-buyer truth (`truth`, else truth/buyers.parquet beside the ingest's synth input)."""
    if cfg.truth is not None:
        return Path(cfg.truth)
    meta = Path(cfg.ingest) / "meta.json"
    inputs = json.loads(meta.read_text()).get("inputs") or [] if meta.exists() else []
    for p in inputs:
        t = Path(p).parent / "truth" / "buyers.parquet"
        if (Path(p).parent / "SYNTHETIC.txt").exists() and t.exists():
            return t
    raise ConfigError(f"evaluate.fidelity.codes truth needs the generator's truth: set evaluate.fidelity.truth "
                      f"({cfg.ingest} was not ingested from a `simpersona synth` folder with truth/buyers.parquet)")


def _truth_labels(cfg: FidelityConfig, buyers: Path, h: Path, out_dir: Path, info: dict[str, Any]) -> BuyerLabels:
    """codes: truth — history's labels with the code of every buyer that has a history replaced by its
    generator type (types numbered in name order; written to out_dir/truth_codes.parquet). The truth's
    raw buyer ids are hashed with the ingest's key when the ingest recorded one (as `evaluate population`)."""
    import duckdb

    from simpersona.events.deid import hmac_sql, ingest_key

    truth = truth_path(cfg)
    summary = Path(cfg.ingest) / "summary.json"
    salted = summary.exists() and bool(json.loads(summary.read_text()).get("salt_id"))  # ingest hashed the raw ids
    key = hmac_sql("CAST(buyer_id AS VARCHAR)", ingest_key(Path(cfg.ingest))) if salted else "CAST(buyer_id AS VARCHAR)"
    t = Path(out_dir) / "truth_codes.parquet"
    con = duckdb.connect()
    con.execute(f"SET threads={int(cfg.threads)}")
    con.execute(f"""COPY (SELECT shop_id, {key} AS buyer_id, CAST(type AS VARCHAR) AS type,
                                 CAST(dense_rank() OVER (ORDER BY CAST(type AS VARCHAR)) - 1 AS INTEGER) AS code
                          FROM read_parquet('{truth}')) TO '{t}' (FORMAT parquet)""")
    found, coded = con.execute(f"""SELECT count(t.code), count(*) FROM read_parquet('{h}') h
                                   LEFT JOIN read_parquet('{t}') t USING (shop_id, buyer_id)""").fetchone()
    types = [r[0] for r in con.execute(f"SELECT DISTINCT type, code FROM read_parquet('{t}') ORDER BY code").fetchall()]
    con.close()
    if coded and not found:
        raise ConfigError(f"evaluate.fidelity.codes truth: no buyer of {cfg.ingest} found in {truth} (another salt or world?)")
    return BuyerLabels(f"SELECT b.shop_id, b.buyer_id, CASE WHEN h.code IS NOT NULL THEN t.code END AS code, "
                       f"coalesce(h.stratum, 'none') AS stratum, h.stratum AS intent_stratum FROM read_parquet('{buyers}') b "
                       f"LEFT JOIN read_parquet('{h}') h USING (shop_id, buyer_id) LEFT JOIN read_parquet('{t}') t USING (shop_id, buyer_id)",
                       f"SELECT shop_id, buyer_id, session_id FROM read_parquet('{Path(out_dir) / 'scored_sessions.parquet'}')",
                       {"from": "truth", **info, "truth": str(truth), "types": types, "buyers_with_type": int(found),
                        "note": "ORACLE persona: each buyer with a history gets the generator's TRUE type as its code (types "
                                "numbered in name order), with history's intents and scored sessions (its earlier sessions are "
                                "not scored); the policy is fitted per true type on the training shops' later sessions; a "
                                "ceiling for any persona code, not an agent"})


def load_sessions(events_path: Path, labels_sql: str, shops: list[str], intent_mode: str, max_sessions: int, seed: int,
                  threads: int, sessions_sql: str | None = None) -> Sessions:
    """Sessions of `shops` from a canonical events.parquet (only those of `sessions_sql`, a relation
    (shop_id, buyer_id, session_id), when given); labels_sql: a relation (shop_id, buyer_id, code,
    stratum, intent_stratum) — the intent comes from intent_stratum (none where it is NULL).
    Ordered by (shop, buyer, session)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={int(threads)}")
    _in_list(con, "keep", shops)
    target = ("CASE WHEN event_type IN ('product_view', 'add_to_cart', 'remove_from_cart') THEN product_id "
              "WHEN event_type = 'collection_view' THEN collection_id WHEN event_type = 'search' THEN query END")
    limit = f"ORDER BY md5(concat('{int(seed)}/', shop_id, '/', buyer_id, '/', session_id)) LIMIT {int(max_sessions)}" if max_sessions else ""
    rows = con.execute(f"""
        WITH s AS (
          SELECT shop_id, buyer_id, session_id,
                 list(event_type ORDER BY {EVENT_ORDER_SQL}) AS ev,
                 list(coalesce({target}, '') ORDER BY {EVENT_ORDER_SQL}) AS tgt,
                 count(DISTINCT CASE WHEN event_type = 'product_view' THEN product_id END) AS products
          FROM read_parquet('{events_path}') WHERE shop_id IN (SELECT shop_id FROM keep)
          {f"AND (shop_id, buyer_id, session_id) IN (SELECT (shop_id, buyer_id, session_id) FROM ({sessions_sql}))" if sessions_sql else ""}
          GROUP BY ALL),
        picked AS (SELECT * FROM s {limit})
        SELECT p.shop_id, p.buyer_id, coalesce(l.code, -1), coalesce(l.stratum, '?'), p.ev, p.tgt, p.products, l.intent_stratum
        FROM picked p LEFT JOIN ({labels_sql}) l USING (shop_id, buyer_id)
        ORDER BY p.shop_id, p.buyer_id, p.session_id""").fetchall()
    con.close()
    at = {e: i for i, e in enumerate(EVENTS[:N_TYPES])}
    lengths = np.array([len(r[4]) for r in rows], dtype=np.int64)
    strata = np.array([r[3] for r in rows], dtype=object).astype(str)
    known = np.array([r[7] is not None for r in rows], dtype=bool)
    buy = np.isin(np.array([r[7] or "" for r in rows], dtype=object).astype(str), BUY_STRATA)
    intent = np.where(~known | (intent_mode != "stratum"), "", np.where(buy, "buy", "browse"))
    return Sessions(
        shop=np.array([r[0] for r in rows], dtype=object).astype(str), code=np.array([int(r[2]) for r in rows], dtype=np.int64),
        stratum=strata, intent=intent.astype(str), offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        events=np.array([at[e] for r in rows for e in r[4]], dtype=np.int64),
        products=np.array([int(r[6]) for r in rows], dtype=np.int64), buyer=np.array([r[1] for r in rows], dtype=object).astype(str),
        targets=np.array([t for r in rows for t in r[5]], dtype=object))


def train_stats(events_path: Path, labels: BuyerLabels, shops: list[str], threads: int) -> dict[str, Any]:
    """From the training shops' sessions (the scorable ones of `labels`, as the policy is fitted):
    session outcome counts, per code the product views after a session's first one and how many of
    them re-view a product (the rollouts' product identity), and per code (-1: none) the joint
    P(stratum, intent stratum | k) over sessions (the simulated population's cells and intents)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={int(threads)}")
    _in_list(con, "keep", shops)
    only = (f"AND (shop_id, buyer_id, session_id) IN (SELECT (shop_id, buyer_id, session_id) FROM ({labels.sessions}))"
            if labels.sessions else "")
    con.execute(f"CREATE TEMP VIEW e AS SELECT * FROM read_parquet('{events_path}') WHERE shop_id IN (SELECT shop_id FROM keep) {only}")
    con.execute(f"CREATE TEMP VIEW l AS {labels.sql}")
    outcomes = dict(con.execute("""
        WITH s AS (SELECT CASE WHEN bool_or(event_type = 'purchase') THEN 'purchase'
                               WHEN bool_or(event_type IN ('add_to_cart', 'checkout_start')) THEN 'cart' ELSE 'none' END AS o
                   FROM e GROUP BY shop_id, buyer_id, session_id)
        SELECT o, count(*) FROM s GROUP BY o""").fetchall())
    views = con.execute(f"""
        WITH v AS (SELECT shop_id, buyer_id, session_id, product_id,
                          row_number() OVER (PARTITION BY shop_id, buyer_id, session_id ORDER BY {EVENT_ORDER_SQL}) AS nth,
                          row_number() OVER (PARTITION BY shop_id, buyer_id, session_id, product_id ORDER BY {EVENT_ORDER_SQL}) AS seen
                   FROM e WHERE event_type = 'product_view')
        SELECT l.code, count(*) FILTER (WHERE nth > 1), count(*) FILTER (WHERE nth > 1 AND seen > 1)
        FROM v JOIN l USING (shop_id, buyer_id) WHERE l.code IS NOT NULL GROUP BY ALL""").fetchall()
    strata = con.execute("""
        WITH s AS (SELECT DISTINCT shop_id, buyer_id, session_id FROM e)
        SELECT coalesce(l.code, -1), coalesce(l.stratum, 'D'), l.intent_stratum, count(*) FROM s JOIN l USING (shop_id, buyer_id)
        GROUP BY ALL ORDER BY ALL""").fetchall()
    con.close()
    code_strata: dict[int, tuple[list[tuple[str, str | None]], list[float]]] = {}
    for c, st, ist, n in strata:
        code_strata.setdefault(int(c), ([], []))[0].append((str(st), ist))
        code_strata[int(c)][1].append(float(n))
    return {"outcomes": np.array([outcomes.get(o, 0) for o in OUTCOMES], dtype=np.float64),
            "views": {int(c): (float(n), float(r)) for c, n, r in views}, "code_strata": code_strata}


# ---------------------------------------------------------------- the agents' conditioning


def agent_rows(model: PolicyModel, code: np.ndarray, intent: np.ndarray, agent: str, rng: np.random.Generator) -> np.ndarray:
    """Row of `model.tables` flattened to (R, S, A) per session, for an agent of AGENTS (a model
    fitted with no code at all: every agent on the population-wide row)."""
    cols = np.array([model.column(i or None) for i in intent], dtype=np.int64)
    if agent == "persona":
        rows = np.array([model.row(int(c)) for c in code], dtype=np.int64)
    elif agent == "random_persona" and len(model.codes):
        rows = rng.integers(0, len(model.codes), size=len(code))
    else:
        rows = np.full(len(code), len(model.codes), dtype=np.int64)
    if agent == "population":
        cols = np.full(len(code), len(INTENTS), dtype=np.int64)
    return rows * (len(INTENTS) + 1) + cols


def review_rates(model: PolicyModel, views: dict[int, tuple[float, float]], strength: float) -> np.ndarray:
    """(K+1,) probability that a product view after a session's first re-views a product, per
    code (backed off to the all-codes rate with `strength` pseudo-views); row K all codes."""
    n = np.array([views.get(int(c), (0.0, 0.0))[0] for c in model.codes])
    r = np.array([views.get(int(c), (0.0, 0.0))[1] for c in model.codes])
    g = (r.sum() + 0.5) / (n.sum() + 1.0)
    return np.r_[(r + strength * g) / (n + strength), g]


def orders_as_logged(seq: np.ndarray) -> np.ndarray:
    """Rolled-out event rows (n, T), -1 padded, as the storefront logs them: a run of purchase
    events is ONE order, logged as one purchase row per cart line (add_to_cart rows − remove rows
    since the last order; at least one: a chain that reaches an order without carting in the
    session stands for a cart carried from an earlier visit, as in real logs); the cart is empty
    after an order. The page-type chain draws purchase rows one at a time, independently of the
    cart, so without this a simulated session bought more lines than it carted (46% of the demo's
    simulated purchase sessions; never in its real ones, where each purchase row is a cart line).

    >>> a, r, p = (EVENTS.index(e) for e in ("add_to_cart", "remove_from_cart", "purchase"))
    >>> got = orders_as_logged(np.array([[a, a, p, -1, -1], [p, p, -1, -1, -1], [a, a, r, p, p]])).tolist()
    >>> got == [[a, a, p, p, -1], [p, -1, -1, -1, -1], [a, a, r, p, -1]]
    True
    """
    add, rem, pur = (EVENTS.index(e) for e in ("add_to_cart", "remove_from_cart", "purchase"))
    out = seq.copy()
    for i in np.flatnonzero((seq == pur).any(1)):
        row: list[int] = []
        lines, prev = 0, -1
        for e in seq[i][seq[i] >= 0].tolist():
            if e != pur:
                row.append(e)
                lines = lines + 1 if e == add else max(lines - 1, 0) if e == rem else lines
            elif prev != pur:  # an order: one row per cart line
                row += [pur] * max(lines, 1)
                lines = 0
            prev = e
        row = row[:seq.shape[1]]
        out[i] = -1
        out[i, :len(row)] = row
    return out


def simulate_sessions(model: PolicyModel, review: np.ndarray, pop: Sessions, agent: str, max_events: int,
                      rng: np.random.Generator) -> Sessions:
    """Roll out one session per row of `pop` (its shop, code, stratum, intent) for an agent, its
    orders logged as the storefront logs them (`orders_as_logged`)."""
    flat = model.tables.reshape(-1, len(STATES), len(EVENTS))
    rows = agent_rows(model, pop.code, pop.intent, agent, rng)
    seq = orders_as_logged(rollout_events(flat, rows, max_events, rng))  # (n, T)
    lengths = (seq >= 0).sum(1)
    events = seq[seq >= 0].astype(np.int64)
    views = (seq == EVENTS.index("product_view")).sum(1)
    rate = review[rows // (len(INTENTS) + 1)]
    products = np.where(views > 0, 1 + rng.binomial(np.maximum(views - 1, 0), 1 - rate), 0)
    return Sessions(pop.shop, pop.code, pop.stratum, pop.intent, np.r_[0, np.cumsum(lengths)].astype(np.int64), events,
                    products.astype(np.int64), pop.buyer)


def draw_population(code_strata: dict[int, tuple[list[tuple[str, str | None]], list[float]]], real: Sessions, shops: list[str],
                    per_real: int, intent_mode: str, rng: np.random.Generator) -> Sessions:
    """Simulated buyers per shop, one session each, per_real × the shop's real sessions: k from the
    shop's persona mix weighted by sessions (the codes of its real sessions, resampled; -1 where a
    buyer has none), then (stratum, intent stratum) ~ P(·, · | k) of the training shops' sessions
    (`train_stats`) and the intent from the intent stratum (A–C buy, else browse; none where it is
    unknown), as `PersonaMix.sample_population` draws them.
    (Drawing k by buyer share, as `simpersona simulate` does, under-weights the buyers with many
    sessions: the simulated sessions would then differ from the real ones by weighting alone.)"""
    parts = []
    for shop in shops:
        own = real.code[real.shop == shop]
        n = per_real * len(own)
        if n == 0:
            continue
        codes = rng.choice(own, size=n)
        strata, intent = np.full(n, "D", dtype=object), np.full(n, "", dtype=object)
        for c in np.unique(codes):
            at = np.flatnonzero(codes == c)
            if int(c) in code_strata:
                cells, q = code_strata[int(c)]
                pick = rng.choice(len(cells), size=len(at), p=np.array(q) / np.sum(q))
                strata[at] = [cells[i][0] for i in pick]
                if intent_mode == "stratum":
                    intent[at] = ["" if cells[i][1] is None else "buy" if cells[i][1] in BUY_STRATA else "browse" for i in pick]
        parts.append((np.full(n, shop), codes, strata.astype(str), intent.astype(str)))
    cat = [np.concatenate([p[j] for p in parts]) if parts else np.array([]) for j in range(4)]
    n = len(cat[0])
    return Sessions(cat[0].astype(str), cat[1].astype(np.int64), cat[2].astype(str), cat[3].astype(str), np.zeros(n + 1, np.int64),
                    np.zeros(0, np.int64), np.zeros(n, np.int64), np.array([f"sim{i}" for i in range(n)]))


# ---------------------------------------------------------------- bootstrap


def _boot(stats: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], n_boot: int, rng: np.random.Generator,
          chunk: int = 100) -> np.ndarray:
    """fn over n_boot bootstrap replicates of per-session stats (n, d): fn((B, d) weighted sums) → (B, …)."""
    n = len(stats)
    out = []
    for b0 in range(0, n_boot, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_boot - b0)).astype(np.float64)  # (B, n)
        out.append(fn(w @ stats))
    return np.concatenate(out)


def _ci(draws: np.ndarray) -> list[float]:
    return [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]


def _small(**n: int) -> dict[str, Any]:
    return {"value": None, "note": "n too small (" + ", ".join(f"{k} {v}" for k, v in n.items()) + ")"}


# ---------------------------------------------------------------- 1. next-action prediction


def steps_of(real: Sessions) -> dict[str, np.ndarray]:
    """Per prediction step (each event and the final stop): session, page type before, true next
    event, true target, the target the policy's executor would take for each event type."""
    off = real.offsets
    true = np.insert(real.events, off[1:], STOP)
    prev = np.insert(real.events, off[:-1], -1)
    state = np.where(prev < 0, 0, NEXT_STATE[np.maximum(prev, 0)])
    sess = np.repeat(np.arange(len(real)), real.lengths() + 1)
    tgt = real.targets if real.targets is not None else np.full(len(real.events), "", dtype=object)
    true_tgt = np.insert(tgt, off[1:], "")
    prev_tgt = np.insert(tgt, off[:-1], "")
    cart_first = np.empty(len(true), dtype=object)
    add, rem = EVENTS.index("add_to_cart"), EVENTS.index("remove_from_cart")
    j = 0
    for i in range(len(real)):
        cart: list[str] = []
        for k in range(off[i], off[i + 1] + 1):
            cart_first[j] = cart[0] if cart else None
            if k < off[i + 1]:
                if real.events[k] == add and tgt[k] not in cart:
                    cart.append(tgt[k])
                elif real.events[k] == rem and tgt[k] in cart:
                    cart.remove(tgt[k])
            j += 1
    has_target = np.array([EVENTS[t] in TARGET_EVENTS for t in true])
    return {"sess": sess, "state": state, "true": true, "true_tgt": true_tgt, "has_target": has_target,
            "on_product": np.where(state == STATES.index("product"), prev_tgt, None), "cart_first": cart_first}


def predict_targets(pred: np.ndarray, st: dict[str, np.ndarray]) -> np.ndarray:
    """The target the policy's storefront executor takes for a predicted event (None: a random pick)."""
    out = np.full(len(pred), None, dtype=object)
    add, rem = pred == EVENTS.index("add_to_cart"), pred == EVENTS.index("remove_from_cart")
    out[add] = st["on_product"][add]
    out[rem] = st["cart_first"][rem]
    return out


def next_action(model: PolicyModel, real: Sessions, train: dict[str, Any], cfg: FidelityConfig) -> dict[str, Any]:
    """Next-action figures per agent (+ majority) with CIs, paired differences, and per shop."""
    rng = np.random.default_rng([cfg.seed, 1])
    st = steps_of(real)
    n, c_types = len(real), len(EVENTS)
    true_out = real.outcome()
    flat = model.tables.reshape(-1, len(STATES), len(EVENTS))
    out_pred_of_row = outcome_probs(flat).argmax(-1)  # (R,)
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for agent in AGENTS:
        rows = agent_rows(model, real.code, real.intent, agent, rng)
        preds[agent] = (flat[rows[st["sess"]], st["state"]].argmax(-1), out_pred_of_row[rows])
    g = model.counts.sum(tuple(range(model.counts.ndim - 2)))  # (S, A) over codes (and intents)
    preds["majority"] = (np.full(len(st["true"]), int(g.sum(0).argmax())),
                         np.full(n, int(train["outcomes"].argmax())))
    # per-session sufficient statistics: steps, type hits, exact hits, per-class tp/fp/fn, outcome tp/fp/fn
    per: dict[str, np.ndarray] = {}
    for name, (pred, pred_out) in preds.items():
        tgt = predict_targets(pred, st)
        hit = pred == st["true"]
        exact = hit & (~st["has_target"] | (tgt == st["true_tgt"]))
        cols = [np.ones(len(hit)), hit, exact]
        for c in range(c_types):
            cols += [(pred == c) & hit, (pred == c) & ~hit, (st["true"] == c) & ~hit]
        stats = np.zeros((n, len(cols)))
        for j, col in enumerate(cols):
            stats[:, j] = np.bincount(st["sess"], weights=col.astype(np.float64), minlength=n)
        o = np.zeros((n, 9))
        for c in range(3):
            o[:, 3 * c] = (pred_out == c) & (true_out == c)
            o[:, 3 * c + 1] = (pred_out == c) & (true_out != c)
            o[:, 3 * c + 2] = (true_out == c) & (pred_out != c)
        per[name] = np.concatenate([stats, o], 1)

    def figures(x: np.ndarray) -> np.ndarray:  # (B, d) → (B, 4): type acc, exact acc, macro-F1, outcome F1
        t = x[:, 3:3 + 3 * c_types].reshape(len(x), c_types, 3)
        o = x[:, 3 + 3 * c_types:].reshape(len(x), 3, 3)
        return np.stack([x[:, 1] / x[:, 0], x[:, 2] / x[:, 0], f1_from_counts(t[..., 0], t[..., 1], t[..., 2]),
                         f1_from_counts(o[..., 0], o[..., 1], o[..., 2])], 1)

    names = ("type_accuracy", "exact_accuracy", "macro_f1", "outcome_f1")
    order = list(preds)
    d = per["persona"].shape[1]
    allstats = np.concatenate([per[a] for a in order], 1)  # (n, d·agents)
    point = {a: figures(per[a].sum(0, keepdims=True))[0] for a in order}
    draws = _boot(allstats, lambda x: np.stack([figures(x[:, i * d:(i + 1) * d]) for i in range(len(order))], 1),
                  cfg.n_boot, rng)  # (B, agents, 4)
    agents = {}
    for i, a in enumerate(order):
        agents[a] = {m: {"value": float(point[a][j]), "ci": _ci(draws[:, i, j])} for j, m in enumerate(names)}
        agents[a]["steps"] = int(per[a][:, 0].sum())
    targeted = st["has_target"] & (preds["persona"][0] == st["true"])
    p_tgt = predict_targets(preds["persona"][0], st)
    vs = {}
    for b in BASELINES:
        i, j = order.index("persona"), order.index(b)
        vs[b] = {m: {"diff": float(point["persona"][k] - point[b][k]), "ci": _ci(draws[:, i, k] - draws[:, j, k])}
                 for k, m in enumerate(names)}
    by_shop = {}
    for shop in sorted(set(real.shop)):
        keep = real.shop == shop
        if keep.sum() < cfg.min_sessions:
            by_shop[shop] = {a: _small(sessions=int(keep.sum()), need=cfg.min_sessions) for a in order}
            continue
        by_shop[shop] = {a: {m: float(v) for m, v in zip(names, figures(per[a][keep].sum(0, keepdims=True))[0])} for a in order}
    return {"agents": agents, "persona_minus": vs, "by_shop": by_shop, "sessions": n, "steps": int(len(st["true"])),
            "target_steps": int(st["has_target"].sum()),
            "persona_target_accuracy": (float((p_tgt[targeted] == st["true_tgt"][targeted]).mean()) if targeted.any() else None),
            "class_counts": {EVENTS[c]: int((st["true"] == c).sum()) for c in range(c_types)}}


# ---------------------------------------------------------------- 2. distributions


def distribution_figures(real: Sessions, sim: Sessions, r_scores: np.ndarray | None, s_scores: np.ndarray | None,
                         cfg: FidelityConfig, rng: np.random.Generator) -> dict[str, Any]:
    """JS over bigrams, Wasserstein over length and distinct products, funnel rates with CIs, and
    the classifier AUC (given out-of-fold scores) of one group of sessions."""
    n_r, n_s = len(real), len(sim)
    out: dict[str, Any] = {"real_sessions": n_r, "sim_sessions": n_s}
    if min(n_r, n_s) < cfg.min_sessions:
        small = _small(real=n_r, simulated=n_s, need=cfg.min_sessions)
        out.update(js_bigram=small, w_length=small, w_products=small, auc=small)
    else:
        out["js_bigram"] = {"value": float(js_rows(bigram_counts(real.offsets, real.events).sum(0)[None],
                                                   bigram_counts(sim.offsets, sim.events).sum(0)[None])[0])}
        out["w_length"] = {"value": wasserstein(real.lengths(), sim.lengths())}
        out["w_products"] = {"value": wasserstein(real.products, sim.products)}
        out["auc"] = {"value": auc(r_scores, s_scores)} if r_scores is not None else {"value": None, "note": "not run"}
    funnel: dict[str, Any] = {}
    for side, s in (("real", real), ("sim", sim)):
        n = len(s)
        if n < cfg.min_sessions:
            funnel[side] = {r: _small(sessions=n, need=cfg.min_sessions) for r in RATES}
            continue
        f = s.flags()
        funnel[side] = {r: {"value": float(f[:, j].mean()), "ci": list(share_ci(int(f[:, j].sum()), n, cfg.n_boot, rng))}
                        for j, r in enumerate(RATES)}
    out["funnel"] = funnel
    return out


def _weighted_auc(scores: np.ndarray, n_r: int, w_r: np.ndarray, w_s: np.ndarray) -> np.ndarray:
    """AUC per bootstrap replicate: weights (B, n_r) over real rows and (B, n_s) over simulated rows."""
    u, inv = np.unique(scores, return_inverse=True)
    r_u = np.zeros((len(w_r), len(u)))
    s_u = np.zeros((len(w_s), len(u)))
    for b in range(len(w_r)):
        r_u[b] = np.bincount(inv[:n_r], weights=w_r[b], minlength=len(u))
        s_u[b] = np.bincount(inv[n_r:], weights=w_s[b], minlength=len(u))
    below = np.cumsum(r_u, 1) - r_u + 0.5 * r_u
    return (s_u * below).sum(1) / (r_u.sum(1) * s_u.sum(1))


def distributions(real: Sessions, sims: dict[str, Sessions], cfg: FidelityConfig) -> dict[str, Any]:
    """Overall (with paired-bootstrap CIs of JS and AUC, and persona − baseline differences), per
    shop and per stratum, for every simulated population in `sims`."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng([cfg.seed, 2])
    x_real = session_features(real)
    scores: dict[str, np.ndarray] = {}
    with threadpool_limits(cfg.threads, user_api="openmp"):
        for name, sim in sims.items():
            if min(len(real), len(sim)) >= max(cfg.min_sessions, cfg.cv_folds):
                scores[name] = classifier_scores(x_real, session_features(sim), cfg.cv_folds, cfg.seed)
    overall, by_shop, by_stratum = {}, {}, {}
    for name, sim in sims.items():
        sc = scores.get(name)
        r_sc, s_sc = (sc[:len(real)], sc[len(real):]) if sc is not None else (None, None)
        overall[name] = distribution_figures(real, sim, r_sc, s_sc, cfg, rng)
        for key, group, table in (("shop", lambda s: s.shop, by_shop), ("stratum", lambda s: s.stratum, by_stratum)):
            for value in sorted(set(group(real)) | set(group(sim))):
                kr, ks = group(real) == value, group(sim) == value
                table.setdefault(value, {})[name] = distribution_figures(
                    subset(real, kr), subset(sim, ks), r_sc[kr] if sc is not None else None,
                    s_sc[ks] if sc is not None else None, cfg, rng)
    # bigram JS within shop × stratum cells (pooled bigrams cannot tell a mixture of Markov chains from
    # the one chain fitted to its pooled transitions: the no-persona policy matches them by construction)
    def cell_of(x: Sessions) -> np.ndarray:
        return np.char.add(np.char.add(x.shop.astype(str), "/"), x.stratum.astype(str))

    b_real = bigram_counts(real.offsets, real.events).astype(np.float64)
    b_sim = {a: bigram_counts(sim.offsets, sim.events).astype(np.float64) for a, sim in sims.items()}
    cell_r, cells_of = cell_of(real), {}
    for name, sim in sims.items():
        cell_s = cell_of(sim)
        cells = [str(c) for c in np.unique(cell_r) if min((cell_r == c).sum(), (cell_s == c).sum()) >= cfg.min_sessions]
        cells_of[name] = (cell_s, cells)
        overall[name]["js_cells"] = ({"value": float(cell_js(b_real, cell_r, b_sim[name], cell_s, cells)[0]), "cells": len(cells),
                                      "real_sessions": int(np.isin(cell_r, cells).sum())} if cells
                                     else _small(cells=0, need=1, min_sessions_per_cell=cfg.min_sessions))
    # paired bootstrap of JS and AUC for the rolled-out agents (same simulated population per agent)
    cis: dict[str, Any] = {}
    rolled = [a for a in AGENTS if a in sims and a in scores and overall[a]["js_bigram"]["value"] is not None]
    if "persona" in rolled:
        n_r, n_s = len(real), len(sims["persona"])
        with_cells = overall["persona"]["js_cells"]["value"] is not None
        js_d: dict[str, Any] = {a: [] for a in rolled}
        cell_d: dict[str, Any] = {a: [] for a in rolled}
        auc_d: dict[str, Any] = {a: [] for a in rolled}
        for b0 in range(0, cfg.n_boot, 100):
            m = min(100, cfg.n_boot - b0)
            w_r = rng.multinomial(n_r, np.full(n_r, 1.0 / n_r), size=m).astype(np.float64)
            w_s = rng.multinomial(n_s, np.full(n_s, 1.0 / n_s), size=m).astype(np.float64)
            pr = w_r @ b_real
            for a in rolled:
                js_d[a].append(js_rows(pr, w_s @ b_sim[a]))
                auc_d[a].append(_weighted_auc(scores[a], n_r, w_r, w_s))
                if with_cells:
                    cell_d[a].append(cell_js(b_real, cell_r, b_sim[a], *cells_of["persona"], w_r, w_s))
        for d in (js_d, auc_d, cell_d):
            d.update({a: np.concatenate(v) if v else None for a, v in d.items()})
        for a in rolled:
            overall[a]["js_bigram"]["ci"] = _ci(js_d[a])
            overall[a]["auc"]["ci"] = _ci(auc_d[a])
            if with_cells and overall[a]["js_cells"]["value"] is not None:
                overall[a]["js_cells"]["ci"] = _ci(cell_d[a])
        for b in rolled:
            if b != "persona":  # positive: the persona agent is closer to the real sessions
                js_diff = overall[b]["js_bigram"]["value"] - overall["persona"]["js_bigram"]["value"]
                cis[b] = {"js_bigram": {"diff": js_diff, "ci": _ci(js_d[b] - js_d["persona"])},
                          "auc": {"diff": overall[b]["auc"]["value"] - overall["persona"]["auc"]["value"],
                                  "ci": _ci(auc_d[b] - auc_d["persona"])}}
                if with_cells:
                    point = cell_js(b_real, cell_r, b_sim[b], *cells_of["persona"])[0] - overall["persona"]["js_cells"]["value"]
                    cis[b]["js_cells"] = {"diff": float(point), "ci": _ci(cell_d[b] - cell_d["persona"])}
    return {"overall": overall, "baseline_minus_persona": cis, "by_shop": by_shop, "by_stratum": by_stratum,
            "features": list(FEATURES)}


# ---------------------------------------------------------------- 3. per persona


def per_persona(real: Sessions, sims: dict[str, Sessions], cfg: FidelityConfig) -> dict[str, Any]:
    """Real vs simulated funnel rates per code with ≥ min_buyers real buyers; correlations per agent."""
    codes = []
    for c in sorted(set(real.code.tolist()) - {-1}):
        keep = real.code == c
        if len(set(real.buyer[keep].tolist())) >= cfg.min_buyers:
            codes.append(c)
    real_f = real.flags()
    real_b = bigram_counts(real.offsets, real.events)
    out: dict[str, Any] = {"min_buyers": cfg.min_buyers, "codes": len(codes), "correlation": {}, "points": [],
                           "code_js": {}, "code_js_baseline_minus_persona": {}}
    js_of: dict[str, dict[int, float]] = {}
    for name, sim in sims.items():
        sim_f = sim.flags()
        sim_b = bigram_counts(sim.offsets, sim.events)
        xs, ys, pts = [], [], []
        js_of[name] = {}
        for c in codes:
            kr, ks = real.code == c, sim.code == c
            if ks.sum() < cfg.min_code_sessions:
                continue
            js_of[name][c] = float(js_rows(real_b[kr].sum(0)[None], sim_b[ks].sum(0)[None])[0])
            xs.append(real_f[kr].mean(0))
            ys.append(sim_f[ks].mean(0))
            pts.append({"code": int(c), "real_buyers": len(set(real.buyer[kr].tolist())), "real_sessions": int(kr.sum()),
                        "sim_sessions": int(ks.sum()), "real": dict(zip(RATES, map(float, xs[-1]))),
                        "sim": dict(zip(RATES, map(float, ys[-1])))})
        corr: dict[str, Any] = {"mae": {r: ({"value": float(np.mean([abs(x[j] - y[j]) for x, y in zip(xs, ys)])), "codes": len(xs)}
                                         if xs else _small(codes=0, need=1)) for j, r in enumerate(RATES)}}
        for j, r in enumerate(RATES):
            x, y = np.array([v[j] for v in xs]), np.array([v[j] for v in ys])
            if len(x) < 3:
                corr[r] = _small(codes=len(x), need=3)
            elif np.ptp(x) == 0 or np.ptp(y) == 0:
                corr[r] = {"value": None, "note": "a side is constant over the codes"}
            else:
                corr[r] = {"value": pearson(x, y), "codes": len(x)}
        out["correlation"][name] = corr
        vals = list(js_of[name].values())
        out["code_js"][name] = {"value": float(np.mean(vals)), "codes": len(vals)} if vals else _small(codes=0, need=1)
        if name == "persona":
            out["points"] = pts
    rng = np.random.default_rng([cfg.seed, 5])
    for b in sims:
        common = sorted(set(js_of.get("persona", {})) & set(js_of[b]))
        if b == "persona" or b == "storefront" or len(common) < 3:
            continue
        diff = np.array([js_of[b][c] - js_of["persona"][c] for c in common])
        draws = diff[rng.integers(0, len(diff), size=(cfg.n_boot, len(diff)))].mean(1)  # codes resampled
        out["code_js_baseline_minus_persona"][b] = {"diff": float(diff.mean()), "ci": _ci(draws), "codes": len(common)}
    return out


# ---------------------------------------------------------------- stage


def resolve_shops(cfg: FidelityConfig, all_shops: list[str]) -> tuple[list[str], list[str], str]:
    """(evaluation shops, training shops, where the evaluation shops came from); errors name the setting."""
    import duckdb

    from simpersona.contracts.split import SplitConfig, load_split, make_split

    split = load_split(cfg.split)
    evals, source = list(cfg.eval_shops), "evaluate.fidelity.eval_shops"
    if not evals and split is not None:
        evals, source = list(split.eval), f"the run's split ({cfg.split})"
    if not evals:
        buyers = Path(cfg.features) / "buyers.parquet"
        evals, source = [r[0] for r in duckdb.sql(f"""SELECT shop_id FROM read_parquet('{buyers}') GROUP BY 1
                                                       HAVING bool_and(split = 'holdout') ORDER BY 1""").fetchall()], \
            "features.holdout_shops"
    if not evals and len(all_shops) > 1:
        evals = list(make_split(all_shops, SplitConfig()).eval)
        source = "a stable hash of the shop ids (contracts.split.make_split; the VQ-VAE may have seen them)"
    if not evals:
        raise ConfigError(f"evaluate fidelity: no evaluation shop: set evaluate.fidelity.eval_shops ({cfg.ingest}/events.parquet "
                          f"has {len(all_shops)} shop(s); the policy needs another one to train on)")
    unknown = sorted(set(evals) - set(all_shops))
    if unknown:
        raise ConfigError(f"evaluate.fidelity.eval_shops {unknown} are not shops of {cfg.ingest}/events.parquet "
                          f"(shops: {all_shops[:8]}{'…' if len(all_shops) > 8 else ''})")
    train = sorted(set(all_shops) - set(evals))
    if split is not None:
        split.check_training(train, "evaluate fidelity (policy fit)")
        train = [s for s in train if s in set(split.train)]
    if not train:
        raise ConfigError("evaluate.fidelity.eval_shops names every shop: the policy needs at least one training shop")
    return sorted(evals), train, source


def _generated(ingest: Path) -> bool:
    """The ingest folder's input came from `simpersona synth` (its folder holds SYNTHETIC.txt)."""
    meta = Path(ingest) / "meta.json"
    if not meta.exists():
        return False
    inputs = json.loads(meta.read_text()).get("inputs") or []
    return any((Path(p).parent / "SYNTHETIC.txt").exists() for p in inputs)


def storefront_sessions(sim_dir: Path, shops: list[str], cfg: FidelityConfig) -> tuple[Sessions, dict[str, Any]]:
    """The evaluation shops' sessions of a `simpersona simulate` run, labelled by its episodes."""
    sim_dir = Path(sim_dir)
    info: dict[str, Any] = {"dir": str(sim_dir)}
    npz = sim_dir / "policy.npz"
    if npz.exists():
        fitted = set(PolicyModel.load(npz).shops)
        info["policy_shops"] = sorted(fitted)
        if not fitted:
            info["note"] = "its policy.npz does not record the shops it was fitted on (may include evaluation shops)"
        elif fitted & set(shops):
            raise ConfigError(f"evaluate fidelity: the simulation {sim_dir} used a policy fitted on evaluation shops "
                              f"{sorted(fitted & set(shops))}: training and evaluation shops must not mix")
    summary = sim_dir / "summary.json"
    if summary.exists():
        sm = json.loads(summary.read_text())
        info.update(agent=sm.get("agent"), persona=sm.get("persona"), intent=sm.get("intent"))
    labels = f"SELECT shop_id, buyer_id, any_value(code) AS code, any_value(stratum) AS stratum, any_value(stratum) AS intent_stratum FROM read_parquet('{sim_dir / 'episodes.parquet'}') GROUP BY ALL"
    s = load_sessions(sim_dir / "events.parquet", labels, shops, cfg.intent, 0, cfg.seed, cfg.threads)
    return s, info


def run(cfg: FidelityConfig, out_dir: Path) -> dict[str, Any]:
    import duckdb

    if cfg.ingest is None or cfg.features is None or cfg.personas is None:
        raise ConfigError("evaluate fidelity needs --ingest INGEST_DIR, --features FEAT_DIR and --personas DIR")
    bad = sorted(set(cfg.llm_conditions) - {"persona", "no_persona", "random_persona"})
    if bad:
        raise ConfigError(f"evaluate.fidelity.llm_conditions: unknown {bad} (persona, no_persona, random_persona)")
    if cfg.llm_agent == "llm" and cfg.llm.checkpoint is None or cfg.llm_agent == "endpoint" and not cfg.endpoint.url:
        raise ConfigError(f"evaluate.fidelity.llm_agent {cfg.llm_agent} needs "
                          + ("llm.checkpoint (an SFT stage folder)" if cfg.llm_agent == "llm" else "endpoint.url"))
    t0 = time.perf_counter()
    events = Path(cfg.ingest) / "events.parquet"
    assignments = Path(cfg.personas) / "assignments.parquet"
    all_shops = [r[0] for r in duckdb.sql(f"SELECT DISTINCT shop_id FROM read_parquet('{events}') ORDER BY 1").fetchall()]
    evals, train, source = resolve_shops(cfg, all_shops)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = buyer_labels(cfg, evals + train, out_dir)
    fit_labels = None if labels.sessions is None else (
        f"SELECT shop_id, buyer_id, code, CASE WHEN intent_stratum IN {tuple(BUY_STRATA)} THEN 'buy' ELSE 'browse' END AS intent "
        f"FROM ({labels.sql})")
    codes, counts = fit_intent_counts(events, assignments, cfg.threads, shops=train, labels_sql=fit_labels, sessions_sql=labels.sessions)
    model = PolicyModel(codes, counts, cfg.strength, cfg.alpha, shops=train)
    assert not set(model.shops) & set(evals)
    stats = train_stats(events, labels, train, cfg.threads)
    real = load_sessions(events, labels.sql, evals, cfg.intent, cfg.max_sessions, cfg.seed, cfg.threads, labels.sessions)
    if len(real) == 0:
        raise ConfigError(f"evaluate fidelity: the evaluation shops {evals} have no scored sessions in {events}"
                          + (f" (codes: history, history_fraction {cfg.history_fraction})" if cfg.codes == "history" else ""))
    t_load = time.perf_counter()
    nap = next_action(model, real, stats, cfg)
    t_nap = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 3])
    pop = draw_population(stats["code_strata"], real, evals, cfg.sim_per_real, cfg.intent, rng)
    review = review_rates(model, stats["views"], cfg.strength)
    sims = {a: simulate_sessions(model, review, pop, a, cfg.max_events, np.random.default_rng([cfg.seed, 4, i]))
            for i, a in enumerate(AGENTS)}
    storefront = None
    if cfg.simulation is not None:
        sf, storefront = storefront_sessions(Path(cfg.simulation), evals, cfg)
        if len(sf):
            sims["storefront"] = sf
        else:
            storefront["note"] = "no session on the evaluation shops"
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # small matrix products: BLAS threads only spin on a shared machine
        dist = distributions(real, sims, cfg)
        persona = per_persona(real, sims, cfg)
    t_end = time.perf_counter()
    llm_nap = None
    if cfg.llm_agent != "none":
        from simpersona.evaluate.nextaction import llm_next_action

        llm_nap = llm_next_action(cfg, evals, labels)
    report = {
        "data": {"generated": _generated(Path(cfg.ingest)), "ingest": str(cfg.ingest), "eval_shops": evals, "eval_shops_from": source, "train_shops": train,
                 "real_sessions": len(real), "real_buyers": len(set(zip(real.shop.tolist(), real.buyer.tolist()))),
                 "sessions_without_code": int((real.code < 0).sum()), "max_sessions": cfg.max_sessions,
                 "sim_sessions_per_agent": len(pop), "intent": cfg.intent, "codes": labels.info},
        "agent": {"name": "fast persona policy (agents.policy)", "fitted_on": train, "codes": int(len(codes)),
                  "transitions": float(counts.sum()), "strength": cfg.strength, "alpha": cfg.alpha,
                  "checkpoint": str(Path(out_dir) / "policy.npz"), "storefront_simulation": storefront},
        "next_action": nap, "llm_next_action": llm_nap, "distributions": dist, "per_persona": persona,
        "timing_s": {"load_fit": round(t_load - t0, 2), "next_action": round(t_nap - t_load, 2),
                     "distributions": round(t_end - t_nap, 2), "total": round(t_end - t0, 2)},
    }
    model.save(out_dir / "policy.npz")
    (out_dir / "fidelity.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out_dir / "fidelity.md").write_text(format_report(report) + "\n")
    write_meta(out_dir, "evaluate.fidelity", cfg, sessions=len(real))
    return report


# ---------------------------------------------------------------- text


def _v(m: dict[str, Any] | None, digits: int = 3) -> str:
    if not m or m.get("value") is None:
        return (m or {}).get("note", "–")
    s = f"{m['value']:.{digits}f}"
    return s + (f" [{m['ci'][0]:.{digits}f}, {m['ci'][1]:.{digits}f}]" if "ci" in m else "")


def _d(m: dict[str, Any], digits: int = 3) -> str:
    return f"{m['diff']:+.{digits}f} [{m['ci'][0]:+.{digits}f}, {m['ci'][1]:+.{digits}f}]"


def format_report(r: dict[str, Any]) -> str:
    d = r["data"]
    gen = "GENERATED data (simpersona synth)" if d["generated"] else "data from " + d["ingest"]
    nap = r["next_action"]
    codes = d.get("codes") or {}
    lines = [f"Fidelity on evaluation shops {', '.join(d['eval_shops'])} (from {d['eval_shops_from']}; {gen}); agent: {r['agent']['name']} fitted on "
             f"{len(d['train_shops'])} training shops only; {d['real_sessions']:,} real sessions, {nap['steps']:,} steps; intent: {d['intent']}",
             "", f"Persona codes of the evaluation buyers: {codes.get('from', '?')}: {codes.get('note', '')}"
             + (f" (evaluation and training shops: {codes['buyers_with_history']:,} buyers with a history; {codes['history_sessions']:,} "
                f"history sessions, {codes['scored_sessions']:,} later sessions)" if "buyers_with_history" in codes else "")
             + f"; {d['sessions_without_code']:,} of the {d['real_sessions']:,} scored sessions have no code",
             "", "Next-action prediction (95% CI, bootstrap over sessions)", "",
             "| agent | type acc | exact acc | macro-F1 | outcome F1 |", "|---|---|---|---|---|"]
    for a, m in nap["agents"].items():
        lines.append(f"| {a} | " + " | ".join(_v(m[k]) for k in ("type_accuracy", "exact_accuracy", "macro_f1", "outcome_f1")) + " |")
    lines += ["", "persona − baseline (paired CI): type acc / exact acc / macro-F1 / outcome F1", ""]
    for b, m in nap["persona_minus"].items():
        lines.append(f"- {b}: " + " / ".join(_d(m[k]) for k in ("type_accuracy", "exact_accuracy", "macro_f1", "outcome_f1")))
    dist = r["distributions"]
    lines += ["", "Session distributions, all evaluation shops (lower is closer; AUC 0.5 = indistinguishable)", "",
              "| agent | bigram JS | bigram JS within shop × stratum | W1 length | W1 products | classifier AUC | ATC real / sim | purchase real / sim |",
              "|---|---|---|---|---|---|---|---|"]
    for a, m in dist["overall"].items():
        f = m["funnel"]
        lines.append(f"| {a} | {_v(m['js_bigram'], 4)} | {_v(m.get('js_cells'), 4)} | {_v(m['w_length'], 2)} | {_v(m['w_products'], 2)} | {_v(m['auc'])} | "
                     f"{_v(f['real']['atc'])} / {_v(f['sim']['atc'])} | {_v(f['real']['purchase'])} / {_v(f['sim']['purchase'])} |")
    if dist["baseline_minus_persona"]:
        lines += ["", "baseline − persona (paired CI; positive: the persona agent is closer): bigram JS / bigram JS within "
                  "shop × stratum / AUC", ""]
        for b, m in dist["baseline_minus_persona"].items():
            lines.append(f"- {b}: {_d(m['js_bigram'], 4)} / {_d(m['js_cells'], 4) if 'js_cells' in m else '–'} / {_d(m['auc'])}")
    for key in ("by_shop", "by_stratum"):
        lines += ["", f"{key.replace('_', ' ')}: bigram JS / classifier AUC per agent", "",
                  "| " + key[3:] + " | " + " | ".join(dist["overall"]) + " |", "|---" * (len(dist["overall"]) + 1) + "|"]
        for g, per in dist[key].items():
            lines.append(f"| {g} | " + " | ".join(f"{_v(per[a]['js_bigram'], 4)} / {_v(per[a]['auc'])}" if a in per else "–"
                                                  for a in dist["overall"]) + " |")
    lines += format_llm(r.get("llm_next_action"))
    pp = r["per_persona"]
    lines += ["", f"Per persona ({pp['codes']} codes with ≥ {pp['min_buyers']} real buyers): Pearson r | mean absolute "
              "difference of real vs simulated rates across codes (ATC / checkout / purchase)", ""]
    for a, c in pp["correlation"].items():
        lines.append(f"- {a}: " + " / ".join(_v(c[k]) for k in RATES) + " | " + " / ".join(_v(c["mae"][k]) for k in RATES))
    lines += ["", "Per persona: bigram JS between a code's real and simulated sessions, mean over codes", ""]
    for a, m in pp["code_js"].items():
        d_ = pp["code_js_baseline_minus_persona"].get(a)
        lines.append(f"- {a}: {_v(m)}" + (f" (baseline − persona {_d(d_)} over {d_['codes']} codes)" if d_ else ""))
    return "\n".join(lines)


def format_llm(m: dict[str, Any] | None) -> list[str]:
    """The LLM agent's next-action section (none when it was not run)."""
    if not m:
        return []
    if m.get("value", 0) is None:
        return ["", f"Next-action prediction by the LLM agent: {m['note']}"]
    a = m["agent"]
    lines = ["", f"Next-action prediction by the {a['name']} ({a.get('checkpoint_id') or a.get('checkpoint') or a.get('endpoint')}), "
             f"replayed on the storefront: {m['sessions']} real sessions, {m['steps']} steps (teacher-forced; outcome: the furthest "
             "funnel step its answers reach along the real prefix)", "",
             "| condition | type acc | exact acc | macro-F1 | outcome F1 |", "|---|---|---|---|---|"]
    for c, f in m["agents"].items():
        lines.append(f"| {c} | " + " | ".join(_v(f[k]) for k in ("type_accuracy", "exact_accuracy", "macro_f1", "outcome_f1")) + " |")
    for b, f in m["persona_minus"].items():
        lines.append(f"- persona − {b}: " + " / ".join(_d(f[k]) for k in ("type_accuracy", "exact_accuracy", "macro_f1", "outcome_f1")))
    return lines


def format_summary(r: dict[str, Any]) -> str:
    """Three lines for the console."""
    a = r["next_action"]["agents"]
    o = r["distributions"]["overall"]
    return (f"fidelity on {len(r['data']['eval_shops'])} evaluation shops, {r['data']['real_sessions']:,} sessions"
            f"{' (generated data)' if r['data']['generated'] else ''}: next-action type accuracy persona {_v(a['persona']['type_accuracy'])} "
            f"vs no persona {_v(a['no_persona']['type_accuracy'])}\n"
            f"bigram JS persona {_v(o['persona']['js_bigram'], 4)} vs no persona {_v(o['no_persona']['js_bigram'], 4)} "
            f"(within shop × stratum {_v(o['persona'].get('js_cells'), 4)} vs {_v(o['no_persona'].get('js_cells'), 4)}); "
            f"classifier AUC persona {_v(o['persona']['auc'])} vs no persona {_v(o['no_persona']['auc'])}")
