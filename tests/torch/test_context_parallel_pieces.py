"""model/context_parallel.py's pure pieces in one process: the load-balanced split, the chunk orders
the exchanges need, and attention of a query chunk against the keys up to its end (the all-gather
form's core) against plain causal attention of the whole sequence."""
import pytest
import torch
import torch.nn.functional as F

from llmlaunch.model.context_parallel import (ContextParallelGroup, attend_lower_right, chunk_ids,
                                              chunk_positions, gathered_to_sequence_order,
                                              permute_chunks, sequence_to_gathered_order,
                                              split_for_rank)
from llmlaunch.model.layers import token_positions
from llmlaunch.model.tp import TensorParallelGroup


def test_rank_r_holds_chunks_r_and_2cp_minus_1_minus_r():
    tokens = torch.arange(16).unsqueeze(0)                        # [1, 16], 2 cp = 8 chunks of 2
    assert chunk_ids(0, 4) == (0, 7) and chunk_ids(3, 4) == (3, 4)
    assert split_for_rank(tokens, 0, 4).tolist() == [[0, 1, 14, 15]]
    assert split_for_rank(tokens, 3, 4).tolist() == [[6, 7, 8, 9]]
    for rank in range(4):          # positions are the tokens' own indices
        assert chunk_positions(4, rank, 4).tolist() == split_for_rank(tokens, rank, 4)[0].tolist()
    assert split_for_rank(tokens, 0, 1) is tokens
    with pytest.raises(ValueError, match="does not split into 2\\*cp = 6 chunks"):
        split_for_rank(tokens, 0, 3)


def test_every_token_on_exactly_one_rank_and_back_in_order():
    """The rank-order concatenation (what an all-gather yields) put back in sequence order."""
    for cp in (1, 2, 3, 4):
        seq = torch.arange(4 * cp)
        gathered = torch.cat([split_for_rank(seq.unsqueeze(0), r, cp)[0] for r in range(cp)])
        assert sorted(gathered.tolist()) == seq.tolist()
        assert permute_chunks(gathered, gathered_to_sequence_order(cp), 0).tolist() == seq.tolist()
        assert permute_chunks(seq, sequence_to_gathered_order(cp), 0).tolist() == gathered.tolist()


def test_positions_under_sequence_and_context_parallelism():
    """cp 2, tp 2 with SP: the rank's s/cp tokens (chunks) and of those its 1/t shard."""
    cp = ContextParallelGroup(rank=1, size=2)                      # chunks 1 and 2 of 4
    assert cp.positions(8).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    tp = TensorParallelGroup(1, 2, sequence_parallel=True)
    assert token_positions(4, tp, cp).tolist() == [8, 9, 10, 11]
    assert token_positions(4, None, None).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_a_query_chunk_attends_as_in_the_whole_sequence(window, heads, kv_heads):
    """Queries at positions [e - L, e) over keys [0, e): the rows of full causal attention."""
    torch.manual_seed(0)
    s, d = 12, 8
    q, k, v = torch.randn(2, heads, s, d), torch.randn(2, kv_heads, s, d), torch.randn(2, kv_heads, s, d)
    gqa = heads != kv_heads
    if window:
        i, j = torch.arange(s).unsqueeze(1), torch.arange(s)
        mask = (j <= i) & (j > i - window)
        whole = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    else:
        whole = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    for start, end in ((0, 3), (3, 6), (6, 9), (9, 12), (4, 12)):
        got = attend_lower_right(q[:, :, start:end], k[:, :, :end], v[:, :, :end], window, gqa)
        torch.testing.assert_close(got, whole[:, :, start:end], rtol=1e-5, atol=1e-6)
