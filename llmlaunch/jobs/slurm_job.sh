#!/bin/bash
# Where llmlaunch 0.1 kept the Slurm job body: train.sbatch files it emitted exec this path, so a job
# requeued after an upgrade still starts. The body is llmlaunch/launcher's jobs/slurm_job.sh.
exec bash "$(python3 -c 'from llmlaunch.launcher.emit import JOB_BODY; print(JOB_BODY)')" "$@"
