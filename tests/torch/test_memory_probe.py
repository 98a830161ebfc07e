"""What validate's ranks count (launcher/memory_probe.py): each storage once, at its full size."""
from llmlaunch.launcher.memory_probe import StorageCounter


def test_storage_counter_counts_each_storage_once():
    import torch

    base = torch.zeros(10, 4)
    counter = StorageCounter()
    counter.add_all([base, base[2:], base.t(), {"x": base.view(-1)}, torch.zeros(3, device="meta")])
    assert counter.bytes == 160
    excluded = StorageCounter(exclude={base.untyped_storage().data_ptr()})
    excluded.add(base[1])
    assert excluded.bytes == 0
