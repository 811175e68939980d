"""The light-curve classifier of Sec. 3.3 on HiTS 2015: ``configs/hits.py`` with model.kind='lc'.

    python -m rcnn_jax.train --config configs/hits_lc.py:cpu --workdir workdirs/cpu_lc

Variants as in ``configs/hits.py`` (paper, cpu, long, smoke; ``configs/variants/`` gives each
one's commands and results). The same simulator renders the same stamps; optimal photometry
(Naylor 1998) on them, inside the jitted step, feeds the dense + LSTM head of Table 3's last
three rows. Measured (``docs/results.md``): ``cpu`` simulated test accuracy at step 20 0.582
(5 min of training on a 2-core CPU), ``long`` 0.863 (23 min); chance 0.143.
"""

import pathlib
import sys

try:
  from configs import hits
except ModuleNotFoundError as e:  # loaded by path (--config /path/to/configs/hits_lc.py) elsewhere
  if e.name != 'configs':
    raise
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[1]))
  from configs import hits


def get_config(arg=None):
  parts = [p for p in (arg or 'paper').split(',') if p and p != 'lc']
  return hits.get_config(','.join(parts + ['lc']))
