"""Tensor-parallel pieces at tp=1 in one process (tests/helpers/tp_checks.py; tests/ranks runs the
same checks at tp=2 and 4)."""
import torch
import torch.nn.functional as F

from llmlaunch.model.tp import TensorParallelGroup, vocab_parallel_cross_entropy
from llmlaunch.topology.params import padded_vocab
from tp_checks import VOCAB, all_errors, assert_small


def test_single_rank_matches_reference():
    assert_small(all_errors(TensorParallelGroup()))


def test_padding_would_change_the_loss_if_counted():
    """The padded columns above carry large logits: counting them moves the loss far off."""
    tp = TensorParallelGroup()
    logits = torch.zeros(4, padded_vocab(VOCAB, 1))
    logits[:, VOCAB:] = 50.0
    target = torch.zeros(4, dtype=torch.long)
    ours = vocab_parallel_cross_entropy(logits, target, tp, VOCAB)
    assert torch.allclose(ours, torch.full((4,), torch.log(torch.tensor(float(VOCAB)))))
    assert (F.cross_entropy(logits, target, reduction="none") - ours).abs().min() > 10
