"""The whole model and the vocab-parallel pieces split over tp=2 and tp=4 gloo ranks (plain
torch.distributed, no DeepSpeed) against the single-process model (tests/helpers/tp_checks.py); this
file is also the ranks' driver."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness, tp_checks
from rank_harness import run_ranks  # noqa: E402
from tp_checks import all_errors, assert_small  # noqa: E402


def driver_main():
    import torch.distributed as dist

    from llmlaunch.model.tp import TensorParallelGroup

    from rank_harness import finish_test_distributed, init_test_distributed, write_rank_result

    init_test_distributed()
    tp = TensorParallelGroup(dist.get_rank(), dist.get_world_size(), group=dist.group.WORLD)
    write_rank_result(all_errors(tp))
    finish_test_distributed()


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_ranks_match_reference(tp, tmp_path):
    run = run_ranks(__file__, tp, timeout_s=120, results_dir=tmp_path).check()
    assert sorted(run.results) == list(range(tp))
    for rank, errors in run.results.items():
        assert_small(errors)


if __name__ == "__main__":
    driver_main()
