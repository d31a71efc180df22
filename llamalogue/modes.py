"""What `config.mode` runs: mode -> "module:function", each function taking (config, workdir).

main.py and the study orchestrator (study/run.py) dispatch through `run_mode`, so a stage of the
study runs exactly what `python main.py --config=configs/<stage>.py` runs.
"""

import contextlib
import importlib

from llamalogue import config_check, distributed, faults
from llamalogue.errors import ConfigError

MODES = {
    "prepare": "llamalogue.data.prepare:run",
    "pretrain": "llamalogue.train:run",
    "export": "llamalogue.hf:run_export",
    "evaluate": "evaluation.run:run",
    "dpo": "rl.dpo:run",
    "pairs": "rl.pairs:run",
    "ppo": "rl.ppo_run:run",
    "sample": "llamalogue.sampling:run",
    "teacher_replies": "rl.teacher:run_replies",
    "synthetic_pairs": "rl.teacher:run_synthetic_pairs",
    "study": "study.run:run",
}

# Modes whose time is XLA train steps: malloc keeps freed memory for them (llamalogue/runtime.py;
# a few % slower compiles, 6-12% faster steps on CPU). Evaluation is mostly compiles: left alone,
# except inside `study`, one process whose time is mostly its training stages.
TRAINING_MODES = {"pretrain", "dpo", "ppo", "study"}

# Modes that write their workdir hold its lock (llamalogue/faults.py) while they run; `export` replaces
# its workdir as a whole and `sample` only prints.
UNLOCKED_MODES = {"export", "sample"}


def run_mode(config, workdir: str):
  """Checks the common fields and the mode of `config`, joins the job's other processes (`distributed`),
  then runs its mode in `workdir`: holding the workdir's lock (one run per workdir; process 0 holds it for
  the job) and with SIGTERM/SIGINT stopping it cleanly (faults.Preempted)."""
  config_check.validate(config)
  mode = config.get("mode")
  if mode not in MODES:
    raise ConfigError(f"config.mode: unknown mode {mode!r}; choose one of {sorted(MODES)}")
  distributed.initialize(config.get("distributed"))   # before any device is touched; a no-op for one process
  module_name, fn_name = MODES[mode].split(":")
  lock = faults.workdir_lock(workdir, mode) if mode not in UNLOCKED_MODES else contextlib.nullcontext()
  with faults.handling(mode), lock:
    try:
      result = getattr(importlib.import_module(module_name), fn_name)(config, workdir)
    except faults.Preempted as stop:
      if stop.at_a_step:         # every process stops at this agreed step: an end, not a crash
        distributed.finished()
      raise
  distributed.finished()         # the other processes now take this one's exit for the job's end
  return result
