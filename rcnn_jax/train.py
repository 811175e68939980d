"""Sec. 3.4: the training job (the library: ``rcnn_jax/training/loop.py``).

    python -m rcnn_jax.train --config configs/hits.py:cpu [--workdir DIR] [--config.x.y=v]

The default workdir is ``workdirs/<variant>_<model kind>`` (e.g. ``workdirs/cpu_rcnn``); a
rerun resumes from the newest intact checkpoint. Several processes (hosts) train one run with
``jax.distributed`` (docs/distributed.md):

    python -m rcnn_jax.train --config ... --workdir SHARED_DIR \
        --coordinator_address HOST0:PORT --num_processes N --process_id I

(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; under a SLURM job step of
several tasks, nothing: jax.distributed finds them).
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from rcnn_jax.core import utils
from rcnn_jax.training import loop


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the config go '
                                 '(default: workdirs/<variant>_<model kind>).')
  global _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _INIT_TIMEOUT
  _COORDINATOR = flags.DEFINE_string(
      'coordinator_address', None, 'Several processes: host:port of process 0 (env '
      'JAX_COORDINATOR_ADDRESS; found by jax.distributed under SLURM).')
  _NUM_PROCESSES = flags.DEFINE_integer(
      'num_processes', None, 'Several processes: how many (env JAX_NUM_PROCESSES).')
  _PROCESS_ID = flags.DEFINE_integer(
      'process_id', None, 'Several processes: this one\'s index, 0 .. num_processes - 1 (env '
      'JAX_PROCESS_ID).')
  _INIT_TIMEOUT = flags.DEFINE_integer(
      'initialization_timeout', None, 'Several processes: seconds to wait for all of them to '
      'join (and for each other\'s answers) before stopping with an error (env '
      f'JAX_INITIALIZATION_TIMEOUT; default {loop.DEFAULT_TIMEOUT_S}).')
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required (e.g. --config configs/hits.py:cpu)')
  workdir = _WORKDIR.value or loop.default_workdir(config)
  # Joined before anything touches a device (jax.distributed requires it).
  settings = loop.distributed_settings(config, _COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value, _INIT_TIMEOUT.value)
  loop.initialize_distributed(settings, config)
  me, n = loop.process_layout()
  if me == 0:
    where = f'  processes: {n}' if n > 1 else ''
    print(f'workdir: {workdir}  devices: {jax.device_count()} x {jax.default_backend()}{where}')
  final = loop.train_and_evaluate(config, workdir, distributed=settings)
  if me == 0:
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in final.items()}))
if __name__ == '__main__':
  _define_flags()
  utils.run(main)
