"""Every source kind read from files the test writes from known documents, and the sample index's
windows against windows computed by hand (data/sources.py, data/sample_index.py)."""
import json

import numpy as np
import pytest
from token_data import (known_documents, windows_by_hand, write_datatrove, write_megatron,
                        write_parquet)

from llmlaunch.data import DataError
from llmlaunch.data.megatron import MegatronIndex
from llmlaunch.data.sample_index import SampleIndex, build_index
from llmlaunch.data.sources import SourceSpec, detect_kind, open_source

SEQ = 16
DOCS = known_documents(40, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    np.save(root / "flat.npy", np.concatenate([np.asarray(d, np.uint16) for d in DOCS]))
    return {"megatron": write_megatron(root / "meg", DOCS),
            "datatrove": write_datatrove(root / "dt", DOCS),
            "columnar": write_parquet(root / "pq", DOCS), "flat": root / "flat.npy",
            "arrow": write_arrow(root / "arrow", DOCS), "root": root}


def write_arrow(folder, documents):
    """An Arrow stream file, as `datasets.save_to_disk` writes its data-*.arrow."""
    import pyarrow as pa

    folder.mkdir()
    table = pa.table({"input_ids": pa.array(documents, pa.list_(pa.int64()))})
    with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=9):
            writer.write_batch(batch)
    return folder


@pytest.mark.parametrize("kind", ["megatron", "datatrove", "columnar", "arrow"])
def test_each_kind_reads_the_documents_with_their_boundaries(data, kind):
    spec = SourceSpec(str(data[kind]), name=kind)
    assert detect_kind(data[kind]) == ("columnar" if kind == "arrow" else kind)
    index_dir = build_index([spec], data["root"] / f"index-{kind}", seed=1, seq_len=SEQ,
                            global_batch=4, samples=0)
    source = open_source(spec, data["root"] / f"index-{kind}")
    assert (source.documents, source.tokens) == (len(DOCS), sum(map(len, DOCS)))
    docs = np.load(index_dir / "docs-0.npy")
    assert docs.tolist() == np.concatenate([[0], np.cumsum([len(d) for d in DOCS])]).tolist()
    for d in (0, 17, 39):
        assert source.read(int(docs[d]), len(DOCS[d])).tolist() == DOCS[d]
    meta = json.loads((index_dir / "index.json").read_text())["sources"][0]
    assert meta["max_token_id"] == max(max(d) for d in DOCS)


@pytest.mark.parametrize("kind", ["megatron", "datatrove", "columnar", "flat"])
def test_windows_equal_the_ones_computed_by_hand(data, kind):
    """Epoch 0 and 1 of a shuffled index, and the unshuffled (evaluation) order, window by window."""
    spec = SourceSpec(str(data[kind]), name=kind)
    root = data["root"] / f"windows-{kind}"
    windows = (sum(map(len, DOCS)) - 1) // SEQ
    directory = build_index([spec], root, seed=7, seq_len=SEQ, global_batch=4,
                            samples=windows + 5)
    index = SampleIndex(directory, [open_source(spec, root)])
    docs = DOCS if kind != "flat" else [[t for d in DOCS for t in d]]
    for epoch in (0, 1):
        order = np.load(directory / f"epoch-0-{epoch}-docs.npy").tolist()
        window_order = np.load(directory / f"epoch-0-{epoch}-windows.npy").tolist()
        assert sorted(order) == list(range(len(docs))) and sorted(window_order) == \
            list(range(windows))
        expected = windows_by_hand(docs, order, window_order, SEQ)
        got = [index.source_sample(0, epoch * windows + j).tolist() for j in range(windows)]
        assert got == expected
    shuffled = "windows" if kind == "flat" else "docs"   # each epoch shuffles again
    assert np.load(directory / f"epoch-0-0-{shuffled}.npy").tolist() != \
        np.load(directory / f"epoch-0-1-{shuffled}.npy").tolist()
    index.shuffle = False
    assert [index.source_sample(0, j).tolist() for j in range(windows)] == \
        windows_by_hand(docs, range(len(docs)), range(windows), SEQ)


def test_index_is_reused_extended_and_keyed(data):
    spec = SourceSpec(str(data["megatron"]), name="m")
    root = data["root"] / "reuse"
    first = build_index([spec], root, seed=1, seq_len=SEQ, global_batch=4, samples=10)
    stamp = (first / "docs-0.npy").stat().st_mtime_ns
    again = build_index([spec], root, seed=1, seq_len=SEQ, global_batch=4, samples=200)
    assert again == first and (first / "docs-0.npy").stat().st_mtime_ns == stamp
    # 200 samples of 80 windows an epoch: epochs 0-2, built when the run first needs them
    assert (first / "epoch-0-2-windows.npy").is_file() and not (first / "epoch-0-3-docs.npy").exists()
    for change in ({"seed": 2}, {"seq_len": 8}, {"global_batch": 8}):
        args = {"seed": 1, "seq_len": SEQ, "global_batch": 4, **change}
        assert build_index([spec], root, samples=0, **args) != first
    assert not list(root.glob(".*.tmp-*"))                    # nothing half-built left


def test_rank_memory_does_not_load_the_index(data):
    spec = SourceSpec(str(data["datatrove"]), name="d")
    root = data["root"] / "mmap"
    directory = build_index([spec], root, seed=1, seq_len=SEQ, global_batch=4, samples=100)
    index = SampleIndex(directory, [open_source(spec, root)])
    index.sample(0)
    epoch = index.epoch(0, 0)
    assert all(isinstance(a, np.memmap) for a in (epoch.order, epoch.ends, epoch.windows,
                                                  index.docs[0]))


def test_megatron_files_that_do_not_match_their_index_are_refused(tmp_path):
    prefix = write_megatron(tmp_path / "m", DOCS)
    MegatronIndex(prefix).check()
    with open(f"{prefix}.bin", "ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(DataError, match=r"m.bin: \d+ bytes, its .idx says"):
        MegatronIndex(prefix).check()
    (tmp_path / "bad.idx").write_bytes(b"NOTMEGATRON" + bytes(40))
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not a Megatron MMIDIDX index"):
        MegatronIndex(tmp_path / "bad")


def test_datatrove_token_size_and_mismatch(tmp_path):
    folder = write_datatrove(tmp_path / "dt4", DOCS, token_size=4)
    source = open_source(SourceSpec(str(folder)))
    assert source.dtype == "uint32" and source.tokens == sum(map(len, DOCS))
    source.check_files()
    ds = folder / "000_00000.ds"
    ds.write_bytes(ds.read_bytes()[:-4])
    with pytest.raises(DataError, match="000_00000.ds: .* bytes, its .index ends at token"):
        open_source(SourceSpec(str(folder))).check_files()


def test_unknown_paths_say_what_would_work(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is a directory without manifest.json"):
        open_source(SourceSpec(str(tmp_path / "empty")))
    with pytest.raises(DataError, match="does not exist"):
        open_source(SourceSpec(str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="split 'val' needs a `llmlaunch data prepare` directory"):
        open_source(SourceSpec(str(write_megatron(tmp_path / "m", DOCS)), split="val"))
