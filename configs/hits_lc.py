"""The light-curve classifier of Sec. 3.3 on HiTS 2015: ``configs/hits.py`` with model.kind='lc'.

    python -m rcnn_jax.train --config configs/hits_lc.py:cpu

Variants as in ``configs/hits.py`` (paper, cpu, long, smoke). The same simulator renders the same
stamps; optimal photometry (Naylor 1998) on them, inside the jitted step, feeds the dense + LSTM
head of Table 3's last three rows.
"""

from configs import hits


def get_config(arg=None):
  parts = [p for p in (arg or 'paper').split(',') if p and p != 'lc']
  return hits.get_config(','.join(parts + ['lc']))
