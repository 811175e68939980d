"""Blocks shared by every survey config (``configs/hits.py``, ``hits_lc.py``, ``lsst.py``,
``ztf.py``); a survey config adds its own ``config.survey`` and survey-specific changes.

* ``simulator.py``: the simulator's priors (``config.sim``) with their sources, and
  ``CLASS_NAMES``, the one definition of the classes;
* ``model.py``: ``config.model`` (Table 3);
* ``training.py``: ``config.train``, ``eval``, ``real``, ``finetune``, ``dataset``, ``ckpt``
  (Sec. 3.4's values);
* ``surveys.py``: survey-condition helpers for several-band surveys: per-band conditions, the
  cadence block, colours, and the simulator's changes for a survey other than HiTS;
* ``configs/variants/``: the ``paper``, ``cpu``, ``long`` and ``smoke`` changes.

``build(arg, survey)`` assembles them: the config of ``configs/hits.py:ARG`` with ``survey`` as
``config.survey``.
"""

import ml_collections

from configs import variants
from configs.common.model import model_block
from configs.common.simulator import CLASS_NAMES
from configs.common.simulator import sim_block
from configs.common.surveys import UGRIZY
from configs.common.surveys import adapt_sim
from configs.common.surveys import band_conditions
from configs.common.surveys import cadence
from configs.common.surveys import colours
from configs.common.training import ckpt_block
from configs.common.training import dataset_block
from configs.common.training import eval_block
from configs.common.training import finetune_block
from configs.common.training import real_block
from configs.common.training import train_block

VARIANTS = variants.VARIANTS

__all__ = ['CLASS_NAMES', 'UGRIZY', 'VARIANTS', 'adapt_sim', 'band_conditions', 'build',
           'cadence', 'ckpt_block', 'colours', 'dataset_block', 'eval_block', 'finetune_block',
           'model_block', 'real_block', 'sim_block', 'train_block']


def build(arg, survey):
  """The config for ``arg`` ('paper' by default, 'cpu', 'long', 'smoke', plus ',lc'; see
  ``configs/variants/``) with ``survey`` as ``config.survey``."""
  variant, kind, modifiers = variants.parse(arg)
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.seed = 0
  config.survey = survey
  config.sim = sim_block()
  config.model = model_block(kind)
  config.train = train_block()
  config.eval = eval_block()
  config.real = real_block()
  config.finetune = finetune_block()
  config.dataset = dataset_block()
  config.ckpt = ckpt_block()
  return variants.apply(config, variant, modifiers)
