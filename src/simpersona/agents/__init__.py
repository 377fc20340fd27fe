"""Shopping agents behind one interface: `agent.reset(goal, persona)`, `agent.act(observation) -> Decision`.

- `llm.LLMAgent`: the SFT prompt format (`contracts.prompt.messages` / `log_entry`), a local
  transformers checkpoint (batched generation) or an OpenAI-compatible endpoint; the model's text
  is repaired and validated by `base.parse_output`, every failure classified (`base.FAILURES`).
- `policy.PolicyAgent`: the fast persona policy — per code, the real clickstream's next-event and
  stop probabilities given the page type (`policy.PolicyModel`), executed on the storefront.
- `script.ScriptAgent`: follows a fixed plan (the instruction tasks' reference).
- No-persona variants: `LLMAgent` with persona None ("Buyer profile: none"), `PolicyAgent` with
  code None (the population-wide policy).

`base.act_batch` answers many episodes at once (one generate call per LLM backend).
Nothing heavy is imported at import time.
"""
