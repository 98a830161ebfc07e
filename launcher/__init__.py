"""Running the model: everything between a run.yaml and training ranks that finish.

  entry.py          what every per-rank process (train, preflight, validate) shares: the rank's
                    environment from srun or torchrun, its arguments, one error line, a clean exit
  engine.py         the DeepSpeed engine of a run (shared by training and validate)
  ds_config.py      the DeepSpeed config, derived from run.yaml
  trainer.py        one rank's training loop: resume, steps, checkpoints, graceful stop
  rank.py           `python -m llmlaunch.launcher.rank`: the training rank srun starts
  metrics.py        metrics.jsonl: the writer and the one reader
  checkpoints/      the checkpoint store: one manifest per tag with every file's checksum, the
                    layout-free state written beside the loop, verified resume, trust and
                    pruning, inspect and convert (checkpoints/__init__.py has its map)
  lr_schedule.py    the learning-rate schedule, and how a resume continues a changed one
  preflight.py      checks of an allocation before the expensive start
  validate.py       measured memory and step time against the planner (memory_probe.py,
                    device_probe.py measure)
  local.py          local launches through torch's elastic launcher
  emit.py           the files `plan --emit` writes; jobs/slurm_job.sh, the Slurm job body
  build_locks.py    stale JIT build locks that would hang DeepSpeed

Importing this package loads neither torch nor DeepSpeed; the modules that need them import them
inside the functions that do.
"""
