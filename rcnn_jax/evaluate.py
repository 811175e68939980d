"""Sec. 4 on simulated data: accuracy and recall against steps, against magnitude, confusion.

    python -m rcnn_jax.evaluate --workdir W [--workdir W2] [--step S] [--out DIR]
        [--tfds PREPARED_DATASET_DIR [--tfds_split SPLIT]]

Restores the best checkpoint of each workdir (or ``--step``), rebuilds simulator and model
from the workdir's config.json, and evaluates on a fixed, seeded, class-balanced simulated test
set (``eval.test_size``; distinct seed from validation). Writes ``metrics.json`` and figures in
the style of the paper's Fig. 5-9 to ``--out`` (default: ``W/eval``); with two workdirs (RCNN
and light-curve classifier) the figures show them side by side. ``--tfds`` evaluates on a
prepared ``hits_sim`` split (default 'test') or ``hits_real`` split (default 'dev') instead
(``evaluate_tfds``).

Sec. 4 on real labelled sequences (the paper's Fig. 8 and 9):

    python -m rcnn_jax.evaluate --workdir W --real DIR [DIR...] [--out DIR]

A DIR is a folder of labelled files, a folder of class folders (``real_labelled_dev``), or
``DIR=Class`` to label every file in it (``realdata.labelled_files``). A file's class is its
``label`` key, else its folder's name when that is exactly a class name (case and punctuation
ignored: ``rr_lyrae`` -> RRLyrae; ``real_nonvariable_dev`` names no class: give
``real_nonvariable_dev=NonVariable``). A folder with files beside class folders is refused, not
guessed. A file that cannot be read, labelled or prepared (too few usable epochs) is one line
on stderr; the others are evaluated and written, and the exit status is 2. ``--out`` is checked
before any work; a shipped model folder needs one (no command writes into it).

Inputs are prepared as in training (``preprocess.prepare``): supernovae and asteroids start
``sim.pre_detection`` epochs before their first detection, the other classes at their first
epoch; sequences stop at ``sim.max_steps`` (20, the paper's "after 20 inputs"). Writes
``metrics_real.json`` (recall per class by step, confusion at step 20 over the classes
present, mean recall over them, counts, which file went where, the refused inputs) and
``real_recall.png`` (Fig. 8; Fig. 9 for the light-curve classifier, which measures optimal
photometry on the real stamps with the file's seeing and the camera's median gain and read
noise, ``preprocess.camera_gain_read_noise``).
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax import checkpoints
from rcnn_jax import common
from rcnn_jax import outputs
from rcnn_jax import plots
from rcnn_jax import preprocess
from rcnn_jax import realdata
from rcnn_jax import utils
from rcnn_jax import workdir as workdir_lib

def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _STEP, _OUT, _REAL, _DETECTION, _TFDS, _TFDS_SPLIT
  _WORKDIR = flags.DEFINE_multi_string('workdir', None,
                                       'Training workdir(s); two for side by side.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by val loss).')
  _OUT = flags.DEFINE_string('out', None, 'Output directory (default: first workdir/eval).')
  _REAL = flags.DEFINE_multi_string('real', None, 'Folders of real labelled sequences '
                                    '(DIR or DIR=Class); evaluates on them instead.')
  _DETECTION = flags.DEFINE_enum('detection_method', None, ['difference', 'photometry'],
                                 "With --real: the transients' first-detection rule (default: "
                                 "the workdir config's config.real.detection_method).")
  _TFDS = flags.DEFINE_string('tfds', None, 'Evaluate on a prepared hits_sim or hits_real '
                              'dataset folder (DATA_DIR/<name>/<config>/<version>) instead.')
  _TFDS_SPLIT = flags.DEFINE_string('tfds_split', None, "With --tfds: the split (default: "
                                    "'test' for hits_sim, 'dev' for hits_real).")


# ----------------------------------------------------------------------------------------------
# Metrics on logits (pure numpy; tested on fixed logits)


def last_valid_index(mask):
  return np.maximum(mask.sum(1) - 1, 0)


def accuracy_by_step(pred, labels, mask):
  """Accuracy after s = 1..T steps over the sequences that have at least s steps."""
  correct = (pred == labels[:, None]) & mask
  n = mask.sum(0)
  return np.where(n > 0, correct.sum(0) / np.maximum(n, 1), np.nan)


def recall_by_step(pred, labels, mask, num_classes):
  """[C, T]: recall of each class after s steps (sequences with >= s steps)."""
  out = np.full((num_classes, mask.shape[1]), np.nan)
  for c in range(num_classes):
    sel = labels == c
    if sel.any():
      out[c] = accuracy_by_step(pred[sel], labels[sel], mask[sel])
  return out


def confusion_at_step(pred, labels, mask, num_classes, step):
  """Row-normalised confusion (rows: true labels) at ``step`` (1-based), or at the last valid
  step for shorter sequences."""
  idx = np.minimum(last_valid_index(mask), step - 1)
  p = pred[np.arange(len(pred)), idx]
  counts = np.zeros((num_classes, num_classes))
  np.add.at(counts, (labels, p), 1)
  rows = counts.sum(1, keepdims=True)
  return np.where(rows > 0, counts / np.maximum(rows, 1), 0.0), counts


def accuracy_by_magnitude(pred, labels, mask, magnitude, edges, steps=(1, 5, 10, 20)):
  """Accuracy in magnitude bins after each of ``steps`` (last valid step if shorter)."""
  edges = np.asarray(edges, float)
  b = np.digitize(magnitude, edges) - 1
  inside = (b >= 0) & (b < len(edges) - 1) & np.isfinite(magnitude)
  out = {'bin_edges': edges.tolist(), 'steps': list(steps), 'accuracy': [], 'count': []}
  counts = np.bincount(b[inside], minlength=len(edges) - 1)
  out['count'] = counts.tolist()
  for s in steps:
    idx = np.minimum(last_valid_index(mask), s - 1)
    ok = pred[np.arange(len(pred)), idx] == labels
    hits = np.bincount(b[inside], weights=ok[inside], minlength=len(edges) - 1)
    out['accuracy'].append(np.where(counts > 0, hits / np.maximum(counts, 1), np.nan).tolist())
  return out


def recall_by_magnitude(pred, labels, mask, magnitude, edges, num_classes, step=20):
  """[C, bins] recall of each class in magnitude bins at ``step`` (last valid step if shorter),
  NaN where a class has no object in a bin; with the counts [C, bins]."""
  edges = np.asarray(edges, float)
  nb = len(edges) - 1
  b = np.digitize(magnitude, edges) - 1
  inside = (b >= 0) & (b < nb) & np.isfinite(magnitude)
  idx = np.minimum(last_valid_index(mask), step - 1)
  ok = pred[np.arange(len(pred)), idx] == labels
  counts = np.zeros((num_classes, nb))
  hits = np.zeros((num_classes, nb))
  np.add.at(counts, (labels[inside], b[inside]), 1)
  np.add.at(hits, (labels[inside], b[inside]), ok[inside])
  recall = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
  return {'bin_edges': edges.tolist(), 'step': int(step), 'recall': recall.tolist(),
          'count': counts.astype(int).tolist()}


def compute_metrics(logits, labels, mask, magnitude, class_names, magnitude_bins,
                    confusion_step=20):
  """All of Sec. 4's simulated-data metrics from per-step logits [N, T, C]."""
  mask = np.asarray(mask, bool)
  pred = np.argmax(logits, -1)
  k = len(class_names)
  conf, counts = confusion_at_step(pred, labels, mask, k, confusion_step)
  rec = recall_by_step(pred, labels, mask, k)
  idx = np.minimum(last_valid_index(mask), confusion_step - 1)
  final = pred[np.arange(len(pred)), idx] == labels
  return {
      'class_names': list(class_names),
      'num_examples': int(len(labels)),
      'accuracy_by_step': _nan_to_none(accuracy_by_step(pred, labels, mask)),
      'sequences_by_step': mask.sum(0).tolist(),
      'recall_by_step': {n: _nan_to_none(rec[c]) for c, n in enumerate(class_names)},
      'confusion_step': confusion_step,
      'confusion': conf.tolist(),
      'confusion_counts': counts.astype(int).tolist(),
      'accuracy_at_confusion_step': float(final.mean()),
      'recall_at_confusion_step': {n: float(conf[c, c]) for c, n in enumerate(class_names)},
      'accuracy_by_magnitude': _nan_to_none(accuracy_by_magnitude(pred, labels, mask,
                                                                  magnitude, magnitude_bins)),
      'recall_by_magnitude': _nan_to_none(dict(
          recall_by_magnitude(pred, labels, mask, magnitude, magnitude_bins, k,
                              confusion_step), class_names=list(class_names))),
  }


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, np.ndarray)):
    return [_nan_to_none(v) for v in np.asarray(x, dtype=object).tolist()] if np.ndim(x) else x
  if isinstance(x, float) and np.isnan(x):
    return None
  return x


