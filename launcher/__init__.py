"""Running the model: everything between a run.yaml and training ranks that finish.

  job.py            the supervisor of a run: `python -m llmlaunch.launcher.job` (every Slurm job's
                    body) and `launch` (`llmlaunch train|preflight|validate`), one start each
  outcome.py        what a start came to and what follows (exit or requeue): pure decisions
  slurm.py          the Slurm commands the supervisor reads and drives (job record, requeue, srun)
  local_ranks.py    local ranks through torch's elastic launcher, dying with the supervisor
  signals.py        stop signals and stop requests, in the supervisor and in the ranks
  run_lock.py       one owner per run directory (owner.lock, its heartbeat)
  start_log.py      starts.jsonl: each start's first and last step; starts without progress
  elastic.py        the layout of an elastic start for the hosts it got
  hostnet.py        the master address and the interface that reaches it; host_name()
  run_data.py       a run's data: resolved, prepared, checked against the model
  entry.py          what every per-rank process (train, preflight, validate) shares: the rank's
                    environment from srun or torchrun, its arguments, one error line, a clean exit
  rank.py           `python -m llmlaunch.launcher.rank`: the training rank srun starts
  liveness.py       the ranks' heartbeats; who stopped answering when a collective fails
  placement.py      ranks.json: where every rank ran
  engine.py         the DeepSpeed engine of a run (shared by training and validate)
  ds_config.py      the DeepSpeed config, derived from run.yaml
  lr_schedule.py    the learning-rate schedule, and how a resume continues a changed one
  trainer.py        one rank's training loop: resume, steps, checkpoints, graceful stop
  metrics.py        metrics.jsonl's writer (the reader: llmlaunch/metrics_file.py)
  monitors.py       train.monitors beside it: TensorBoard, CSV, W&B (offline unless asked)
  checkpoints/      the checkpoint store: one manifest per tag with every file's checksum, the
                    layout-free state written beside the loop, verified resume, trust and
                    pruning, inspect and convert (checkpoints/__init__.py has its map)
  preflight.py      checks of an allocation before the expensive start
  ops_check.py      DeepSpeed's ops a run loads: prebuilt, buildable, or what this node lacks
  validate.py       measured memory and step time against the planner (memory_probe.py,
                    device_probe.py measure)
  emit.py           the files `plan --emit` writes; jobs/slurm_job.sh, the path older train.sbatch
                    files exec (a shim to the supervisor)
  build_locks.py    stale JIT build locks that would hang DeepSpeed

Importing this package loads neither torch nor DeepSpeed; the modules that need them import them
inside the functions that do.
"""
