"""The MoE model in one process: its logits and load-balancing loss equal transformers' Mixtral and
Qwen3-MoE on the same weights; the router's losses, the capacity's drops and the logged load
statistics pinned to hand-computed values."""
from __future__ import annotations

import pytest
import torch
from moe_specs import tiny_moe_families

FAMILIES = tiny_moe_families(hidden=32, vocab=100, seq_len=12)


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_logits_and_aux_loss_equal_transformers(arch, tmp_path):
    from hf_models import make_random_hf_model
    from transformers import AutoModelForCausalLM

    from llmlaunch.model.lm import LocalLM, logits_of
    from llmlaunch.model.moe import load_balancing_loss

    spec = FAMILIES[arch]
    make_random_hf_model(spec, tmp_path / "hf")
    tokens = torch.randint(0, spec.vocab, (2, spec.seq_len), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        theirs = hf(tokens, output_router_logits=True)
        ours = LocalLM(spec, hf_dir=tmp_path / "hf").eval()(tokens)
    torch.testing.assert_close(logits_of(ours)[..., :spec.vocab], theirs.logits, rtol=1e-5,
                               atol=1e-5)
    _, counts, sums = ours
    aux = load_balancing_loss(counts, sums[:spec.experts], tokens.numel())
    torch.testing.assert_close(aux, theirs.aux_loss, rtol=1e-5, atol=1e-6)


def test_load_balancing_loss_by_hand():
    from llmlaunch.model.moe import load_balancing_loss

    # E = 2, one layer, T = 2 tokens, top-1: one copy each (f = 1/2, 1/2); probabilities summed
    # over the tokens 1.2 and 0.8 (P = 0.6, 0.4): E sum f P = 2 (0.5 0.6 + 0.5 0.4) = 1.0
    got = load_balancing_loss(torch.tensor([[1, 1, 0]]), torch.tensor([1.2, 0.8]), tokens=2)
    assert float(got) == pytest.approx(1.0)
    # all copies on expert 0, whose probability is 0.9 on average: 2 (1 x 0.9 + 0 x 0.1) = 1.8
    got = load_balancing_loss(torch.tensor([[2, 0, 0]]), torch.tensor([1.8, 0.2]), tokens=2)
    assert float(got) == pytest.approx(1.8)


def test_capacity_pads_and_drops_in_priority_order():
    from llmlaunch.model.moe_dispatch import ExpertParallelGroup, expert_capacity, plan_routing

    # T = 4 tokens, k = 1, E = 2, C = 1.0: ceil(1.0 x 4 x 1 / 2) = 2 rows per expert
    assert expert_capacity(4, 1, 2, 1.0) == 2
    routing = plan_routing(torch.tensor([[0], [0], [0], [1]]), 2, ExpertParallelGroup(), 1.0)
    assert routing.dropped == 1 and routing.selected.tolist() == [3, 1]
    assert routing.source_copy.tolist() == [0, 1, 3, -1]    # tokens 0, 1 kept; 2 dropped; a pad
    assert routing.expert_rows == [2, 2]
    dropless = plan_routing(torch.tensor([[0], [0], [0], [1]]), 2, ExpertParallelGroup())
    assert dropless.dropped == 0 and dropless.expert_rows == [3, 1]


def test_logged_load_statistics_by_hand():
    from llmlaunch.launcher.moe_metrics import moe_log_text, summarise

    # two layers of 4 experts: 8 copies each; layer 1 sends 4 of 8 to one expert (share 0.5)
    counts = torch.tensor([[2, 2, 2, 2, 0], [4, 2, 1, 1, 2]], dtype=torch.float64)
    stats = summarise(0.5, 0.1, counts, first_block=1)
    assert stats["expert_load"][0] == {"layer": 1, "max_share": 0.25, "min_share": 0.25,
                                       "max_over_mean": 1.0}
    assert stats["expert_load"][1]["max_over_mean"] == 2.0
    assert stats["expert_load"][1]["min_share"] == 0.125
    assert stats["expert_load_max_over_mean"] == 2.0
    assert stats["dropped_fraction"] == pytest.approx(2 / 16)
    assert moe_log_text(stats) == " | aux 0.5000 load 2.00x (layer 2) dropped 12.5%"