# ----------------------------------------------------------------------------------------------
# Running a workdir's model over the test set


def predict_test_set(config, sim, model, state, progress=True):
  """Per-step logits, labels, masks and magnitudes of the seeded test set (padding dropped)."""
  mesh = common.make_mesh()
  eval_step = common.make_eval_step(config, sim, model, mesh, with_logits=True)
  key = common.test_key(config)
  n, eb = config.eval.test_size, config.eval.batch_size
  parts = []
  for off in utils.progress(range(0, n, eb), total=-(-n // eb), desc='evaluate',
                            disable=not progress):
    _, logits, batch = eval_step(state.params, state.batch_stats, key, jnp.int32(off),
                                 jnp.int32(n))
    keep = min(eb, n - off)
    parts.append(jax.device_get({'logits': logits[:keep], 'label': batch['label'][:keep],
                                 'mask': batch['mask'][:keep],
                                 'magnitude': batch['magnitude'][:keep]}))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate_workdir(workdir, step=None, progress=True):
  config, sim, model, state, step = checkpoints.restore_for_eval(workdir, step)
  out = predict_test_set(config, sim, model, state, progress)
  m = compute_metrics(out['logits'], out['label'], out['mask'], out['magnitude'],
                      sim.class_names, config.eval.magnitude_bins,
                      confusion_step=min(20, sim.max_steps))
  m['checkpoint_step'] = int(step)
  m['model'] = config.model.kind
  m['workdir'] = workdir
  return m


def evaluate_tfds(workdir, path, split=None, step=None):
  """Metrics of a workdir's model on a prepared tfds split: ``hits_sim`` (default split 'test';
  its test split is this module's simulated test set) or ``hits_real`` (default 'dev'; real
  sequences through ``predict.Classifier``, magnitudes unknown). ``path`` is the prepared
  folder (DATA_DIR/<name>/<config>/<version>)."""
  from rcnn_jax.datasets import reading  # pylint: disable=g-import-not-at-top
  real = reading.producer(path).endswith('hits_real')
  config = checkpoints.load_config(workdir)
  names = tuple(config.sim.class_names)
  if real:
    from rcnn_jax import predict  # pylint: disable=g-import-not-at-top
    require_real_compatible(workdir, 'evaluate --tfds on a hits_real split')
    seqs, labels, data_names = reading.load_real_split(path, split or 'dev')
    clf = predict.Classifier.from_workdir(workdir, step)
    step = clf.checkpoint_step
    probs = clf.classify(seqs, batch_size=config.eval.batch_size)
    t = max(len(p) for p in probs)
    logits = np.zeros((len(probs), t, len(names)), np.float32)
    mask = np.zeros((len(probs), t), bool)
    for i, p in enumerate(probs):
      logits[i, :len(p)], mask[i, :len(p)] = np.log(np.maximum(p, 1e-30)), True
    magnitude = np.full(len(probs), np.nan)
  else:
    config, sim, model, state, step = checkpoints.restore_for_eval(workdir, step)
    keys = ('images', 'time_gaps', 'mask', 'raw_adu', 'sky_adu', 'seeing_arcsec', 'gain',
            'read_noise_e', 'zero_point', 'zero_point_ref', 'epoch_valid', 'label', 'magnitude')
    eb = int(config.eval.batch_size)
    n, data_names, batches = reading.sim_batches(path, split or 'test', eb, keys)
    _check_classes(path, data_names, names)
    apply = jax.jit(lambda v, b: model.apply(v, common.model_inputs(b, sim, config.model.kind),
                                             b['time_gaps'], b['mask'], train=False))
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    parts = []
    for b in utils.progress(batches, total=-(-n // eb), desc='evaluate'):
      if b['mask'].shape[1] != sim.max_steps or b['images'].shape[2] != sim.stamp_size:
        raise utils.UserError(f'{path}: sequences of {b["mask"].shape[1]} steps of '
                              f'{b["images"].shape[2]}-pixel stamps; the model takes '
                              f'{sim.max_steps} steps of {sim.stamp_size}')
      k = len(b['label'])
      idx = np.minimum(np.arange(eb), k - 1)  # the last batch padded (repeats), then cut
      logits = np.asarray(apply(variables, {key: b[key][idx] for key in keys[:-2]}))[:k]
      parts.append({'logits': logits, 'label': b['label'], 'mask': b['mask'],
                    'magnitude': b['magnitude']})
    logits, labels, mask, magnitude = (np.concatenate([p[key] for p in parts])
                                       for key in ('logits', 'label', 'mask', 'magnitude'))
  _check_classes(path, data_names, names)
  m = compute_metrics(logits, labels, mask, magnitude, names, config.eval.magnitude_bins,
                      confusion_step=min(20, int(config.sim.max_steps)))
  m.update(checkpoint_step=int(step), model=config.model.kind, workdir=workdir,
           data=f'{path}:{split or ("dev" if real else "test")}')
  return m


def _check_classes(path, data_names, names):
  if tuple(data_names) != tuple(names):
    raise utils.UserError(f'{path}: classes {", ".join(data_names)} differ from the model\'s '
                          f'{", ".join(names)}')


def _read_jsonl(path):
  """metrics.jsonl's rows, one per step and metric set; partial lines skipped with a warning."""
  return workdir_lib.read_jsonl(path)


# ----------------------------------------------------------------------------------------------
# Real labelled sequences (Sec. 4, Fig. 8 and 9)


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


def real_metrics(pred, labels, mask, class_names, step=20):
  """Sec. 4's real-data numbers from per-step predictions [N, T] (pure numpy, tested).

  Recall per class by step and at ``step`` (the last valid step of shorter sequences), over the
  classes present; confusion at ``step`` with rows the classes present and columns all classes;
  mean recall over the classes present.
  """
  pred, labels, mask = np.asarray(pred), np.asarray(labels), np.asarray(mask, bool)
  names = list(class_names)
  present = [c for c in range(len(names)) if (labels == c).any()]
  conf, counts = confusion_at_step(pred, labels, mask, len(names), step)
  rec = recall_by_step(pred, labels, mask, len(names))
  at = {names[c]: float(conf[c, c]) for c in present}
  idx = np.minimum(last_valid_index(mask), step - 1)
  return {
      'class_names': names,
      'classes_present': [names[c] for c in present],
      'num_sequences': int(len(labels)),
      'count_per_class': {names[c]: int((labels == c).sum()) for c in present},
      'steps_per_sequence': mask.sum(1).astype(int).tolist(),
      'confusion_step': int(step),
      'recall_by_step': {names[c]: _nan_to_none(rec[c]) for c in present},
      'sequences_by_step': {names[c]: mask[labels == c].sum(0).astype(int).tolist()
                            for c in present},
      'recall_at_step': at,
      'mean_recall': float(np.mean(list(at.values()))),
      'accuracy_at_step': float(np.mean(pred[np.arange(len(pred)), idx] == labels)),
      'confusion_rows': [names[c] for c in present],
      'confusion': conf[present].tolist(),
      'confusion_counts': counts[present].astype(int).tolist(),
  }


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
    x = common.model_inputs(feats, sim, 'lc')
  fn = _APPLY.get(id(model))
  if fn is None:
    fn = _APPLY[id(model)] = jax.jit(lambda v, x, g, m: model.apply(v, x, g, m, train=False))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return np.asarray(fn(variables, jnp.asarray(x), jnp.asarray(batch['time_gaps']),
                       jnp.asarray(batch['mask'])), np.float32)


def require_real_compatible(workdir, what='evaluate --real'):
  """Refuses, before anything is built or compiled, a workdir whose model has several bands."""
  if os.path.isdir(workdir):
    from rcnn_jax import bands  # pylint: disable=g-import-not-at-top
    bands.require_one_band(checkpoints.load_config(workdir), what)


def evaluate_real(workdir, dirs, step=None, stderr=None, detection_method=None, errors=None):
  """metrics_real dict of a workdir's model on labelled real folders (see the module doc).

  ``detection_method``: overrides the config's ``real.detection_method`` (None: keep it).
  ``errors``: a list that receives one line per input that could not be used (the metrics are
  over the others; ``m['refused']`` lists them too)."""
  require_real_compatible(workdir)
  config, sim, model, state, step = checkpoints.restore_for_eval(workdir, step)
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


def main(argv):
  if len(argv) > 1 and not _REAL.value:  # --real A B: the usage line's DIR [DIR...]
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  workdirs = _WORKDIR.value or []
  if not workdirs:
    raise app.UsageError('--workdir is required')
  if len(workdirs) > 2:
    raise app.UsageError('at most two --workdir (RCNN and light-curve classifier)')
  for w in workdirs:
    if not os.path.isdir(w):
      raise utils.UserError(f'{w}: no such workdir')
  out = _OUT.value or default_out(workdirs[0])
  outputs.check_dir(out, allow_eval_of=workdirs[0])
  if _DETECTION.value and not _REAL.value:
    raise app.UsageError('--detection_method needs --real')
  if _REAL.value:
    if len(workdirs) != 1:
      raise app.UsageError('--real takes one --workdir')
    require_real_compatible(workdirs[0])
    return main_real(workdirs[0], _REAL.value + argv[1:], _STEP.value, out, _DETECTION.value)
  if _TFDS.value:
    results = [evaluate_tfds(w, _TFDS.value, _TFDS_SPLIT.value, _STEP.value) for w in workdirs]
  else:
    results = [evaluate_workdir(w, _STEP.value) for w in workdirs]
  os.makedirs(out, exist_ok=True)
  name = lambda m: f'metrics_{m["model"]}.json' if len(results) > 1 else 'metrics.json'
  for m in results:
    utils.write_json(os.path.join(out, name(m)), m)
    print(f'{m["workdir"]} ({m["model"]}, step {m["checkpoint_step"]}): accuracy at step '
          f'{m["confusion_step"]} = {m["accuracy_at_confusion_step"]:.3f} on '
          f'{m["num_examples"]} ' + (m['data'] if 'data' in m else 'simulated test objects'))
  paths = plots.plot_evaluation(results, out)
  runs = [(m['model'], _read_jsonl(os.path.join(w, 'metrics.jsonl')))
          for m, w in zip(results, workdirs)]
  paths.append(plots.plot_learning_curves(runs, os.path.join(out, 'learning_curves.png')))
  print('wrote ' + ', '.join([os.path.join(out, name(m)) for m in results] + paths))


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
