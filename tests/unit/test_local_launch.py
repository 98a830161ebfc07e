"""What `llmlaunch train` says about its ranks (launcher/local.py): the first rank that failed, as
the elastic launcher reports it, and where the ranks stopped, from stopped.json."""
import io
import json

from llmlaunch.launcher.local import LauncherReport, LocalStop, relay_stderr, stop_message

ELASTIC_TAIL = """rank 1: step 3
W1201 06:59:59.000000 1234 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 5 closing signal SIGTERM
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
llmlaunch.launcher.rank FAILED
------------------------------------------------------------
Failures:
[1]:
  rank      : 2 (local_rank: 2)
  exitcode  : 1 (pid: 77)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_06:59:59
  host      : vm
  rank      : 3 (local_rank: 3)
  exitcode  : -9 (pid: 76)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 76
============================================================
"""


def test_relay_drops_the_launchers_noise_and_keeps_its_root_cause():
    out, report = io.StringIO(), LauncherReport()
    relay_stderr(io.StringIO(ELASTIC_TAIL), out, report)
    assert out.getvalue() == "rank 1: step 3\n"
    assert (report.rank, report.exitcode) == (3, -9)
    assert report.describe() == "rank 3 failed first, killed by SIGKILL"
    assert LauncherReport().describe() == ""


def test_stop_messages_say_whether_there_is_a_checkpoint(tmp_path):
    stop = LocalStop()
    (tmp_path / "stopped.json").write_text(json.dumps(
        {"step": 7, "signal": "SIGUSR1", "checkpoint": "step00000007"}))
    assert stop_message(str(tmp_path), stop) == (
        "stopped (SIGUSR1) after step 7, checkpoint step00000007; run the same command again to "
        "resume")
    (tmp_path / "stopped.json").write_text(json.dumps(
        {"step": 0, "signal": "SIGTERM", "checkpoint": None}))
    assert stop_message(str(tmp_path), stop) == (
        "stopped (SIGTERM) before the first step, nothing to checkpoint; run the same command again")
