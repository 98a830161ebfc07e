#!/bin/bash
# The Slurm job body is the Python supervisor, `python3 -m llmlaunch.launcher.job` (launcher/job.py).
# train.sbatch files that `plan --emit` wrote before it find this path (llmlaunch.launcher.emit's
# JOB_BODY) and exec it: it hands over. A stop signal in the tenth of a second before the supervisor
# holds it is ignored rather than fatal (docs/launch.md, "Signals").
trap '' USR1 TERM
exec python3 -m llmlaunch.launcher.job "$@"
