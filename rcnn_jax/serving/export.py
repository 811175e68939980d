"""jax.export of the classifier's streaming update (the library behind
``python -m rcnn_jax.export``): one serialized function per platform, a manifest with the
preparation rules, SHA-256 digests; ``exported.py`` loads it without any model code.
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rcnn_jax import models
from rcnn_jax.core import utils
from rcnn_jax.inputs import plausibility
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import exported as exported_lib

# Sky estimate of realdata (outer ring, clipped median): the same rule inside the function.
SKY_NSIGMA, SKY_MAX_ITER = realdata._clipped_median.__defaults__  # pylint: disable=protected-access


def project_version() -> str:
  try:
    return importlib.metadata.version('rcnn_jax')
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def clipped_median(x, valid):
  """realdata._clipped_median in jax: x [P] with valid [P]; 3-sigma MAD clipping, <= 10 rounds."""
  keep0 = jnp.where(valid, x, jnp.nan)

  def cond(c):
    i, _, done = c
    return (i < SKY_MAX_ITER) & ~done

  def body(c):
    i, keep, _ = c
    med = jnp.nanmedian(keep)
    sigma = 1.4826 * jnp.nanmedian(jnp.abs(keep - med))
    new = jnp.where(jnp.abs(keep - med) <= SKY_NSIGMA * sigma, keep, jnp.nan)
    n_new, n_keep = jnp.sum(~jnp.isnan(new)), jnp.sum(~jnp.isnan(keep))
    stop = (sigma <= 0) | (n_new == n_keep) | (n_new == 0)
    return i + 1, jnp.where(stop, keep, new), stop

  _, keep, _ = jax.lax.while_loop(cond, body, (0, keep0, False))
  return jnp.nanmedian(keep)


def estimate_sky(images):
  """[B, S, S] -> [B]: the clipped median of each stamp's outer ring (realdata.estimate_sky)."""
  s = images.shape[-1]
  r = np.arange(s)
  edge = np.minimum(np.minimum(r[:, None], s - 1 - r[:, None]),
                    np.minimum(r[None, :], s - 1 - r[None, :]))
  ring = np.flatnonzero((edge < realdata.SKY_RING).reshape(-1))
  vals = images.reshape(images.shape[0], -1)[:, ring]
  return jax.vmap(lambda v: clipped_median(v, jnp.ones(v.shape, bool)))(vals)


def export_model(classifier, conv_impl):
  """The classifier's network: 'auto' as the Classifier runs it (on a CPU: chunks of 16 stamps,
  Winograd), else without encoder chunks and with ``conv_impl``; the same parameters."""
  if conv_impl == 'auto':
    return classifier.model  # the project's layers as this backend picks them
  m = ml_collections.ConfigDict(classifier.config.model.to_dict())
  m.encoder_chunk, m.dtype = 0, classifier.dtype
  if conv_impl:
    m.conv_impl = conv_impl
  return models.build_model(m, classifier.num_classes)


def make_update_fn(classifier, max_seeing_arcsec, conv_impl='xla', drop_unknown_seeing=True):
  """The pure update (state arrays..., inputs...) -> (probs, state dict) of a Classifier."""
  if len(getattr(classifier, 'bands', ('g',))) > 1:
    raise utils.UserError(f'export: a model of several bands {classifier.bands} is not '
                          'supported yet (its stream needs a band per image)')
  variables = classifier._variables()  # pylint: disable=protected-access
  model, n_w = export_model(classifier, conv_impl), classifier.n_w

  def update(c, h, mjd0_hi, mjd0_lo, num_images, probs, window, window_t, zp0,
             image, mjd_hi, mjd_lo, zero_point, sky_adu, seeing_arcsec, active):
    kept = active & ~(seeing_arcsec > max_seeing_arcsec)
    if drop_unknown_seeing:  # NaN seeing: conditions not measured (preprocess, step 1)
      kept = kept & jnp.isfinite(seeing_arcsec)
    first = kept & (num_images == 0)
    mjd0_hi = jnp.where(first, mjd_hi, mjd0_hi)
    mjd0_lo = jnp.where(first, mjd_lo, mjd0_lo)
    zp0 = jnp.where(first, zero_point, zp0)
    num_images = num_images + kept.astype(jnp.int32)
    unknown = jnp.isnan(sky_adu)
    sky = jax.lax.cond(jnp.any(unknown),  # the clipped medians cost, so only when needed
                       lambda: jnp.where(unknown, estimate_sky(image), sky_adu), lambda: sky_adu)
    known = jnp.isfinite(zero_point) & jnp.isfinite(zp0)  # else no scaling, as realdata
    scale = jnp.where(known, 10.0**((zp0 - zero_point) / 2.5), 1.0)  # eq. 4
    proc = (image - sky[:, None, None]) * scale[:, None, None]
    proc = jnp.where(kept[:, None, None], proc, 0.0)
    t = jnp.where(kept, (mjd_hi - mjd0_hi) + (mjd_lo - mjd0_lo), 0.0)  # hi - hi0 is exact
    ready = kept & (num_images >= n_w)
    x = jnp.moveaxis(jnp.concatenate([window, proc[:, None]], axis=1), 1, -1)[:, None]
    gaps = jnp.concatenate([window_t, t[:, None]], axis=1)[:, None]
    logits, (c_new, h_new) = model.apply(variables, x, gaps, ready[:, None], (c, h),
                                         method='step')
    p = jax.nn.softmax(logits[:, 0].astype(jnp.float32), axis=-1)
    probs = jnp.where(ready[:, None], p, probs)
    c = jnp.where(ready[:, None], c_new, c)
    h = jnp.where(ready[:, None], h_new, h)
    if n_w > 1:
      window = jnp.where(kept[:, None, None, None],
                         jnp.concatenate([window[:, 1:], proc[:, None]], axis=1), window)
      window_t = jnp.where(kept[:, None], jnp.concatenate([window_t[:, 1:], t[:, None]], axis=1),
                           window_t)
    state = dict(c=c, h=h, mjd0_hi=mjd0_hi, mjd0_lo=mjd0_lo, num_images=num_images,
                 probs=probs, window=window, window_t=window_t, zp0=zp0)
    return probs, state

  return update


