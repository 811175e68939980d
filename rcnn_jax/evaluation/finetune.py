"""Fine-tuning a trained model on a few real labelled sequences (the published version's
protocol; the library behind ``python -m rcnn_jax.finetune``).

    python -m rcnn_jax.finetune --workdir W --real DIR [DIR...] --out W2 [--set KEY=VALUE ...]
    python -m rcnn_jax.finetune --workdir W --real DIR [DIR...] --out DIR --kfold

Uses the first ``finetune.per_class`` files of each class (sorted; the published protocol: 10
real examples per class) and continues from W's best checkpoint (the latest when none is best;
W may be a shipped ``pretrained/`` folder) for ``finetune.num_steps``
Adam steps (``finetune.learning_rate``) on batches of ``finetune.batch_size`` sequences, a
``finetune.real_fraction`` share drawn from the real sequences (with replacement, each with a
random symmetry of the square when ``finetune.augment``) and the rest simulated as in training,
so the classes with no real example are not forgotten. With ``finetune.frozen_batch_norm``
(the default since 2026-12-05) the model runs in inference mode while it is fine-tuned: the
base's batch-norm statistics, unchanged, and no dropout; the common practice for fine-tuning on
a few examples (e.g. Keras's transfer-learning guide: batch statistics of small, shifted batches
move the running averages the model is evaluated with). Measured on the long_v8 base: with batch
statistics, 27 of the 40 development non-variables became Cepheids (experiments/hits2015_rcnn/).
The real sequences are prepared as
``evaluate --real`` prepares them (``preprocess.prepare``; transients from their detection).
``--set finetune.num_steps=40`` (repeatable) changes the ``finetune`` section.

W2 is a normal workdir (config.json with the ``finetune`` section and the base workdir,
checkpoints/ at the final step) that ``evaluate``, ``predict`` and the streaming API
read; ``finetune.json`` records the files used and the losses.

``--kfold`` runs the development protocol instead: ``finetune.per_class`` files per class (the
first in sorted order), split into ``finetune.folds`` class-stratified folds; each fold's model
is fine-tuned on the other folds and tests its own, so every file is tested by a model that
never saw it. Writes ``kfold.json`` to ``--out`` with recall per class at step 20 before
(the base model) and after fine-tuning, and per file. One compiled step serves all folds.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from rcnn_jax.core import errors
from rcnn_jax.core import outputs
from rcnn_jax.core import utils
from rcnn_jax.evaluation import metrics as metrics_lib
from rcnn_jax.evaluation import real as real_eval
from rcnn_jax.serving import loading
from rcnn_jax.sim import bands
from rcnn_jax.sim import simulator as sim_lib
from rcnn_jax.training import checkpoints
from rcnn_jax.training import steps as steps_lib

DEFAULTS = dict(num_steps=150, batch_size=32, real_fraction=0.5, learning_rate=1e-4,
                augment=True, folds=5, per_class=10, frozen_batch_norm=True)


def finetune_config(config, overrides=()):
  """The config with a complete ``finetune`` section (defaults for older workdirs) and overrides."""
  config = ml_collections.ConfigDict(config.to_dict())
  ft = dict(DEFAULTS)
  ft.update((config.get('finetune', None) or {}))
  for item in overrides:
    if '=' not in item:
      raise utils.UserError(f'--set {item!r}: expected finetune.KEY=VALUE')
    key, value = item.split('=', 1)
    key = key.removeprefix('finetune.')
    if key not in DEFAULTS:
      raise utils.UserError(f'--set {item!r}: unknown finetune field (have: {", ".join(DEFAULTS)})')
    ft[key] = type(DEFAULTS[key])(json.loads(value.lower()) if isinstance(DEFAULTS[key], bool)
                                  else value)
  config.finetune = ml_collections.ConfigDict(ft)
  if not 0.0 < ft['real_fraction'] <= 1.0:
    raise utils.UserError('finetune.real_fraction must be in (0, 1]')
  return config


def split_batch(config) -> tuple[int, int]:
  """(real, simulated) sequences per fine-tuning batch."""
  b = int(config.finetune.batch_size)
  n_real = max(1, min(b, int(round(b * float(config.finetune.real_fraction)))))
  return n_real, b - n_real


def real_training_arrays(config, sim, seqs, labels):
  """Model inputs [R, ...] of real sequences (features for the light-curve classifier)."""
  batch = real_eval.real_inputs(seqs, labels, config)
  x = batch['images']
  if config.model.kind == 'lc':
    seeing = batch['seeing_arcsec'].copy()
    for row in seeing:
      row[~np.isfinite(row)] = np.nanmedian(row)
    feats = {k: jnp.asarray(batch[k]) for k in ('raw_adu', 'sky_adu', 'zero_point',
                                                'zero_point_ref', 'epoch_valid', 'gain',
                                                'read_noise_e')}
    feats['seeing_arcsec'] = jnp.asarray(seeing)
    x = np.asarray(steps_lib.model_inputs(feats, sim, 'lc'))
  return {'x': x, 'time_gaps': batch['time_gaps'], 'mask': batch['mask'],
          'label': batch['label']}


def make_mixed_train_step(config, sim, model, tx, mesh):
  """Jitted (state, key, real arrays) -> (state, metrics): real and simulated sequences in one
  batch. The real arrays are arguments, so the step compiles once for all folds of one size."""
  n_real, n_sim = split_batch(config)
  simulate = steps_lib.make_simulate_fn(sim, mesh) if n_sim else None
  data = NamedSharding(mesh, P('data'))
  augment = bool(config.finetune.augment) and config.model.kind == 'rcnn'
  frozen_bn = bool(config.finetune.frozen_batch_norm)

  def step_fn(state, root_key, real):
    k_sim, k_drop, k_pick, k_rot = jax.random.split(jax.random.fold_in(root_key, state.step), 4)
    pick = jax.random.randint(k_pick, (n_real,), 0, real['label'].shape[0])
    x_r = real['x'][pick]
    if augment:  # [B, T, H, W, n_w]: one symmetry of the square per sequence
      rot = jax.random.randint(k_rot, (n_real,), 0, 8)
      x_r = jnp.moveaxis(jax.vmap(sim_lib._dihedral)(jnp.moveaxis(x_r, -1, 2), rot), 2, -1)  # pylint: disable=protected-access
    parts = [(x_r, real['time_gaps'][pick], real['mask'][pick], real['label'][pick])]
    if n_sim:
      index = jax.lax.with_sharding_constraint(jnp.arange(n_sim, dtype=jnp.int32), data)
      batch = simulate(k_sim, index)
      parts.append((steps_lib.model_inputs(batch, sim, config.model.kind), batch['time_gaps'],
                    batch['mask'], batch['label']))
    x, gaps, mask, labels = (jnp.concatenate([p[i] for p in parts]) for i in range(4))
    is_real = jnp.arange(x.shape[0]) < n_real
    maskf = mask.astype(jnp.float32)

    def loss_fn(params):
      variables = {'params': params, 'batch_stats': state.batch_stats}
      if frozen_bn:  # the model in inference mode: the base's statistics, no dropout
        logits = model.apply(variables, x, gaps, mask, train=False)
        return steps_lib.sequence_loss(logits, labels, maskf), (logits, {})
      logits, updates = model.apply(variables, x, gaps, mask, train=True,
                                    rngs={'dropout': k_drop}, mutable=['batch_stats'])
      return steps_lib.sequence_loss(logits, labels, maskf), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    upd, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, upd)
    ok = jnp.argmax(steps_lib.last_valid(logits, maskf), -1) == labels
    metrics = {'loss': loss, 'real_accuracy': jnp.sum(ok * is_real) / n_real,
               'grad_norm': optax.tree.norm(grads)}
    return steps_lib.TrainState(step=state.step + 1, params=params,
                            batch_stats=updates.get('batch_stats', state.batch_stats),
                            opt_state=opt_state), metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(step_fn, out_shardings=(replicated, replicated))


def _restore(workdir, config):
  """(sim, model, tx, state) of a workdir's best (else latest) checkpoint, with a fresh Adam
  at ``finetune.learning_rate``."""
  _, sim, model, state, step = loading.load(workdir)
  lr = float(config.finetune.learning_rate)
  # A fixed rate; as a schedule when the base trained with one, so that the saved optimizer
  # state has the structure the base config builds and the fine-tuned workdir restores.
  scheduled = str(config.train.get('schedule', 'constant')) != 'constant'
  tx = optax.adam(optax.constant_schedule(lr) if scheduled else lr)
  state = steps_lib.TrainState(step=state.step, params=state.params, batch_stats=state.batch_stats,
                           opt_state=tx.init(state.params))
  # Placed as the step returns it, so the second step does not compile again.
  state = jax.device_put(state, NamedSharding(steps_lib.make_mesh(), P()))
  return sim, model, tx, state, int(step)


def _run_steps(step_fn, state, config, real, progress=True):
  root = jax.random.fold_in(jax.random.key(config.seed), 0x66696E65)  # 'fine'
  real = jax.tree.map(jnp.asarray, real)
  losses = []
  for _ in utils.progress(range(int(config.finetune.num_steps)),
                          total=int(config.finetune.num_steps), desc='finetune',
                          disable=not progress):
    state, m = step_fn(state, root, real)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not np.isfinite(m['loss']):
      raise errors.Diverged(f'non-finite fine-tuning loss at step {int(state.step)}')
    losses.append(m)
  return state, losses


def finetune(workdir, real_dirs, out, overrides=(), progress=True, errors=None):
  """Fine-tunes ``workdir``'s model on labelled real folders into the new workdir ``out``.

  ``out`` is checked before any work (``outputs.check_new_workdir``: not the base, links
  resolved; not an existing model folder or inside one; empty or new; writable). ``errors``: a
  list that receives one line per input that cannot be read, labelled or prepared (the others
  are used); None raises the first."""
  outputs.check_new_workdir(out, workdir)
  config = finetune_config(checkpoints.load_config(workdir), overrides)
  bands.require_one_band(config, 'finetune (real labelled sequences)')
  seqs, labels = _usable_labelled(real_dirs, config, errors)
  # The published protocol: finetune.per_class examples per class (the first in sorted order).
  keep = np.flatnonzero(stratified_folds(labels, 1, int(config.finetune.per_class)) >= 0)
  seqs, labels = [seqs[i] for i in keep], np.asarray(labels)[keep]
  return _finetune_on(workdir, config, seqs, labels, out, progress)


def _usable_labelled(real_dirs, config, errors):
  """The labelled files that can be read and prepared (``real_eval.load_labelled`` and
  ``real_inputs``), so that one bad file never shifts or cancels the selection of the rest."""
  seqs, labels = real_eval.load_labelled(real_dirs, config, errors)
  if errors is None:
    return seqs, labels
  index = real_eval.real_inputs(seqs, labels, config, errors=errors)['index']
  return [seqs[i] for i in index], np.asarray(labels)[index]


def _finetune_on(workdir, config, seqs, labels, out, progress=True):
  mesh = steps_lib.make_mesh()
  sim, model, tx, state, base_step = _restore(workdir, config)
  real = real_training_arrays(config, sim, seqs, labels)
  step_fn = make_mixed_train_step(config, sim, model, tx, mesh)
  t0 = time.perf_counter()
  state, losses = _run_steps(step_fn, state, config, real, progress)
  _save_workdir(out, config, state, workdir, base_step, seqs, labels, losses,
                time.perf_counter() - t0)
  return state


def _save_workdir(out, config, state, workdir, base_step, seqs, labels, losses, seconds):
  os.makedirs(out, exist_ok=True)
  config = ml_collections.ConfigDict(config.to_dict())
  config.finetune.base_workdir = os.path.abspath(workdir)
  config.finetune.base_step = int(base_step)
  checkpoints.save_config(out, config)
  step = int(state.step)
  checkpoints.save(checkpoints.manager(out, config), step, state)
  names = list(config.sim.class_names)
  utils.write_json(os.path.join(out, 'finetune.json'), {
      'base_workdir': os.path.abspath(workdir), 'base_step': int(base_step), 'step': step,
      'finetune': {k: config.finetune[k] for k in DEFAULTS},
      'files': [{'path': s.path, 'label': names[int(l)]} for s, l in zip(seqs, labels)],
      'loss': [m['loss'] for m in losses],
      'real_accuracy': [m['real_accuracy'] for m in losses], 'seconds': seconds})


def stratified_folds(labels, folds, per_class, seed=0):
  """Fold of each file (-1: unused): the first ``per_class`` of each class, dealt round-robin.

  Deterministic (sorted order, no shuffling, so the folds are reproducible from the file list);
  ``seed`` rotates the deal.
  """
  labels = np.asarray(labels)
  fold = np.full(len(labels), -1)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)[:per_class]
    fold[idx] = (np.arange(len(idx)) + seed) % folds
  return fold


def kfold(workdir, real_dirs, out, overrides=(), progress=True, errors=None):
  """The k-fold protocol (see the module doc); returns and writes ``out/kfold.json``.
  ``errors`` as in ``finetune``."""
  outputs.check_dir(out)
  config = finetune_config(checkpoints.load_config(workdir), overrides)
  bands.require_one_band(config, 'finetune (real labelled sequences)')
  seqs, labels = _usable_labelled(real_dirs, config, errors)
  k, per_class = int(config.finetune.folds), int(config.finetune.per_class)
  fold = stratified_folds(labels, k, per_class)
  mesh = steps_lib.make_mesh()
  sim, model, tx, base, base_step = _restore(workdir, config)
  batch = real_eval.real_inputs(seqs, labels, config)
  steps = min(20, int(config.sim.max_steps))
  last = np.minimum(metrics_lib.last_valid_index(batch['mask']), steps - 1)
  at_step = lambda logits: np.argmax(logits, -1)[np.arange(len(labels)), last]
  before = at_step(real_eval.real_logits(config, sim, model, base, batch, seqs))
  real_all = real_training_arrays(config, sim, seqs, labels)
  step_fn = make_mixed_train_step(config, sim, model, tx, mesh)
  after = np.full(len(labels), -1)
  unused_votes = []
  t0 = time.perf_counter()
  for f in range(k):
    train_idx = np.flatnonzero((fold >= 0) & (fold != f))
    real = {key: v[train_idx] for key, v in real_all.items()}
    state, _ = _run_steps(step_fn, base, config, real, progress)
    pred = at_step(real_eval.real_logits(config, sim, model, state, batch, seqs))
    after[fold == f] = pred[fold == f]
    unused_votes.append(pred[fold < 0])
  names = list(config.sim.class_names)
  test = fold >= 0

  def recall(pred, sel):
    present = [c for c in range(len(names)) if (labels[sel] == c).any()]
    rec = {names[c]: float(np.mean(pred[sel & (labels == c)] == c)) for c in present}
    return {'recall_at_step': rec, 'mean_recall': float(np.mean(list(rec.values())))}

  unused = np.flatnonzero(fold < 0)
  spread = fold_spread(labels, fold, before, after, names)
  res = {
      'workdir': os.path.abspath(workdir), 'base_step': base_step, 'folds': k,
      'per_class': per_class, 'step': steps,
      'finetune': {kk: config.finetune[kk] for kk in DEFAULTS},
      'seconds': time.perf_counter() - t0,
      'before': recall(before, test), 'after': recall(after, test),
      # Each fold's held-out files alone (2 a class with 10 a class and 5 folds): the spread
      # that the pooled recall above hides, and the paired gain per fold.
      'per_fold': spread['per_fold'], 'spread': spread['spread'],
      # Files beyond per_class (e.g. the other 30 non-variables): tested by every fold's model.
      'unused_files': len(unused),
      'unused_before': recall(before, fold < 0) if len(unused) else None,
      'unused_after_per_fold': ([recall(_scatter(v, unused, len(labels)), fold < 0)
                                 for v in unused_votes] if len(unused) else None),
      'files': [{'path': s.path, 'label': names[int(l)], 'fold': int(fo),
                 'before': names[int(b)], 'after': names[int(a)] if a >= 0 else None}
                for s, l, fo, b, a in zip(seqs, labels, fold, before, after)],
  }
  os.makedirs(out, exist_ok=True)
  utils.write_json(os.path.join(out, 'kfold.json'), res)
  return res


def fold_spread(labels, fold, before, after, names) -> dict:
  """Per fold f (its held-out files, ``fold == f``): the mean over the classes present of the
  recall before and after fine-tuning, and their paired difference; then the mean, standard
  deviation (ddof 1), min and max of each over the folds."""
  labels, fold = np.asarray(labels), np.asarray(fold)
  before, after = np.asarray(before), np.asarray(after)

  def mean_recall(pred, sel):
    present = [c for c in range(len(names)) if (labels[sel] == c).any()]
    return float(np.mean([np.mean(pred[sel & (labels == c)] == c) for c in present]))

  per_fold = []
  for f in sorted(int(x) for x in np.unique(fold[fold >= 0])):
    sel = fold == f
    b, a = mean_recall(before, sel), mean_recall(after, sel)
    per_fold.append({'fold': f, 'files': int(sel.sum()), 'before': b, 'after': a,
                     'gain': a - b})

  def stats(key):
    v = np.array([p[key] for p in per_fold])
    return {'mean': float(v.mean()), 'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            'min': float(v.min()), 'max': float(v.max())}

  return {'per_fold': per_fold,
          'spread': {k: stats(k) for k in ('before', 'after', 'gain')} if per_fold else {}}


def _scatter(values, idx, n):
  out = np.full(n, -1)
  out[idx] = values
  return out
