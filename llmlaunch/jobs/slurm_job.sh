#!/bin/bash
# Where llmlaunch 0.1 kept the Slurm job body: train.sbatch files it emitted exec this path, so a job
# requeued after an upgrade still starts. The body is now the Python supervisor (launcher/job.py).
trap '' USR1 TERM
exec python3 -m llmlaunch.launcher.job "$@"