def batch_multiple(classifier, conv_impl) -> int:
  """1, or the encoder chunk when 'auto' chunks (its padding needs a multiple of it)."""
  if conv_impl != 'auto':
    return 1
  chunk = models.resolve_encoder_chunk(int(classifier.config.model.encoder_chunk))
  return max(chunk, 1)


def preprocessing_rules(max_seeing_arcsec) -> dict:
  """The manifest's ``preprocessing``: the preparation rules in words (also the ONNX
  artifact's, ``export_onnx.py``)."""
  return {
      'eq4': '(image - sky_adu) * 10**((zp_ref - zero_point) / 2.5), zp_ref = the first '
             "kept image's zero point; no scaling when either is NaN",
      'sky_when_nan': f'clipped median ({SKY_NSIGMA}-sigma MAD, at most {SKY_MAX_ITER} '
                      f'rounds) of the stamp\'s outer {realdata.SKY_RING}-pixel ring',
      'seeing': f'an image with seeing_arcsec > {float(max_seeing_arcsec)} is skipped '
                '(state unchanged); so is NaN seeing (conditions not measured) when '
                'drop_unknown_seeing',
      'crop': 'larger stamps are centre-cropped by the loader: rows (H - S) // 2 ..',
      'time': "time gaps are days since the object's first kept image; mjd = mjd_hi + mjd_lo",
      'steps': 'probabilities from the n_w-th kept image on; NaN before',
      'plausibility': 'an active image whose epoch plausibility.epoch_problems finds '
                      'implausible with these limits is dropped (state unchanged) with a '
                      'line on stderr; checked by the loader, not the function',
  }


def build_manifest(classifier, max_seeing_arcsec, platforms, conv_impl) -> dict:
  m = {
      'format': exported_lib.FORMAT,
      'format_version': exported_lib.FORMAT_VERSION,
      'project_version': project_version(),
      'jax_version': jax.__version__,
      'platforms': list(platforms),
      'checkpoint_step': classifier.checkpoint_step,
      'class_names': list(classifier.class_names),
      'n_w': classifier.n_w,
      'stamp_size': classifier.stamp_size,
      'lstm_size': int(classifier.model.lstm_size),
      'max_seeing_arcsec': float(max_seeing_arcsec),
      'drop_unknown_seeing': bool(classifier.rules.drop_unknown_seeing),
      'conv_impl': conv_impl,
      'batch_multiple': batch_multiple(classifier, conv_impl),
      'dtype': classifier.dtype,
      # Applied by the loader on the host before the function (exported.update), as stream.py.
      'plausibility': plausibility.limits_from_config(classifier.config),
      'preprocessing': preprocessing_rules(max_seeing_arcsec),
  }
  shapes = lambda d: {k: exported_lib._as_list(v) for k, v in d.items()}  # pylint: disable=protected-access
  m['state'] = shapes(exported_lib.state_shapes(m))
  m['inputs'] = shapes(exported_lib.input_shapes(m))
  m['outputs'] = shapes(exported_lib.output_shapes(m))
  return m


def export_classifier(classifier, out_dir, max_seeing_arcsec, platforms=('cpu',),
                      conv_impl='xla'):
  """Writes DIR/update.jax and DIR/manifest.json; returns the manifest.

  ``conv_impl``: the convolution formulation lowered ('xla': lax.conv, any batch size, for any
  platform; 'rows': the project's CPU matmul form; 'auto': the Classifier's own layers as this
  backend picks them, on a CPU chunks of 16 stamps with Winograd, then the batch is a multiple
  of 16 slots, which the loader pads to).
  """
  manifest = build_manifest(classifier, max_seeing_arcsec, platforms, conv_impl)
  (b,) = jax.export.symbolic_shape(exported_lib.batch_dim(manifest))
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(
      tuple(b if isinstance(d, str) else d for d in shape), jnp.dtype(dtype))
  args = ([spec(*manifest['state'][k]) for k in exported_lib.STATE_NAMES]
          + [spec(*manifest['inputs'][k]) for k in exported_lib.INPUT_NAMES])
  fn = jax.jit(make_update_fn(classifier, max_seeing_arcsec, conv_impl,
                              manifest['drop_unknown_seeing']))
  exp = jax.export.export(fn, platforms=tuple(platforms))(*args)
  os.makedirs(out_dir, exist_ok=True)
  blob = bytes(exp.serialize())
  # Sealed as the loader will read it back (JSON types), so the digest reproduces there.
  manifest = json.loads(json.dumps(manifest))
  manifest['update_sha256'] = exported_lib.bytes_digest(blob)
  manifest['fields_sha256'] = exported_lib.fields_digest(manifest)
  tmp = os.path.join(out_dir, exported_lib.ARTIFACT + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(blob)
  os.replace(tmp, os.path.join(out_dir, exported_lib.ARTIFACT))
  utils.atomic_write_text(os.path.join(out_dir, exported_lib.MANIFEST),
                          json.dumps(manifest, indent=1) + '\n')
  return manifest
