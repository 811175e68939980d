"""The variants of every survey config: ``--config configs/<survey>.py:ARG``.

ARG is comma-separated parts: the first of ``paper`` (the default), ``cpu``, ``long``, ``smoke``
picks the variant; ``lc`` anywhere picks the light-curve classifier of Sec. 3.3 (``rcnn``, the
RCNN, is the default); ``wide`` anywhere trains on observing conditions drawn wider than the
survey's table (``wide.py``); any other part is refused. ``configs/hits_lc.py`` is
``configs/hits.py`` with ``lc`` always on. One file per variant: its docstring gives the
commands and what they gave on this project's machines, its ``apply(config)`` the changes to
the ``paper`` values of ``configs/common/``.

These files are not configs themselves: select a variant with the argument above.
"""

from configs.variants import cpu
from configs.variants import long
from configs.variants import paper
from configs.variants import smoke
from configs.variants import wide

VARIANTS = ('paper', 'cpu', 'long', 'smoke')
_APPLY = {'paper': paper.apply, 'cpu': cpu.apply, 'long': long.apply, 'smoke': smoke.apply}


MODIFIERS = {'wide': wide.apply}


def parse(arg):
  """``(variant, kind, modifiers)`` for a config argument such as 'cpu,lc' or 'long,wide'
  (None or '' is 'paper')."""
  parts = [p for p in (arg or 'paper').split(',') if p]
  variant = next((p for p in parts if p in VARIANTS), 'paper')
  kind = 'lc' if 'lc' in parts else 'rcnn'
  unknown = [p for p in parts if p not in VARIANTS + ('lc', 'rcnn') + tuple(MODIFIERS)]
  if unknown:
    raise ValueError(f'configs/hits.py: unknown variant {unknown[0]!r}; use '
                     f'{", ".join(VARIANTS)} and optionally lc, {", ".join(MODIFIERS)}')
  return variant, kind, tuple(p for p in MODIFIERS if p in parts)


def apply(config, variant, modifiers=()):
  """Changes ``config`` (the paper's values) in place into ``variant``'s, then applies the
  modifiers."""
  _APPLY[variant](config)
  for m in modifiers:
    MODIFIERS[m](config)
  return config
