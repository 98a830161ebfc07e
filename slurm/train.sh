#!/bin/bash
# Generic llmlaunch training job: one task per GPU (per rank on CPU), ranks started by srun.
#
#   sbatch slurm/train.sh                          # the default tiny CPU run (llmlaunch's tiny-cpu.yaml, 4 ranks)
#   sbatch --nodes=16 --ntasks-per-node=8 --gpus-per-node=8 slurm/train.sh runs/gpt3/run.yaml
#   sbatch slurm/train.sh RUN.yaml RUN_DIR train.steps=100 layout.recompute=full
#
# Arguments: [RUN.yaml [RUN_DIR [section.key=value ...]]]. RUN_DIR defaults to the folder of RUN.yaml
# (runs/tiny-cpu for the default run). `llmlaunch plan --emit` writes a job-specific train.sbatch.
# USR1 before the time limit (and SIGTERM) make the ranks checkpoint at the next step boundary and
# exit; the job then requeues itself and resumes from that checkpoint (launcher/jobs/slurm_job.sh,
# shipped with llmlaunch, is the job body: see it for the details).
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
# a stop signal while python3 finds the body is handed to the body (it starts stopped), not lost
trap 'LLMLAUNCH_EARLY_STOP=USR1' USR1
trap 'LLMLAUNCH_EARLY_STOP=TERM' TERM
JOB="$(python3 -c 'from llmlaunch.launcher.emit import JOB_BODY; print(JOB_BODY)')" || {
  echo "llmlaunch: error: llmlaunch is not installed in this job's python3 (pip install llmlaunch)" >&2; exit 2; }
export LLMLAUNCH_EARLY_STOP="${LLMLAUNCH_EARLY_STOP:-}"
exec bash "$JOB" "$@"
