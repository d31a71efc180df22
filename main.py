"""llamalogue entry point.

  python main.py --config=configs/<name>.py[:variant] --workdir=DIR [--config.a.b=value ...]

`config.mode` chooses what runs (llamalogue/modes.py: prepare, pretrain, dpo, ppo, evaluate, study, ...).
Exit status:
  0    done
  2    a user-facing failure, printed as one line `error: ...` (a bad config or input, a busy workdir,
       a full disk, no readable checkpoint, a model of the wrong kind)
  143  stopped by SIGTERM, 130 by SIGINT (128 + the signal): one line says where (a training mode saved
       a checkpoint at the step it finished); rerunning the same command resumes
"""

import errno
import os
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from llamalogue.errors import LlamalogueError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and logs.")

def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  from llamalogue import faults, modes

  logging.set_verbosity(logging.WARNING)  # orbax and jax log every step at INFO
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  workdir = _WORKDIR.value
  if config is None:
    _fail("--config is required, e.g. --config=configs/pretrain.py:tiny")
  if not workdir:
    _fail("--workdir is required")
  try:
    if config.get("mode") in modes.TRAINING_MODES:
      from llamalogue import runtime
      runtime.keep_freed_memory()  # before jax runs anything: see llamalogue/runtime.py
    modes.run_mode(config, workdir)
  except LlamalogueError as e:
    _fail(str(e))
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    _fail(f"{e.filename or workdir}: disk full ({e.strerror}); free some space and rerun the same command (it "
          "resumes from the last checkpoint)")
  except faults.Preempted as e:  # SIGTERM / SIGINT (llamalogue/faults.py)
    print(str(e), file=sys.stderr)
    sys.exit(e.status)
  except KeyboardInterrupt:  # a SIGINT before the handlers were installed
    print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
    sys.exit(130)


def _config_arg(argv) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a[len("--config="):]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def run():
  """Parses flags, turning every config problem (missing file, unknown key, wrong type) into one line."""
  config_arg = _config_arg(sys.argv)
  if config_arg is not None:
    path = config_arg.split(":")[0]
    if not os.path.isfile(path):
      _fail(f"--config: no such config file: {path}")
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:
    text = str(e)
    if "Error whilst parsing config file" in text:  # the config's own error, e.g. an unknown :variant
      lines = [l for l in text.splitlines() if l.strip()]
      _fail(f"--config={config_arg}: {lines[-1].split(': ', 1)[-1] if ': ' in lines[-1] else lines[-1]}")
    _fail(text.splitlines()[0] if text else repr(e))
  except (KeyError, AttributeError) as e:
    inner = e.args[0] if e.args else e
    text = str(inner.args[0]) if isinstance(inner, BaseException) and inner.args else str(inner)
    key, _, hint = text.partition("\n")
    key = key.strip("\"' ")
    bad = [a.split("=")[0] for a in sys.argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    where = bad[0] if bad else "a --config override"
    _fail(f"{where}: unknown config key {key!r}" + (f"; {hint.strip()}" if hint.strip() else ""))
  except LlamalogueError as e:  # the config file's own check, e.g. an unknown :variant (configs/base.py variant)
    _fail(str(e))
  except (TypeError, ValueError) as e:
    _fail(f"bad --config override: {str(e).strip().splitlines()[0] if str(e) else repr(e)}")
  app.run(main, argv=argv, flags_parser=lambda a: a)


if __name__ == "__main__":
  run()
