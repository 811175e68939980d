"""The variants of every survey config: ``--config configs/<survey>.py:ARG``.

ARG is comma-separated parts: the first of ``paper`` (the default), ``cpu``, ``long``, ``smoke``
picks the variant; ``lc`` anywhere picks the light-curve classifier of Sec. 3.3 (``rcnn``, the
RCNN, is the default); any other part is refused. ``configs/hits_lc.py`` is ``configs/hits.py``
with ``lc`` always on. One file per variant: its docstring gives the commands and what they
gave on this project's machines, its ``apply(config)`` the changes to the ``paper`` values of
``configs/common/``.

These files are not configs themselves: select a variant with the argument above.
"""

from configs.variants import cpu
from configs.variants import long
from configs.variants import paper
from configs.variants import smoke

VARIANTS = ('paper', 'cpu', 'long', 'smoke')
_APPLY = {'paper': paper.apply, 'cpu': cpu.apply, 'long': long.apply, 'smoke': smoke.apply}


def parse(arg):
  """``(variant, kind)`` for a config argument such as 'cpu,lc' (None or '' is 'paper')."""
  parts = [p for p in (arg or 'paper').split(',') if p]
  variant = next((p for p in parts if p in VARIANTS), 'paper')
  kind = 'lc' if 'lc' in parts else 'rcnn'
  unknown = [p for p in parts if p not in VARIANTS + ('lc', 'rcnn')]
  if unknown:
    raise ValueError(f'configs/hits.py: unknown variant {unknown[0]!r}; use '
                     f'{", ".join(VARIANTS)} and optionally lc')
  return variant, kind


def apply(config, variant):
  """Changes ``config`` (the paper's values) in place into ``variant``'s."""
  _APPLY[variant](config)
  return config
