"""`data prepare --tasks N` (data/prepare_tasks.py): the same bytes as one process on a corpus with
planted exact and near duplicates, through a local pool and through the --stage tasks Slurm runs."""
import pytest
from planted_corpus import same_tree, write_planted_corpus

from llmlaunch.cli import main
from llmlaunch.data.prepare import PrepareConfig, prepare


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    inputs = write_planted_corpus(root / "in")
    trained = prepare(PrepareConfig(inputs=[str(inputs)], out=root / "trained", vocab_size=1024,
                                    progress=False))
    one = prepare(PrepareConfig(inputs=[str(inputs)], out=root / "one", val_fraction=0.1,
                                tokenizer=root / "trained" / "tokenizer.json", progress=False))
    removed = one.manifest["removed"]
    assert removed["exact_dup"] > 10 and removed["near_dup"] > 10 and removed["word_count"] > 0
    return root, ["--input", str(inputs), "--tokenizer", str(root / "trained" / "tokenizer.json"),
                  "--val-fraction", "0.1", "--no-progress"]


def test_three_local_tasks_equal_one_process(corpus, capsys):
    root, args = corpus
    assert main(["data", "prepare", *args, "--out", str(root / "three"), "--tasks", "3",
                 "--workers", "2"]) == 0
    assert same_tree(root / "one", root / "three") == []
    assert not (root / ".three.work").exists()


def test_stage_tasks_equal_one_process(corpus, capsys):
    root, args = corpus
    common = [*args, "--out", str(root / "staged"), "--tasks", "2"]
    for stage in ("scan", "dedup"):
        for task in (1, 0):
            assert main(["data", "prepare", *common, "--stage", stage, "--task", str(task)]) == 0
    assert main(["data", "prepare", *common, "--stage", "finish"]) == 0
    assert same_tree(root / "one", root / "staged") == []
    assert "stage finish task 0 of 2" in capsys.readouterr().out


def test_tasks_need_a_tokenizer_and_finished_scans(corpus, capsys):
    root, args = corpus
    assert main(["data", "prepare", "--input", args[1], "--out", str(root / "x"), "--tasks",
                 "2"]) == 2
    assert "--tasks needs --tokenizer" in capsys.readouterr().err
    common = [*args, "--out", str(root / "y"), "--tasks", "2"]
    assert main(["data", "prepare", *common, "--stage", "scan", "--task", "0"]) == 0
    assert main(["data", "prepare", *common, "--stage", "dedup", "--task", "0"]) == 2
    assert "every scan task must have finished" in capsys.readouterr().err
