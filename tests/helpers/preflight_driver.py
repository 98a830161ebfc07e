"""A preflight rank that stands for host `host{RANK // RANKS_PER_HOST}`: it sets LLMLAUNCH_HOSTNAME
as a container sharing one UTS hostname would, then runs llmlaunch.launcher.preflight with its
arguments (tests/ranks/test_preflight_hosts.py)."""
import os
import sys

per_host = int(os.environ["RANKS_PER_HOST"])
os.environ["LLMLAUNCH_HOSTNAME"] = f"host{int(os.environ['RANK']) // per_host}"

from llmlaunch.launcher.entry import exit_process  # noqa: E402
from llmlaunch.launcher.preflight import main  # noqa: E402

exit_process(main(sys.argv[1:]))
