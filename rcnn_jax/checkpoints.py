"""A training workdir's checkpoints and saved config.

``W/checkpoints/`` (orbax, the latest ``ckpt.max_to_keep``) and ``W/best/`` (the lowest
validation loss; its value also in ``W/best.json``), each an orbax ``CheckpointManager`` of
``common.TrainState``; ``W/config.json`` the resolved config, from which evaluation and
prediction rebuild everything (``restore_for_eval``). The verified restores and the
damaged-checkpoint fallbacks they use are in ``workdir.py``.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from rcnn_jax import common
from rcnn_jax import config_check
from rcnn_jax import utils
from rcnn_jax import workdir as workdir_lib
from rcnn_jax.common import TrainState


DIRS = {'latest': 'checkpoints', 'best': 'best'}


def _manager_options(config, which, read_only):
  if which == 'latest':
    opts = dict(max_to_keep=config.ckpt.max_to_keep)
  else:
    opts = dict(max_to_keep=1, best_fn=lambda m: m['val_loss'], best_mode='min')
  if read_only:
    return ocp.CheckpointManagerOptions(read_only=True, create=False, **opts)
  # Synchronous saves: a failed save (a full disk) stops the run at that step, not later.
  return ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False, **opts)


def checkpoint_managers(workdir, config, read_only=False):
  """orbax managers of W/checkpoints (the latest ckpt.max_to_keep) and W/best (lowest val loss).

  ``read_only`` (evaluation, prediction) creates nothing and takes no lock.
  """
  return tuple(ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, DIRS[w])),
                                     options=_manager_options(config, w, read_only))
               for w in ('latest', 'best'))


def open_manager(workdir, config, which, read_only=False):
  """One manager ('latest' or 'best'), or None with a one-line warning when its folder cannot
  be read (a garbled checkpoint's metadata fails the manager itself) or, read-only, is absent."""
  path = os.path.abspath(os.path.join(workdir, DIRS[which]))
  if read_only and not os.path.isdir(path):
    return None
  try:
    with workdir_lib.quiet_orbax():
      return ocp.CheckpointManager(path, options=_manager_options(config, which, read_only))
  except Exception as e:  # pylint: disable=broad-except
    workdir_lib.warn(f'{path} cannot be read ({workdir_lib.reason(e)})')
    return None


def restore_state(manager, step, target: TrainState) -> TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_newest_intact(manager, target, steps=None):
  """(state, step, damaged steps) from the newest of ``steps`` (default: all) that restores and
  verifies; each damaged one is named on stderr. UserError when none is intact."""
  steps = manager.all_steps() if steps is None else steps
  return workdir_lib.restore_newest_intact(lambda s: restore_state(manager, s, target),
                                           str(manager.directory), steps)


# Fields that may differ when a run is resumed (length of the run, logging cadence).
_RESUMABLE = ('train.num_steps', 'train.log_every', 'train.eval_every', 'ckpt.every',
              'ckpt.max_to_keep')
# Sections that training never reads (real inputs, fine-tuning, dataset export): free to differ.
_NOT_TRAINING = ('real.', 'finetune.', 'dataset.')
# Fields added after runs were saved without them: what their absence meant.
_ABSENT_MEANS = {'train.schedule': 'constant', 'train.warmup_steps': 0,
                 'train.final_lr_fraction': 0.0}


def _config_differences(old: dict, new: dict) -> list[str]:
  """Flattened keys in which a saved config and a new one differ for training."""
  a, b = _flatten(old), _flatten(new)
  for k, v in _ABSENT_MEANS.items():
    a.setdefault(k, v)
    b.setdefault(k, v)
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE
                and not k.startswith(_NOT_TRAINING))


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def save_config(workdir, config):
  """Writes config.json; refuses to mix a different configuration into an existing run."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path) and workdir_lib.has_checkpoint(workdir):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise utils.UserError(f'{path} cannot be read ({e}) although {workdir} holds checkpoints; '
                            'restore it or use another --workdir') from None
    diff = _config_differences(old, new)
    if diff:
      a, b = _flatten(old), _flatten(new)
      raise utils.UserError(
          f'{workdir} holds a run with a different config ({diff[0]}: {a.get(diff[0])!r} there,'
          f' {b.get(diff[0])!r} now); use another --workdir')
  utils.write_json(path, new)


def load_config(workdir):
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise utils.UserError(f'{workdir}: no config.json (not a training workdir)')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise utils.UserError(f'{path} cannot be read ({e})') from None



def save(manager, step, state, **kwargs):
  """A synchronous save; a step already there (a resumed run redoing it) is kept, not re-saved.

  orbax's writer threads log each failed array with its traceback before the save raises; the
  save's own exception is reported once (in one line for a full disk), so they stay quiet.
  """
  if step in manager.all_steps():
    return
  with workdir_lib.quiet_orbax():
    manager.save(step, args=ocp.args.StandardSave(state), **kwargs)
    manager.wait_until_finished()


def restore_for_eval(workdir, step=None):
  """(config, sim, model, state, step) from a workdir: the best checkpoint unless ``step``.

  Reads only (no lock, nothing created). Each restored checkpoint is verified; a damaged best
  falls back to the same step in ``checkpoints/`` where it is there, else to the newest intact
  checkpoint, each fallback named in one line on stderr.
  """
  if not os.path.isdir(workdir):
    raise utils.UserError(f'{workdir}: no such workdir')
  from rcnn_jax import pretrained  # pylint: disable=g-import-not-at-top
  if pretrained.is_pretrained(workdir):  # a shipped model folder (pretrained.py)
    return pretrained.load(workdir, step)
  config = load_config(workdir)
  config_check.validate(config, strict=False)
  mesh = common.make_mesh()
  sim, model, tx = common.build(config)
  target = common.init_state(config, sim, model, tx, mesh)
  latest = open_manager(workdir, config, 'latest', read_only=True)
  best = open_manager(workdir, config, 'best', read_only=True)
  latest_steps = latest.all_steps() if latest is not None else []
  best_steps = best.all_steps() if best is not None else []
  from_latest = lambda s: restore_state(latest, s, target)
  from_best = lambda s: restore_state(best, s, target)
  latest_dir = os.path.join(workdir, DIRS['latest'])
  best_dir = os.path.join(workdir, DIRS['best'])

  def done(state, s):
    return config, sim, model, state, s

  if step is not None:
    tried = []
    for steps, restore, d in ((latest_steps, from_latest, latest_dir),
                              (best_steps, from_best, best_dir)):
      if step in steps:
        state, why = workdir_lib.try_restore(restore, d, step)
        if state is not None:
          if tried:
            workdir_lib.warn(tried[-1] + f'; using step {step} of {d}')
          return done(state, step)
        tried.append(why)
    if tried:
      raise utils.UserError(tried[-1] if len(tried) == 1 else ' and '.join(tried))
    raise utils.UserError(f'{workdir}: no checkpoint at step {step} (have: '
                          f'{sorted(set(latest_steps) | set(best_steps))})')

  best_step = best.best_step() if best is not None else None
  if best_step is None:
    best_step = _best_json_step(workdir)  # best/ unreadable or absent: best.json may name it
  if best_step is not None and best_step in best_steps:
    state, why = workdir_lib.try_restore(from_best, best_dir, best_step)
    if state is not None:
      return done(state, best_step)
    more = ('; using the same step in ' + latest_dir if best_step in latest_steps else
            '; using the newest intact checkpoint in ' + latest_dir)
    workdir_lib.warn(why + more)
  if not latest_steps:
    raise utils.UserError(f'{workdir}: no checkpoint to evaluate' if best_step is None else
                          f'{workdir}: no intact checkpoint to evaluate')
  order = sorted(latest_steps, reverse=True)
  if best_step in latest_steps:  # the best step first, then the newest
    order = [best_step] + [s for s in order if s != best_step]
  state, s, _ = workdir_lib.restore_newest_intact(from_latest, latest_dir, order)
  if s != best_step and best_step is not None:
    workdir_lib.warn(f'evaluating step {s} of {latest_dir}, not the best step {best_step}')
  return done(state, s)


def _best_json_step(workdir):
  try:
    with open(os.path.join(workdir, 'best.json')) as f:
      return int(json.load(f)['step'])
  except (OSError, ValueError, KeyError, TypeError):
    return None
