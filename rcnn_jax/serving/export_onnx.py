"""The classifier's streaming step as one ONNX graph (``python -m rcnn_jax.export --format
onnx``), for brokers that run onnxruntime (Python, C++, Java; Spark) instead of JAX.

The graph is the model part of ``Classifier.update`` (``stream.py``): for a batch of objects,
(images [B, n_w, S, S] the step's eq. 4 images oldest first, time_gaps [B, n_w] days since the
object's first kept image, bands [B, n_w] int32 band indices (models of several bands only),
mask [B] bool, c, h [B, H] the LSTM carry) -> (probs [B, C], c_out, h_out [B, H]), the carry
unchanged where mask is False. What comes before (the plausibility rules, the seeing cut, the
sky, eq. 4, the window of the last n_w - 1 images, the time order) is the loader's, in numpy
(``onnx_stream.py``; the standalone ``examples/broker_onnx.py`` does the same), as the
manifest's ``preprocessing`` says.

The step is written here as plain ``jax.numpy`` of the trained parameters (the network of
``models.networks.RCNN`` in evaluation mode, NCHW), converted by ``jax2onnx`` (an optional
extra: ``pip install -e '.[onnx]'``). Each batch norm after a convolution is folded into that
convolution's kernel and bias (exact up to float32 rounding); the input batch norm is not (its
zero padding comes after it); the fully connected layer's rows are permuted once from the
flax model's NHWC flattening to NCHW's. Tested equal to ``Classifier.update`` step by step in
``tests/test_onnx.py``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.inputs import plausibility
from rcnn_jax.serving import export as export_lib
from rcnn_jax.serving import exported as exported_lib

FORMAT = 'rcnn_jax.streaming_step_onnx'
FORMAT_VERSION = 1
ARTIFACT = 'step.onnx'
MANIFEST = exported_lib.MANIFEST
OPSET = 18
BN_EPSILON = 1e-3  # models.layers.MaskedBatchNorm's
# Manifest fields sealed by ``fields_sha256``: every field the exporter writes besides the
# two digests (``exported.fields_digest`` with these fields).
DIGEST_FIELDS = ('format', 'format_version', 'project_version', 'jax_version',
                 'converter', 'opset', 'checkpoint_step', 'class_names', 'bands', 'n_w',
                 'stamp_size', 'lstm_size', 'dtype', 'max_seeing_arcsec',
                 'drop_unknown_seeing', 'plausibility', 'preprocessing', 'inputs', 'outputs')
DIGESTS = ('model_sha256', 'fields_sha256')
OUTPUT_NAMES = ('probs', 'c_out', 'h_out')


def input_names(num_bands) -> tuple:
  """The graph's inputs in order: 'bands' only for a model of several bands."""
  return ('images', 'time_gaps') + (('bands',) if num_bands > 1 else ()) + ('mask', 'c', 'h')


def io_shapes(manifest) -> tuple[dict, dict]:
  """({input: [shape, dtype]}, {output: [shape, dtype]}) from the manifest's numbers; 'B' is
  the batch (any size)."""
  n_w, s, h = int(manifest['n_w']), int(manifest['stamp_size']), int(manifest['lstm_size'])
  c = len(manifest['class_names'])
  every = {'images': [['B', n_w, s, s], 'float32'], 'time_gaps': [['B', n_w], 'float32'],
           'bands': [['B', n_w], 'int32'], 'mask': [['B'], 'bool'],
           'c': [['B', h], 'float32'], 'h': [['B', h], 'float32']}
  ins = {k: every[k] for k in input_names(len(manifest['bands']))}
  outs = {'probs': [['B', c], 'float32'], 'c_out': [['B', h], 'float32'],
          'h_out': [['B', h], 'float32']}
  return ins, outs


