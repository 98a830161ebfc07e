#!/bin/bash
# Generic llmlaunch training job: one task per GPU (per rank on CPU), ranks started by srun.
#
#   sbatch slurm/train.sh                          # the default tiny CPU run (llmlaunch's tiny-cpu.yaml, 4 ranks)
#   sbatch --nodes=16 --ntasks-per-node=8 --gpus-per-node=8 slurm/train.sh runs/gpt3/run.yaml
#   sbatch slurm/train.sh RUN.yaml RUN_DIR train.steps=100 layout.recompute=full
#
# Arguments: [RUN.yaml [RUN_DIR [section.key=value ...]]]. RUN_DIR defaults to the folder of RUN.yaml
# (runs/tiny-cpu for the default run). `llmlaunch plan --emit` writes a job-specific train.sbatch.
# The job is llmlaunch's supervisor (python3 -m llmlaunch.launcher.job, docs/launch.md): data check,
# preflight, srun of the ranks, and the signals: USR1 before the time limit, preemption and
# `scontrol requeue` checkpoint and requeue; `scancel JOB` checkpoints and ends the job.
# Environment: LLMLAUNCH_PREFLIGHT=0 skips the preflight checks; NCCL_* and OMP_NUM_THREADS are
# respected when set.
#SBATCH --job-name=llmlaunch
#SBATCH --nodes=1
#SBATCH --ntasks=4
#SBATCH --time=00:30:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# a stop signal in the tenth of a second before the supervisor holds it is ignored, not fatal
trap '' USR1 TERM
exec python3 -m llmlaunch.launcher.job "$@"
