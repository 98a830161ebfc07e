"""What `llmlaunch train` says about its ranks (launcher/local_ranks.py): the first rank that
failed, as the elastic launcher reports it."""
import io

from llmlaunch.launcher.local_ranks import LauncherReport, relay_stderr

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
    out, report, pipe = io.StringIO(), LauncherReport(), io.StringIO(ELASTIC_TAIL)
    relay_stderr(pipe, out, report)
    assert pipe.closed    # read to its end and closed: no unclosed pipe left to the supervisor
    assert out.getvalue() == "rank 1: step 3\n"
    assert (report.rank, report.exitcode) == (3, -9)
    assert report.describe() == "rank 3 failed first, killed by SIGKILL"
    assert LauncherReport().describe() == ""
