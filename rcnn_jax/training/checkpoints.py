"""A training workdir's checkpoints and saved config.

``W/checkpoints/``: one orbax ``CheckpointManager`` of ``steps.TrainState`` whose preservation
policy keeps the latest ``ckpt.max_to_keep`` and the checkpoint of lowest validation loss (a
validated checkpoint carries its loss as orbax metrics). ``W/config.json``: the resolved
config, from which evaluation and prediction rebuild everything (``restore_for_eval``, into
``jax.eval_shape`` targets). The verified restores and the damaged-checkpoint fallbacks they
use are in ``workdir.py``.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from rcnn_jax.core import utils
from rcnn_jax.training import config_check
from rcnn_jax.training import steps as steps_lib
from rcnn_jax.training import workdir as workdir_lib
from rcnn_jax.training.steps import TrainState

DIR = 'checkpoints'
# Workdirs written before the single manager also hold W/best/ (its own orbax manager, with
# metrics) and W/best.json: read wherever a workdir is restored, never written.
LEGACY_BEST_DIR = 'best'


def _val_loss(metrics):
  return metrics['val_loss']


def _manager_options(config, read_only):
  tracking = dict(best_fn=_val_loss, best_mode='min')
  if read_only:
    return ocp.CheckpointManagerOptions(read_only=True, create=False, **tracking)
  # The latest ckpt.max_to_keep and, whatever its age, the one of lowest validation loss; a
  # checkpoint saved without metrics is kept only while it is among the latest.
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=config.ckpt.max_to_keep),
      ocp.checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1,
                                    keep_checkpoints_without_metrics=False)])
  # Synchronous saves: a failed save (a full disk) stops the run at that step, not later.
  return ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False,
                                      preservation_policy=policy, **tracking)


def manager(workdir, config, read_only=False, legacy_best=False):
  """The orbax manager of W/checkpoints/ (or, ``legacy_best``, of an old workdir's W/best/),
  or None with a one-line warning when its folder cannot be read (a garbled checkpoint's
  metadata fails the manager itself) or, read-only, is absent.

  ``read_only`` (evaluation, prediction) creates nothing and takes no lock.
  """
  path = os.path.abspath(os.path.join(workdir, LEGACY_BEST_DIR if legacy_best else DIR))
  if read_only and not os.path.isdir(path):
    return None
  try:
    with workdir_lib.quiet_orbax():
      return ocp.CheckpointManager(path, options=_manager_options(config, read_only))
  except Exception as e:  # pylint: disable=broad-except
    why = workdir_lib.reason(e)
  if read_only:  # orbax reads every step's metrics on opening: open once more without them
    try:
      with workdir_lib.quiet_orbax():
        m = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, lightweight_initialize=True))
      workdir_lib.warn(f'{path}: the checkpoints\' metrics cannot all be read ({why}); the '
                       'best is chosen among the readable ones')
      return m
    except Exception:  # pylint: disable=broad-except
      pass
  workdir_lib.warn(f'{path} cannot be read ({why})')
  return None


def restore_state(manager_, step, target: TrainState) -> TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager_.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_newest_intact(manager_, target, steps=None):
  """(state, step, damaged steps) from the newest of ``steps`` (default: all) that restores and
  verifies; each damaged one is named on stderr. UserError when none is intact."""
  steps = manager_.all_steps() if steps is None else steps
  return workdir_lib.restore_newest_intact(lambda s: restore_state(manager_, s, target),
                                           str(manager_.directory), steps)


def validated(manager_):
  """[(validation loss, step)] of a manager's checkpoints saved with metrics, lowest first."""
  if manager_ is None:
    return []
  out = []
  for s in manager_.all_steps():
    try:
      m = manager_.metrics(s)
    except Exception:  # pylint: disable=broad-except  (garbled metrics: not validated)
      continue
    if isinstance(m, dict) and isinstance(m.get('val_loss'), (int, float)):
      out.append((float(m['val_loss']), s))
  return sorted(out)


def best_candidates(workdir, config, latest):
  """The validated checkpoints of a workdir, best (lowest validation loss) first, as
  [(val_loss, step, manager)]: those of ``latest`` (W/checkpoints/) and of a legacy W/best/."""
  with workdir_lib.quiet_orbax():
    out = [(v, s, latest) for v, s in validated(latest)]
    if os.path.isdir(os.path.join(workdir, LEGACY_BEST_DIR)):
      legacy = manager(workdir, config, read_only=True, legacy_best=True)
      out += [(v, s, legacy) for v, s in validated(legacy)]
  return sorted(out, key=lambda c: (c[0], c[2] is not latest, -c[1]))


# Fields that may differ when a run is resumed (length of the run, logging cadence, processes).
_RESUMABLE = ('train.num_steps', 'train.log_every', 'train.eval_every', 'ckpt.every',
              'ckpt.max_to_keep', 'train.distributed')  # the layout: the same numbers
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


def save_config(workdir, config, write=True):
  """Writes config.json (unless ``write`` is False: the processes of a run other than 0 only
  check); refuses to mix a different configuration into an existing run."""
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
  if write:
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



def save(manager_, step, state, val_loss=None):
  """A synchronous save, with the step's validation loss when it was validated (the manager
  keeps the lowest); a step already there (a resumed run redoing it) is kept, not re-saved.

  orbax's writer threads log each failed array with its traceback before the save raises; the
  save's own exception is reported once (in one line for a full disk), so they stay quiet.
  """
  if step in manager_.all_steps():
    return
  metrics = None if val_loss is None else {'val_loss': float(val_loss)}
  with workdir_lib.quiet_orbax():
    manager_.save(step, args=ocp.args.StandardSave(state), metrics=metrics)
    manager_.wait_until_finished()


def restore_for_eval(workdir, step=None):
  """(config, sim, model, state, step) from a training workdir: its best checkpoint (lowest
  validation loss) unless ``step``. ``serving.loading.load`` takes a shipped folder too.

  Reads only (no lock, nothing created). Each restored checkpoint is verified; a damaged best
  falls back to the next best, then to the newest intact checkpoint, each fallback named in
  one line on stderr. A workdir of the older layout (W/best/ beside W/checkpoints/) restores
  the same way.
  """
  if not os.path.isdir(workdir):
    raise utils.UserError(f'{workdir}: no such workdir')
  config = load_config(workdir)
  config_check.validate(config, strict=False)
  mesh = steps_lib.make_mesh()
  sim, model, tx = steps_lib.build(config)
  target = jax.eval_shape(lambda: steps_lib.init_state(config, sim, model, tx, mesh))
  latest = manager(workdir, config, read_only=True)
  latest_steps = latest.all_steps() if latest is not None else []
  candidates = best_candidates(workdir, config, latest)
  latest_dir = os.path.join(workdir, DIR)

  def attempt(mgr, s):
    return workdir_lib.try_restore(lambda t: restore_state(mgr, t, target), str(mgr.directory), s)

  def done(state, s):
    return config, sim, model, state, s

  if step is not None:
    sources = ([latest] if step in latest_steps else []) + [
        m for _, s, m in candidates if s == step and m is not latest][:1]
    tried = []
    for mgr in sources:
      state, why = attempt(mgr, step)
      if state is not None:
        if tried:
          workdir_lib.warn(tried[-1] + f'; using step {step} of {mgr.directory}')
        return done(state, step)
      tried.append(why)
    if tried:
      raise utils.UserError(' and '.join(tried))
    have = sorted(set(latest_steps) | {s for _, s, _ in candidates})
    raise utils.UserError(f'{workdir}: no checkpoint at step {step} (have: {have})')

  order = []  # (step, manager): best first; after a legacy best/ step, the same step in latest
  for _, s, m in candidates:
    order += [(s, m)] + ([(s, latest)] if m is not latest and s in latest_steps else [])
  if not order and latest_steps:
    legacy_step = _best_json_step(workdir)  # an older workdir whose best/ cannot be read
    if legacy_step in latest_steps:
      order = [(legacy_step, latest)]
  best_step = order[0][0] if order else None
  for i, (s, mgr) in enumerate(order):
    state, why = attempt(mgr, s)
    if state is not None:
      if i:
        workdir_lib.warn(f'evaluating step {s} of {mgr.directory}' +
                         (f', not the best step {best_step}' if s != best_step else ''))
      return done(state, s)
    if i + 1 < len(order):
      t, m = order[i + 1]
      nxt = (f'; trying step {t} of {m.directory}' if t == s else
             f'; trying the next best, step {t}')
    else:
      nxt = '; trying the newest intact checkpoint'
    workdir_lib.warn(why + nxt)
  tried = {(s, str(m.directory)) for s, m in order}
  rest = [s for s in latest_steps if (s, str(latest.directory)) not in tried]
  if not rest:
    raise utils.UserError(f'{workdir}: no checkpoint to evaluate' if not order else
                          f'{workdir}: no intact checkpoint to evaluate')
  state, s, _ = workdir_lib.restore_newest_intact(
      lambda t: restore_state(latest, t, target), latest_dir, rest)
  if best_step is not None:
    workdir_lib.warn(f'evaluating step {s} of {latest_dir}, not the best step {best_step}')
  return done(state, s)


def _best_json_step(workdir):
  try:
    with open(os.path.join(workdir, 'best.json')) as f:
      return int(json.load(f)['step'])
  except (OSError, ValueError, KeyError, TypeError):
    return None
