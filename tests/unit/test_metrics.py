"""metrics.jsonl's one reader (launcher/metrics.py), shared by the trainer's resume and `report`."""
import json

import pytest

from llmlaunch.launcher.metrics import MetricsLog, read_metrics


def test_torn_last_line_is_skipped_anything_else_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(path)
    path.write_text('{"step": 1}\n[3]\n')
    with pytest.raises(ValueError, match="line 2 is not an object with a 'step' key"):
        read_metrics(path)


def test_metrics_resume_drops_only_lost_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = "".join(json.dumps({"step": s, "loss": 10 - s}) + "\n" for s in range(1, 8))
    path.write_text(lines + '{"step": 8, "lo')  # a crash tore the last line
    log = MetricsLog(path, resume_step=5)
    log.write({"step": 6, "loss": 4.5})
    log.close()
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
