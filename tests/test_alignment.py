"""Metrics: ARA, Cohen's d, Welch, Kruskal–Wallis, permutation p on hand examples (equal to
scipy where scipy has them); Table 2 pairings by hand; alignment, separation, instructions and
ablations end to end on a toy world."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from simpersona.evaluate import stats as S
from simpersona.evaluate.alignment import alignment_table


def test_ara_by_hand():
    assert S.rate_alignment(0.2, 0.5) == pytest.approx(0.7)
    assert S.ara(0.2, 0.5, 0.1, 0.1) == pytest.approx(0.5 * 0.7 + 0.5 * 1.0)


def test_cohens_d_welch_kw_permutation_by_hand():
    low, high = np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0])
    assert S.cohens_d(low, high) == pytest.approx(2.0)  # means 2 vs 4, both SDs 1
    # Welch: t = -2/sqrt(1/3 + 1/3) = -2.449, df = 4 → p = 2·P(T4 > 2.449)
    t = -2 / math.sqrt(2 / 3)
    assert S.welch_p(low, high) == pytest.approx(2 * sps.t.sf(abs(t), 4))
    assert S.welch_p(low, high) == pytest.approx(sps.ttest_ind(low, high, equal_var=False).pvalue)
    # Kruskal–Wallis with ranks 1–6 in three pairs: H = 12/42·(3²+7²+11²)/2 − 21 = 4.571, df 2
    h = 12 / 42 * (9 + 49 + 121) / 2 - 21
    g = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])]
    assert S.kruskal_p(*g) == pytest.approx(math.exp(-h / 2)) == pytest.approx(sps.kruskal(*g).pvalue)
    # permutation (exact here, 720 orderings): |r| = 1 only for the 8 + 8 within-bin reorderings
    assert S.trend_permutation_p(np.array([0, 0, 1, 1, 2, 2]), np.arange(1.0, 7.0)) == pytest.approx(16 / 720)
    # no relation: a large p; degenerate input: NaN, not an exception
    rng = np.random.default_rng(0)
    assert S.trend_permutation_p(rng.integers(0, 3, 200), rng.normal(size=200), 2000) > 0.05
    assert math.isnan(S.cohens_d(np.array([1.0]), high)) and math.isnan(S.kruskal_p(np.ones(3), np.ones(3)))


def test_alignment_pairings_by_hand():
    # one shop, stratum A; real cells for codes 0, 1, 2; the agent of code 0 simulated
    real = {("s", 0, "A"): (10, 0.5, 0.2), ("s", 1, "A"): (10, 0.1, 0.0), ("s", 2, "A"): (10, 0.9, 0.6)}
    sim = {("s", 0, "A"): (20, 0.4, 0.2)}
    t = alignment_table(real, sim, ["A", "B"], 5, 3, np.random.default_rng(0))
    correct = S.ara(0.5, 0.4, 0.2, 0.2)
    allmis = np.mean([S.ara(0.1, 0.4, 0.0, 0.2), S.ara(0.9, 0.4, 0.6, 0.2)])
    assert t["A"]["ara"][0] == pytest.approx(correct) and t["A"]["ara"][1] == pytest.approx(allmis)
    assert t["A"]["ara"][2] in (pytest.approx(S.ara(0.1, 0.4, 0.0, 0.2)), pytest.approx(S.ara(0.9, 0.4, 0.6, 0.2)))
    assert t["B"]["cells"] == 0 and t["Stratified"]["ara"][0] == pytest.approx(correct)
    # correct − all-mismatch per stratum and stratified; one cell: a degenerate bootstrap interval
    assert t["A"]["gap"] == pytest.approx(correct - allmis) == pytest.approx(t["Stratified"]["gap"])
    assert t["A"]["gap_ci"] is None  # no bootstrap draws asked
    t = alignment_table(real, sim, ["A", "B"], 5, 3, np.random.default_rng(0), n_boot=200)
    assert t["Stratified"]["gap_ci"] == pytest.approx([correct - allmis] * 2) and t["B"]["gap_ci"] is None
    # too few real buyers: the cell does not count
    assert alignment_table(real, sim, ["A"], 11, 3, np.random.default_rng(0))["A"]["cells"] == 0


def test_gap_interval_covers_the_stratified_mean_of_stratum_means():
    from simpersona.evaluate.alignment import gap_ci

    rng = np.random.default_rng(1)
    gaps = {"A": rng.normal(0.2, 0.05, 40), "B": rng.normal(0.0, 0.05, 10)}
    lo, hi = gap_ci(gaps, 2000, np.random.default_rng(0))
    mean = np.mean([g.mean() for g in gaps.values()])  # strata weigh the same, whatever their cell counts
    assert lo < mean < hi and hi - lo < 0.05


def test_rate_intervals_and_paired_test_by_hand():
    lo, hi = S.wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4) and S.wilson_ci(0, 0) is None
    # McNemar: 9 of 10 discordant pairs one way → binomial two-sided p = 22/1024
    a = np.array([1] * 9 + [0] + [1] * 5 + [0] * 5, bool)
    b = np.array([0] * 9 + [1] + [1] * 5 + [0] * 5, bool)
    assert S.mcnemar_p(a, b) == pytest.approx(22 / 1024) == pytest.approx(sps.binomtest(9, 10).pvalue)
    assert math.isnan(S.mcnemar_p(a, a)) and S.fisher_p(3, 10, 3, 10) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from simpersona.simulate import stage
    from simpersona.testing.world import make_toy_world

    root = tmp_path_factory.mktemp("align")
    w = make_toy_world(root, shops=2, codes=4, buyers=120)
    stage.run(stage.SimulateConfig(ingest=w["ingest"], personas=w["personas"], buyers=80), root / "simulate")
    return w, root / "simulate"


def test_alignment_and_separation_end_to_end(simulated, tmp_path):
    from simpersona.evaluate import alignment, separation

    w, sim = simulated
    r = alignment.run(alignment.AlignmentConfig(features=w["features"], personas=w["personas"], simulation=sim, min_real_buyers=3,
                                                min_sim_sessions=2), tmp_path / "al")
    st = r["table"]["Stratified"]
    assert st["cells"] > 0 and st["ara"][0] > st["ara"][1]  # the code's own policy beats the other codes'
    assert st["gap"] == pytest.approx(st["ara"][0] - st["ara"][1]) and st["gap_ci"][0] > 0  # and the interval says so
    # every figure names its agent (the fitted policy, by content hash) and its data
    assert r["agent"]["name"] == "policy" and len(r["agent"]["checkpoint"]["sha256"]) == 12
    assert r["data"]["shops"] == ["shop0", "shop1"] and r["data"]["generated"] is False
    assert "agent policy, checkpoint" in (tmp_path / "al" / "alignment.md").read_text()
    assert set(r["funnel"]) == {"shop0", "shop1"} and json.loads((tmp_path / "al" / "alignment.json").read_text())
    s = separation.run(separation.SeparationConfig(simulation=sim, personas=w["personas"], n_resamples=999), tmp_path / "sep")
    p = s["heads"]["purchase"]
    assert p["means"][2] > p["means"][0] and p["kw_p"] < 0.01 and p["perm_p"] < 0.01
    # the toy codes are deterministic and the policy now follows the buyer's intent too (a browse
    # buyer never carts): the extreme bins can be constant, and Cohen's d is then undefined (None)
    assert p["d"] is None or p["d"] > 1
    assert "Table 3" in (tmp_path / "sep" / "separation.md").read_text()


def test_instructions_script_agent_completes_every_task(simulated, tmp_path):
    """simulate.instructions runs the tasks; evaluate.instructions only reads the run folder."""
    from simpersona.evaluate import instructions as I
    from simpersona.simulate import instructions as SI

    w, sim = simulated
    cfg = SI.TasksConfig(ingest=w["ingest"], personas=w["personas"], agents=["script", "policy", "llm"], fast_repetitions=2,
                         shops=["shop0"], policy_model=sim / "policy.npz")
    SI.run(cfg, tmp_path / "sim")
    tasks, runs = SI.load_tasks(tmp_path / "sim")
    assert tasks == SI.build_tasks(SI.TasksConfig(ingest=w["ingest"], shops=["shop0"]))
    assert runs["llm"]["status"] == "not run" and "checkpoint" in runs["llm"]["reason"]
    r = I.run(I.InstructionsConfig(simulation=tmp_path / "sim"), tmp_path / "ins")
    sc = r["agents"]["script"]
    assert r["tasks"] == 7 and sc["runs"] == 14 and sc["overall"]["completed"] == 1.0 and sc["overall"]["self_reported"] == 1.0
    assert sc["overall"]["completed_when_claimed"] == 1.0 and sc["overall"]["n"]["completed"] == [14, 14]
    assert sc["overall"]["ci"]["completed"][0] == pytest.approx(0.785, abs=1e-3)  # Wilson lower bound of 14/14
    navs = sorted(t["nav"] for t in r["task_list"])
    assert navs[0] == 3 and navs[-1] == 27
    assert sc["types"]["purchase"]["purchased"] == 1.0 and sc["types"]["checkout"]["purchased"] == 0.0
    pol = r["agents"]["policy"]
    assert pol["runs"] == 14 and pol["agent"]["checkpoint"]["path"] == str((sim / "policy.npz").resolve())
    assert pol["overall"]["completed"] < 1.0  # the policy ignores instructions: a floor
    md = (tmp_path / "ins" / "instructions.md").read_text()
    assert "| metric | script | policy | paper (SimPersona) |" in md and "llm: not run" in md
    assert len(SI.build_tasks(SI.TasksConfig(ingest=w["ingest"], shops=["shop0"], templates=["cart3", "co5"]))) == 2
    with pytest.raises(Exception, match="unknown template"):
        SI.build_tasks(SI.TasksConfig(ingest=w["ingest"], shops=["shop0"], templates=["cart9"]))
    assert SI.build_tasks(SI.TasksConfig(ingest=w["ingest"])) == SI.build_tasks(SI.TasksConfig(ingest=w["ingest"]))


def test_ablations_token_run_and_stages_not_run(simulated, tmp_path):
    from simpersona.evaluate import ablations as A
    from simpersona.simulate import ablations as SA
    from simpersona.simulate.stage import SimulateConfig

    w, _ = simulated
    runs = SA.run(SA.AblationRunsConfig(simulate=SimulateConfig(ingest=w["ingest"], personas=w["personas"], buyers=40)), tmp_path / "sim")
    assert runs["stages"]["status"] == "not run" and (tmp_path / "sim" / "token_policy_without" / "episodes.parquet").exists()
    assert runs["token"]["llm"]["status"] == "not run"  # no checkpoint given
    r = A.run(A.AblationsConfig(simulation=tmp_path / "sim"), tmp_path / "ab")
    t = r["token"]["policy"]
    assert t["with"]["episodes"] == t["without"]["episodes"] == t["pairs"] == 80
    assert t["with"]["agent"]["persona_token"] and not t["without"]["agent"]["persona_token"]
    lo, hi = t["with"]["atc_rate_ci"]
    assert lo <= t["with"]["atc_rate"] <= hi
    assert t["atc_rate_p"] is None or 0 <= t["atc_rate_p"] <= 1
    assert r["stages"]["status"] == "not run" and "SFT" in r["stages"]["reason"]
    md = (tmp_path / "ab" / "ablations.md").read_text()
    assert "McNemar p" in md and "Table 9 (llm): not run" in md


@pytest.fixture(scope="module")
def tiny_llm(simulated, tmp_path_factory):
    """A random-init 1-layer Llama with the toy world's persona tokens, saved as an SFT stage folder."""
    import pyarrow.parquet as pq
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simpersona.contracts.persona import persona_tokens
    from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT
    from simpersona.sft.train import train_tiny_tokenizer

    w, _ = simulated
    k = int(pq.read_table(w["personas"] / "shop_mix.parquet").column("code").to_numpy().max()) + 1
    path = tmp_path_factory.mktemp("llm") / "stage2"
    tok = train_tiny_tokenizer([SYSTEM_PROMPT] * 2, 300)
    tok.add_tokens(persona_tokens(k), special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_llm_variants_run_beside_the_policy_and_name_their_checkpoint(simulated, tiny_llm, tmp_path):
    """Tables 2–3 (populations), 4 and 9 with the LLM agent with and without its token: the same
    population both ways, every report naming the checkpoint by its content hash."""
    from simpersona.evaluate import ablations as A, alignment, instructions as I, separation
    from simpersona.stagedir import checkpoint_id
    from simpersona.simulate import ablations as SA, instructions as SI, populations as SP
    from simpersona.simulate.stage import SimulateConfig
    from simpersona.agents.llm import LLMConfig
    from simpersona.storefront.config import EnvConfig, StorefrontConfig
    import pyarrow.parquet as pq

    w, sim = simulated
    ck = checkpoint_id(tiny_llm)
    sf = StorefrontConfig(env=EnvConfig(max_steps=4))
    base = SimulateConfig(ingest=w["ingest"], personas=w["personas"], storefront=sf, concurrency=8,
                          llm=LLMConfig(checkpoint=tiny_llm, temperature=1.0))
    runs = SP.run(SP.PopulationsConfig(simulate=base, buyers=6), tmp_path / "pop", echo=lambda s: None)
    assert {a: r["episodes"] for a, r in runs.items()} == {"llm": 12, "llm_no_persona": 12}
    eps = {a: pq.read_table(tmp_path / "pop" / a / "episodes.parquet").sort_by("buyer_id").to_pylist() for a in runs}
    assert [e["code"] for e in eps["llm"]] == [e["code"] for e in eps["llm_no_persona"]]  # one population
    assert all(e["persona"] for e in eps["llm"]) and not any(e["persona"] for e in eps["llm_no_persona"])
    for a in runs:
        r = alignment.run(alignment.AlignmentConfig(features=w["features"], personas=w["personas"], simulation=tmp_path / "pop" / a,
                                                    min_real_buyers=3, min_sim_sessions=1), tmp_path / a / "al")
        s = separation.run(separation.SeparationConfig(simulation=tmp_path / "pop" / a, personas=w["personas"], n_resamples=99),
                           tmp_path / a / "sep")
        assert r["agent"]["checkpoint"] == ck == s["agent"]["checkpoint"] and r["agent"]["name"] == a
        assert s["episodes"] == 12  # the no-persona control keeps its drawn codes
        assert ck["sha256"] in (tmp_path / a / "al" / "alignment.md").read_text()

    SI.run(SI.TasksConfig(ingest=w["ingest"], personas=w["personas"], shops=["shop0"], templates=["cart3", "co5"], repetitions=1,
                          agents=["llm", "llm_no_persona"], storefront=sf, llm=LLMConfig(checkpoint=tiny_llm)), tmp_path / "t4")
    t4 = I.run(I.InstructionsConfig(simulation=tmp_path / "t4"), tmp_path / "t4e")
    assert {a: x["runs"] for a, x in t4["agents"].items()} == {"llm": 2, "llm_no_persona": 2}
    assert t4["agents"]["llm"]["agent"]["llm"]["temperature"] == 0.0 and t4["agents"]["llm"]["agent"]["checkpoint"] == ck

    SA.run(SA.AblationRunsConfig(simulate=base, which=["token"], token_agents=["llm"], llm_buyers=3), tmp_path / "ab")
    t9 = A.run(A.AblationsConfig(simulation=tmp_path / "ab"), tmp_path / "abe")["token"]["llm"]
    assert t9["pairs"] == 6 and t9["with"]["agent"]["checkpoint"] == ck and t9["without"]["agent"]["name"] == "llm_no_persona"
