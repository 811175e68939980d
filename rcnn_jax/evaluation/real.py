"""Sec. 4 on real labelled sequences (the paper's Fig. 8 and 9): labelled files read and
prepared as in training (``inputs.preprocess``), the model's logits at every step, recall per
class by step and the confusion at step 20.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core import outputs
from rcnn_jax.core import plots
from rcnn_jax.core import utils
from rcnn_jax.evaluation.metrics import last_valid_index
from rcnn_jax.evaluation.metrics import real_metrics
from rcnn_jax.inputs import preprocess
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import loading
from rcnn_jax.sim import bands
from rcnn_jax.training import checkpoints
from rcnn_jax.training import steps as steps_lib


def load_labelled(dirs, config, errors=None):
  """(sequences, labels [N]) of labelled real files (``realdata.labelled_files``: a file's
  ``label`` key, else ``DIR=Class``, else its folder's exact class name).

  ``errors``: None raises the first problem (BadInput); a list receives one line per file or
  argument that cannot be used, and the others are returned.
  """
  names = [str(c) for c in config.sim.class_names]
  pairs, problems = realdata.labelled_files(dirs, names)
  seqs, labels = [], []

  def problem(e):
    if errors is None:
      raise e
    errors.append(str(e))

  for e in problems:
    problem(e)
  for path, folder_class in pairs:
    try:
      seq = realdata.load_sequence(path, int(config.sim.stamp_size), int(config.sim.n_w))
      cls = seq.label or folder_class
      if cls is None:
        raise realdata.BadInput(path, "no 'label' key and its folder's name is no class name "
                                f'({", ".join(names)}); use DIR=Class')
      if cls not in names:
        raise realdata.BadInput(path, f'label {cls!r} is not a class of this model '
                                f'({", ".join(names)})')
    except realdata.BadInput as e:
      problem(e)
      continue
    seqs.append(seq)
    labels.append(names.index(cls))
  if not seqs:
    raise utils.UserError('no labelled real sequences found' + (
        f' ({len(errors)} inputs refused)' if errors else ''))
  return seqs, np.asarray(labels, np.int32)


def real_inputs(seqs, labels, config, warn=None, errors=None):
  """Prepared inputs of labelled real sequences, stacked: dict of [N, ...] arrays (numpy).

  ``errors``: None raises a file's preparation problem; a list receives one line per file that
  cannot be prepared (too few usable epochs, say), which is left out: ``index`` gives the rows'
  positions in ``seqs``.
  """
  rules = preprocess.Rules.from_config(config)
  names = [str(c) for c in config.sim.class_names]
  preps, index = [], []
  for i, (s, l) in enumerate(zip(seqs, labels)):
    try:
      preps.append(preprocess.prepare(s, rules, start=preprocess.start_for_class(names[l], rules),
                                      warn=warn))
      index.append(i)
    except utils.UserError as e:
      if errors is None:
        raise
      errors.append(str(e))
  if not preps:
    raise utils.UserError('no labelled real sequence could be prepared')
  keys = ('images', 'time_gaps', 'mask', 'raw_adu', 'sky_adu', 'zero_point', 'zero_point_ref',
          'seeing_arcsec', 'epoch_valid')
  out = {k: np.stack([p[k] for p in preps]) for k in keys}
  out['start'] = np.array([p['start'] for p in preps])
  gain, rn = rules.gain, rules.read_noise_e
  out['gain'] = np.full(len(preps), gain, np.float32)
  out['read_noise_e'] = np.full(len(preps), rn, np.float32)
  out['label'] = np.asarray(labels, np.int32)[index]
  out['index'] = np.asarray(index, np.int64)
  return out


_APPLY = {}  # id(model) -> jitted eval-mode apply (one compile per model and input shape)


def real_logits(config, sim, model, state, batch, seqs=None):
  """[N, T, C] logits of prepared real inputs, for either model kind.

  The light-curve classifier's photometry needs every epoch's seeing; NaN (unknown) seeing takes
  the file's median of the window.
  """
  x = batch['images']
  if config.model.kind == 'lc':
    seeing = batch['seeing_arcsec'].copy()
    for i, row in enumerate(seeing):
      if not np.isfinite(row).any():
        name = seqs[i].name if seqs is not None else str(i)
        raise utils.UserError(f'{name}: no seeing, which the light-curve classifier\'s optimal '
                              'photometry needs (PSF width per epoch)')
      row[~np.isfinite(row)] = np.nanmedian(row)
    feats = {k: jnp.asarray(batch[k]) for k in ('raw_adu', 'sky_adu', 'zero_point',
                                                'zero_point_ref', 'epoch_valid', 'gain',
                                                'read_noise_e')}
    feats['seeing_arcsec'] = jnp.asarray(seeing)
    x = steps_lib.model_inputs(feats, sim, 'lc')
  fn = _APPLY.get(id(model))
  if fn is None:
    fn = _APPLY[id(model)] = jax.jit(lambda v, x, g, m: model.apply(v, x, g, m, train=False))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return np.asarray(fn(variables, jnp.asarray(x), jnp.asarray(batch['time_gaps']),
                       jnp.asarray(batch['mask'])), np.float32)


def require_real_compatible(workdir, what='evaluate --real'):
  """Refuses, before anything is built or compiled, a workdir whose model has several bands."""
  if os.path.isdir(workdir):
    bands.require_one_band(checkpoints.load_config(workdir), what)


def evaluate_real(workdir, dirs, step=None, stderr=None, detection_method=None, errors=None):
  """metrics_real dict of a workdir's model on labelled real folders (see the module doc).

  ``detection_method``: overrides the config's ``real.detection_method`` (None: keep it).
  ``errors``: a list that receives one line per input that could not be used (the metrics are
  over the others; ``m['refused']`` lists them too)."""
  require_real_compatible(workdir)
  config, sim, model, state, step = loading.load(workdir, step)
  if detection_method is not None:
    config.real.detection_method = detection_method
  if errors is None:
    errors = []
  seqs, labels = load_labelled(dirs, config, errors)
  batch = real_inputs(seqs, labels, config, preprocess.Warnings(stderr), errors)
  seqs = [seqs[i] for i in batch['index']]
  labels = batch['label']
  logits = real_logits(config, sim, model, state, batch, seqs)
  pred = np.argmax(logits, -1)
  m = real_metrics(pred, labels, batch['mask'], sim.class_names,
                   step=min(20, int(config.sim.max_steps)))
  idx = np.minimum(last_valid_index(batch['mask']), m['confusion_step'] - 1)
  names = list(sim.class_names)
  m['files'] = [{'path': s.path, 'label': names[l], 'start_epoch': int(st),
                 'steps': int(n), 'predicted': names[int(p[i])]}
                for s, l, st, n, p, i in zip(seqs, labels, batch['start'],
                                             batch['mask'].sum(1), pred, idx)]
  m['checkpoint_step'] = int(step)
  m['model'] = config.model.kind
  m['workdir'] = workdir
  m['detection_method'] = preprocess.Rules.from_config(config).detection_method
  m['refused'] = list(errors)
  return m


def main_real(workdir, dirs, step, out, detection_method=None, stderr=None) -> int:
  """``--real``: writes metrics_real.json and the Fig. 8 (9) figure to ``out``; returns the exit
  status (2 when an input was refused, after writing the others' results)."""
  stderr = stderr or sys.stderr
  errors = []
  m = evaluate_real(workdir, dirs, step, stderr=stderr, detection_method=detection_method,
                    errors=errors)
  for e in errors:
    print(f'error: {e}', file=stderr)
  os.makedirs(out, exist_ok=True)
  utils.write_json(os.path.join(out, 'metrics_real.json'), m)
  fig = plots.plot_real_recall(m, os.path.join(out, 'real_recall.png'))
  rec = ', '.join(f'{k} {v:.2f}' for k, v in m['recall_at_step'].items())
  print(f'{workdir} ({m["model"]}, step {m["checkpoint_step"]}) on {m["num_sequences"]} real '
        f'sequences: recall at step {m["confusion_step"]}: {rec}; mean {m["mean_recall"]:.3f}'
        + (f'; {len(errors)} inputs refused' if errors else ''))
  print(f'wrote {os.path.join(out, "metrics_real.json")}, {fig}')
  return 2 if errors else 0


def default_out(workdir) -> str:
  """``--out``'s default: the training workdir's own ``eval/``; a shipped model folder is never
  written into, so it needs an explicit ``--out``."""
  if outputs.is_shipped(workdir):
    raise utils.UserError(f'{workdir} is a shipped model folder, which no command writes into: '
                          'give --out DIR for the results')
  return os.path.join(workdir, 'eval')