def step_parameters(classifier) -> dict:
  """The trained network as numpy float32 arrays for ``step_fn``: the input batch norm's
  (a, b), each convolution OIHW with its batch norm folded in, fc rows in NCHW order."""
  m = classifier.config.model
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), classifier.params)
  st = jax.tree.map(lambda x: np.asarray(x, np.float32), classifier.batch_stats)
  enc, enc_st = p['encoder'], st['encoder']

  def affine(name):  # MaskedBatchNorm.affine with the running statistics
    a = enc[name]['scale'] / np.sqrt(enc_st[name]['var'] + np.float32(BN_EPSILON))
    return a, enc[name]['bias'] - enc_st[name]['mean'] * a

  convs = []
  for blk in range(int(m.num_blocks)):
    for j in range(int(m.convs_per_block)):
      a, b = affine(f'bn{blk}_{j}')
      conv = enc[f'conv{blk}_{j}']
      convs.append(((conv['kernel'] * a).transpose(3, 2, 0, 1), conv['bias'] * a + b,
                    j == int(m.convs_per_block) - 1))
  side = int(classifier.stamp_size)
  for _ in range(int(m.num_blocks)):
    side = -(-side // 2)
  fc = p['fc']['kernel']
  fc = fc.reshape(side, side, int(m.filters), -1).transpose(2, 0, 1, 3).reshape(fc.shape)
  return {'input_affine': affine('bn_input'), 'convs': convs, 'fc': (fc, p['fc']['bias']),
          'lstm': (p['lstm']['wi'], p['lstm']['wh'], p['lstm']['b']),
          'out': (p['out']['kernel'], p['out']['bias']),
          'asinh_scale': float(m.input_asinh_scale)}


def max_pool_2x2_nchw(x):
  """2 x 2 max pool, stride 2, an odd edge padded with -inf (``kernels.fused.max_pool_2x2``)
  in NCHW: flax's max_pool, which jax2onnx writes as one MaxPool node (its transposes to and
  from NHWC cancel); a reshape and a max would be a Pad and a ReduceMax, 12 % slower."""
  y = nn.max_pool(x.transpose(0, 2, 3, 1), window_shape=(2, 2), strides=(2, 2), padding='SAME')
  return y.transpose(0, 3, 1, 2)


def asinh(x):
  """asinh as sign(x) log(|x| + sqrt(x^2 + 1)): onnxruntime's Asinh took 7 % of a step, these
  elementwise ops 1 %. Within 1.2e-7 of jnp.arcsinh relative to max(|asinh x|, 1), for
  |x| < 1e18 (the stamps / input_asinh_scale stay below 1e6)."""
  a = jnp.abs(x)
  return jnp.sign(x) * jnp.log(a + jnp.sqrt(a * a + 1.0))


def step_fn(params, num_bands):
  """(images, time_gaps, [bands,] mask, c, h) -> (probs, c_out, h_out) in jax.numpy."""
  a0, b0 = params['input_affine']
  fc_w, fc_b = params['fc']
  wi, wh, lstm_b = params['lstm']
  out_w, out_b = params['out']
  scale = params['asinh_scale']
  chan = lambda v: v[None, :, None, None]

  def step(images, time_gaps, *rest):
    bands, (mask, c, h) = (rest[0], rest[1:]) if num_bands > 1 else (None, rest)
    x = asinh(images / scale) if scale > 0 else images
    x = x * chan(a0) + chan(b0)
    for kernel, bias, pool in params['convs']:
      x = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
      x = jax.nn.relu(x + chan(bias))
      if pool:
        x = max_pool_2x2_nchw(x)
    f = jax.nn.relu(x.reshape(x.shape[0], -1) @ fc_w + fc_b)
    feats = [f, time_gaps]
    if bands is not None:  # the n_w images' band one-hots after the gaps (stream._update_fn)
      onehot = bands[:, :, None] == jnp.arange(num_bands, dtype=jnp.int32)
      feats.append(onehot.astype(jnp.float32).reshape(bands.shape[0], -1))
    z = jnp.concatenate(feats, axis=-1) @ wi + lstm_b + h @ wh  # layers.MaskedLSTM
    n = h.shape[-1]
    i, fg, g, o = z[:, :n], z[:, n:2 * n], z[:, 2 * n:3 * n], z[:, 3 * n:]
    c_new = jax.nn.sigmoid(fg) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    keep = mask[:, None]
    c, h = jnp.where(keep, c_new, c), jnp.where(keep, h_new, h)
    return jax.nn.softmax(h @ out_w + out_b, axis=-1), c, h

  return step


def import_converter():
  """jax2onnx, or a one-line UserError saying how to install it (before any long work)."""
  try:
    with contextlib.redirect_stdout(io.StringIO()), _quiet_logs():
      import jax2onnx  # lazy: optional extra [onnx], only for this export
  except ImportError:
    raise utils.UserError("--format onnx needs jax2onnx: pip install -e '.[onnx]'") from None
  return jax2onnx


def converter_version() -> str:
  try:
    return 'jax2onnx ' + importlib.metadata.version('jax2onnx')
  except importlib.metadata.PackageNotFoundError:
    return 'jax2onnx unknown'


def build_manifest(classifier, max_seeing_arcsec) -> dict:
  """Everything but the digests. The preparation rules are the jax.export artifact's
  (``export.build_manifest``), applied here by the loader."""
  m = {
      'format': FORMAT,
      'format_version': FORMAT_VERSION,
      'project_version': export_lib.project_version(),
      'jax_version': jax.__version__,
      'converter': converter_version(),
      'opset': OPSET,
      'checkpoint_step': classifier.checkpoint_step,
      'class_names': list(classifier.class_names),
      'bands': list(classifier.bands),
      'n_w': classifier.n_w,
      'stamp_size': classifier.stamp_size,
      'lstm_size': int(classifier.model.lstm_size),
      'dtype': 'float32',
      'max_seeing_arcsec': float(max_seeing_arcsec),
      'drop_unknown_seeing': bool(classifier.rules.drop_unknown_seeing),
      'plausibility': plausibility.limits_from_config(classifier.config),
      'preprocessing': dict(
          export_lib.preprocessing_rules(max_seeing_arcsec),
          applied_by='the loader (numpy), before the graph: the graph takes the eq. 4 images',
          time="time gaps are days since the object's first kept image, from float64 MJDs "
               'on the host, then float32',
          window='images[:, k] is the object\'s k-th last kept image (oldest first), '
                 'time_gaps[:, k] its days since the first kept image, bands[:, k] its band '
                 '(index into bands); mask False: c, h unchanged'),
  }
  m['inputs'], m['outputs'] = io_shapes(m)
  return m


def export_onnx(classifier, out_dir, max_seeing_arcsec) -> dict:
  """Writes DIR/step.onnx and DIR/manifest.json (after the graph converts); returns the
  manifest. float32 whatever the classifier's dtype."""
  jax2onnx = import_converter()
  manifest = build_manifest(classifier, max_seeing_arcsec)
  nb = len(manifest['bands'])
  (b,) = jax.export.symbolic_shape('B')
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(
      tuple(b if d == 'B' else d for d in shape), jnp.dtype(dtype))
  args = [spec(*v) for v in manifest['inputs'].values()]
  fn = step_fn(step_parameters(classifier), nb)
  # jax2onnx logs the plugins it skips and prints debugging lines: kept off the user's output.
  with contextlib.redirect_stdout(io.StringIO()), _quiet_logs():
    model = jax2onnx.to_onnx(fn, args, model_name='rcnn_jax_streaming_step', opset=OPSET,
                             input_names=list(manifest['inputs']),
                             output_names=list(OUTPUT_NAMES))
  blob = model.SerializeToString()
  os.makedirs(out_dir, exist_ok=True)
  manifest = json.loads(json.dumps(manifest))  # sealed as the loader reads it (JSON types)
  manifest['model_sha256'] = exported_lib.bytes_digest(blob)
  manifest['fields_sha256'] = exported_lib.fields_digest(manifest, DIGEST_FIELDS)
  tmp = os.path.join(out_dir, ARTIFACT + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(blob)
  os.replace(tmp, os.path.join(out_dir, ARTIFACT))
  utils.atomic_write_text(os.path.join(out_dir, MANIFEST), json.dumps(manifest, indent=1) + '\n')
  return manifest


@contextlib.contextmanager
def _quiet_logs():
  """The converter's plugin warnings (logged and DeprecationWarning) off the user's output."""
  loggers = [logging.getLogger(n) for n in ('jax2onnx', 'onnx_ir')]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', DeprecationWarning)
      yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)
