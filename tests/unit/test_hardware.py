"""The accelerator catalog: a lookup has no side effects; this host's figures are measured only when
asked for (topology/hardware.py)."""
import pytest

from llmlaunch.topology import hardware


def test_lookup_never_measures(monkeypatch):
    def measuring(*args, **kwargs):
        raise AssertionError("a catalog lookup measured the host")

    monkeypatch.setattr(hardware, "measure_cpu_peak_tflops", measuring)
    monkeypatch.setattr(hardware, "host_memory_gib", measuring)
    cpu = hardware.gpu("cpu")
    assert cpu.host_measured and (cpu.memory_gib, cpu.peak_tflops) == (16.0, 0.1)
    assert hardware.gpu("a100-80gb", measure=True).memory_gib == 80.0   # nothing to measure there


def test_measure_reads_this_host_and_overrides_still_win(monkeypatch):
    monkeypatch.setattr(hardware, "measure_cpu_peak_tflops", lambda: 0.123456)
    monkeypatch.setattr(hardware, "host_memory_gib", lambda: 23.456)
    cpu = hardware.gpu("cpu", measure=True)
    assert (cpu.memory_gib, cpu.peak_tflops) == (23.5, 0.1235)
    assert hardware.gpu("cpu", measure=True, memory_gib=8).memory_gib == 8


def test_unknown_gpu_names_the_catalog():
    with pytest.raises(ValueError, match="not in the catalog; known: a100-40gb"):
        hardware.gpu("b300")


def test_an_nvlink_override_replaces_the_measured_collective_curve():
    a100 = hardware.gpu("a100-80gb")
    assert a100.allreduce_busbw and a100.nccl_channels == 24
    slow = hardware.gpu("a100-80gb", intra_node_gb_per_s=100)
    assert slow.allreduce_busbw == () and slow.intra_node_gb_per_s == 100
    with pytest.raises(ValueError, match="allreduce_busbw must list"):
        hardware.gpu("a100-80gb", allreduce_busbw=[[2, 1.0], [1, 2.0]])
