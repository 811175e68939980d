"""Composes survey, light curves, rendering and sequences: (key, simulator) -> labelled batch.

``simulate_batch`` is a pure function of a PRNG key, traceable under ``jax.jit`` and
``jax.vmap``; the training step calls it inside the jitted gradient step, so no data set is
ever stored. Object ``i`` of a batch uses ``fold_in(key, offset + i)`` and label
``(offset + i) % num_classes``, so classes are exactly balanced and a batch split across
devices (by ``offset``) is the same batch.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core.errors import UserError
from rcnn_jax.sim import bands as bands_lib
from rcnn_jax.sim import lightcurves
from rcnn_jax.sim import photometry
from rcnn_jax.sim import render
from rcnn_jax.sim import sequences
from rcnn_jax.sim import survey as survey_lib

SIM_DETECTIONS = ('difference', 'flux')  # config.sim.detection: detection_baseline's rules


@flax.struct.dataclass
class Simulator:
  """Everything the simulator needs: arrays as pytree leaves, settings as static fields."""
  survey: survey_lib.Survey
  lightcurves: Any
  psf_bank: Any
  host_fraction: jnp.ndarray  # [num_classes]
  host_tables: Any = None  # render.HostTables: supernova hosts given their redshift
  host_colour: Any = None  # [NB] galaxy colours m_b - m_ref (several bands only)
  class_names: tuple = flax.struct.field(pytree_node=False, default=())
  stamp_size: int = flax.struct.field(pytree_node=False, default=21)
  n_w: int = flax.struct.field(pytree_node=False, default=3)
  max_steps: int = flax.struct.field(pytree_node=False, default=20)
  pre_detection: int = flax.struct.field(pytree_node=False, default=5)
  # Transients detected before pre_detection images exist start at the field's first image.
  clip_early_start: bool = flax.struct.field(pytree_node=False, default=False)
  # > 0: transients are detected on the difference against the field's first epochs
  # (sequences.first_detection); 0: on their own flux (before 2026-12-03).
  detection_baseline: int = flax.struct.field(pytree_node=False, default=0)
  # A simulated supernova (or the supernova a ghost window is drawn from) is kept only when at
  # least this many epochs of its sequence window are detected (sequences.detected_epochs); 1:
  # the first detection alone, the paper's Sec. 3.1 rule (configs saved before 2026-12-07).
  supernova_min_detections: int = flax.struct.field(pytree_node=False, default=1)
  transient_ids: tuple = flax.struct.field(pytree_node=False, default=(0, 6))
  galaxy_id: int = flax.struct.field(pytree_node=False, default=5)
  psf_kind: str = flax.struct.field(pytree_node=False, default='moffat')
  moffat_beta: float = flax.struct.field(pytree_node=False, default=3.0)
  # PSF FWHM = seeing_offset_arcsec + seeing_scale * table seeing (render.seeing_to_fwhm_px).
  seeing_scale: float = flax.struct.field(pytree_node=False, default=1.0)
  seeing_offset_arcsec: float = flax.struct.field(pytree_node=False, default=0.0)
  galaxy_config: Any = flax.struct.field(pytree_node=False, default=None)
  poisson: bool = flax.struct.field(pytree_node=False, default=True)
  max_redraws: int = flax.struct.field(pytree_node=False, default=256)
  redraw_batch: int = flax.struct.field(pytree_node=False, default=16)
  # Variability selection (lightcurves.detectable_variability) of these classes' attempts.
  variable_ids: tuple = flax.struct.field(pytree_node=False, default=())
  var_min_epochs: int = flax.struct.field(pytree_node=False, default=2)
  var_k_sigma: float = flax.struct.field(pytree_node=False, default=3.0)
  var_floor: float = flax.struct.field(pytree_node=False, default=0.012)
  # Per-epoch registration (px per axis) and calibration (fractional flux) errors.
  centroid_jitter_px: float = flax.struct.field(pytree_node=False, default=0.0)
  subpixel_per_epoch: bool = flax.struct.field(pytree_node=False, default=False)
  zero_point_rms: float = flax.struct.field(pytree_node=False, default=0.0)
  # Per-epoch PSF width error (fractional, lognormal) about the seeing relation.
  fwhm_scatter: float = flax.struct.field(pytree_node=False, default=0.0)
  # Night-to-night calibration error (fractional, lognormal, one draw per night per object's
  # field), nights split at this fraction of the MJD (the observatory's local noon).
  night_rms: float = flax.struct.field(pytree_node=False, default=0.0)
  night_boundary_mjd_frac: float = flax.struct.field(pytree_node=False, default=0.65)
  # Per-epoch error of the table's sky at the object (ADU): N(0, sky_rms_adu^2 +
  # (sky_rms_fraction * sky)^2), in the image but not in the sky that preprocessing subtracts.
  sky_rms_adu: float = flax.struct.field(pytree_node=False, default=0.0)
  sky_rms_fraction: float = flax.struct.field(pytree_node=False, default=0.0)
  # Observing conditions drawn wider than the survey's table (``randomise_conditions``), all
  # known to the observer: per-epoch log-normal factors on the seeing and the sky, a per-epoch
  # and a per-object zero-point offset (mag), and a per-object factor, uniform in
  # [1, calibration_max_factor], on the unknown calibration errors (zero_point_rms, night_rms,
  # fwhm_scatter). All 0 (1 for the factor): the table as it is.
  cond_seeing_log_sigma: float = flax.struct.field(pytree_node=False, default=0.0)
  cond_sky_log_sigma: float = flax.struct.field(pytree_node=False, default=0.0)
  cond_zero_point_sigma_mag: float = flax.struct.field(pytree_node=False, default=0.0)
  cond_zero_point_object_sigma_mag: float = flax.struct.field(pytree_node=False, default=0.0)
  cond_calibration_max_factor: float = flax.struct.field(pytree_node=False, default=1.0)
  max_seeing_arcsec: float = flax.struct.field(pytree_node=False, default=float('inf'))

  @property
  def randomised(self) -> bool:
    return (self.cond_seeing_log_sigma > 0 or self.cond_sky_log_sigma > 0 or
            self.cond_zero_point_sigma_mag > 0 or self.cond_zero_point_object_sigma_mag > 0 or
            self.cond_calibration_max_factor > 1.0)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_bands(self) -> int:
    return self.survey.num_bands

  @property
  def num_images(self) -> int:
    """E = T + n_w - 1 raw images per sequence."""
    return self.max_steps + self.n_w - 1


def detection_baseline(config) -> int:
  """Baseline epochs of the simulator's transient detection (``Simulator.detection_baseline``):
  ``config.real.baseline_epochs`` under ``config.sim.detection = 'difference'`` (the real
  path's rule), 0 under 'flux' (saved configs from before the field: their training's rule)."""
  kind = str(config.sim.get('detection', 'flux'))
  if kind not in SIM_DETECTIONS:
    raise UserError(f'config.sim.detection must be one of {SIM_DETECTIONS}, '
                    f'got {kind!r}')
  return int(config.real.baseline_epochs) if kind == 'difference' else 0


def build_simulator(config) -> Simulator:
  """Host side: reads or draws the survey, tabulates templates. Fast enough to call per run."""
  sc = config.sim
  names = tuple(sc.class_names)
  for required in ('Supernova', 'Galaxy', 'Asteroid'):
    if required not in names:
      raise UserError(f'config.sim.class_names must include {required!r}')
  unknown = [c for c in sc.transient_classes if c not in names]
  if unknown:
    raise UserError(f'config.sim.transient_classes: unknown class {unknown[0]!r}')
  var = sc.get('variability', None)
  var_classes = tuple(var.classes) if var is not None else ()
  unknown = [c for c in var_classes if c not in names or c in sc.transient_classes]
  if unknown:
    raise UserError(f'config.sim.variability.classes: {unknown[0]!r} is not a non-transient '
                    'class of config.sim.class_names')
  if var_classes and (var.min_epochs < 1 or var.k_sigma <= 0 or var.floor < 0):
    raise UserError('config.sim.variability: min_epochs must be >= 1, k_sigma > 0, floor >= 0')
  if sc.n_w < 1 or sc.max_steps < 1 or sc.pre_detection < 0:
    raise UserError('config.sim: n_w and max_steps must be >= 1 and pre_detection >= 0')
  surv = survey_lib.build_survey(config.survey, min_epochs=sc.pre_detection + sc.n_w)
  baseline = detection_baseline(config)
  if baseline > int(np.min(np.asarray(surv.num_epochs))):
    raise UserError(f'config.real.baseline_epochs ({baseline}) exceeds the epochs of the '
                    "survey's shortest field (sim.detection = 'difference')")
  host = [sc.host_fraction_supernova if n == 'Supernova' else
          1.0 if n == 'Galaxy' else sc.host_fraction_other for n in names]
  bank = render.load_psf_bank(sc.psf.bank_path) if sc.psf.kind == 'bank' else None
  jitter = float(sc.astrometry.centroid_jitter_px) if 'astrometry' in sc else 0.0
  zp_rms = float(sc.calibration.zero_point_rms) if 'calibration' in sc else 0.0
  if jitter < 0 or zp_rms < 0 or float(sc.psf.get('fwhm_scatter', 0.0)) < 0:
    raise UserError('config.sim.astrometry.centroid_jitter_px, '
                    'config.sim.calibration.zero_point_rms and config.sim.psf.fwhm_scatter '
                    'must be >= 0')
  tables = (render.build_host_tables(sc.galaxy) if 'host_z_grid' in sc.galaxy else None)
  host_colour = None
  if surv.num_bands > 1:
    host_colour = jnp.asarray(bands_lib.host_colours(sc, surv.bands))
  return Simulator(
      survey=surv, lightcurves=lightcurves.build_lightcurve_model(sc, config.survey),
      psf_bank=bank, host_colour=host_colour,
      host_fraction=jnp.asarray(host, jnp.float32), host_tables=tables, class_names=names,
      stamp_size=int(sc.stamp_size), n_w=int(sc.n_w), max_steps=int(sc.max_steps),
      pre_detection=int(sc.pre_detection),
      clip_early_start=bool(sc.get('clip_early_start', False)),
      detection_baseline=baseline,
      supernova_min_detections=int(sc.get('supernova_min_detections', 1)),
      transient_ids=tuple(names.index(c) for c in sc.transient_classes),
      galaxy_id=names.index('Galaxy'), psf_kind=str(sc.psf.kind),
      moffat_beta=float(sc.psf.moffat_beta),
      seeing_scale=float(sc.psf.get('seeing_scale', 1.0)),
      seeing_offset_arcsec=float(sc.psf.get('seeing_offset_arcsec', 0.0)),
      galaxy_config=sc.galaxy.to_dict(),
      poisson=bool(sc.poisson), max_redraws=int(sc.max_redraws),
      redraw_batch=int(sc.redraw_batch),
      variable_ids=tuple(names.index(c) for c in var_classes),
      var_min_epochs=int(var.min_epochs) if var_classes else 2,
      var_k_sigma=float(var.k_sigma) if var_classes else 3.0,
      var_floor=float(var.floor) if var_classes else 0.012,
      centroid_jitter_px=jitter, zero_point_rms=zp_rms,
      fwhm_scatter=float(sc.psf.get('fwhm_scatter', 0.0)),
      night_rms=float(sc.calibration.get('night_rms', 0.0)) if 'calibration' in sc else 0.0,
      night_boundary_mjd_frac=float(sc.calibration.get('night_boundary_mjd_frac', 0.65))
      if 'calibration' in sc else 0.65,
      sky_rms_adu=float(sc.calibration.get('sky_rms_adu', 0.0)) if 'calibration' in sc else 0.0,
      sky_rms_fraction=float(sc.calibration.get('sky_rms_fraction', 0.0))
      if 'calibration' in sc else 0.0,
      subpixel_per_epoch=bool(sc.astrometry.get('subpixel_per_epoch', False))
      if 'astrometry' in sc else False,
      **_conditions_fields(sc, config.survey))


def _conditions_fields(sc, survey_config) -> dict:
  """``Simulator`` fields of ``config.sim.randomise_conditions`` (absent: the table as is)."""
  rc = sc.get('randomise_conditions', None)
  if rc is None:
    return {}
  out = dict(cond_seeing_log_sigma=float(rc.seeing_log_sigma),
             cond_sky_log_sigma=float(rc.sky_log_sigma),
             cond_zero_point_sigma_mag=float(rc.zero_point_sigma_mag),
             cond_zero_point_object_sigma_mag=float(rc.zero_point_object_sigma_mag),
             cond_calibration_max_factor=float(rc.calibration_max_factor))
  if min(out.values()) < 0 or out['cond_calibration_max_factor'] < 1.0:
    raise UserError('config.sim.randomise_conditions: the sigmas must be >= 0 and '
                    'calibration_max_factor >= 1')
  out['max_seeing_arcsec'] = float(survey_config.get('max_seeing_arcsec', float('inf')))
  return out


def without_randomised_conditions(sim: Simulator) -> Simulator:
  """``sim`` with the survey's own observing conditions (validation and test sets)."""
  return sim.replace(cond_seeing_log_sigma=0.0, cond_sky_log_sigma=0.0,
                     cond_zero_point_sigma_mag=0.0, cond_zero_point_object_sigma_mag=0.0,
                     cond_calibration_max_factor=1.0)


def randomise_conditions(key, seeing, sky, zp, sim: Simulator):
  """One object's observing conditions drawn wider than the survey's table (the paper's Sec. 6
  future work: train on conditions the survey's own table does not hold, so that no feature of
  the table's few fields and nights becomes a class cue).

  Per epoch: seeing x exp(N(0, s_seeing^2)), clipped to [0.5 x the table's, the survey's seeing
  cut] (the real path drops epochs above the cut, so training never needs them); sky x
  exp(N(0, s_sky^2)); zero point + N(0, s_zp^2) + one N(0, s_obj^2) offset for the object (a
  deeper or shallower field). All of them are known to the observer, as the table is: the
  stamp is rendered and eq. 4 applied with the same values. Returns (seeing, sky, zp, shift,
  factor): ``shift`` is the object's zero-point offset, which eq. 4's zp_ref takes too (a real
  field's first epoch would have it); ``factor``, uniform in [1, calibration_max_factor],
  multiplies the unknown per-epoch, night and PSF-width errors of this object.
  """
  k1, k2, k3, k4, k5 = jax.random.split(key, 5)
  e = seeing.shape[0]
  if sim.cond_seeing_log_sigma > 0:
    s = seeing * jnp.exp(sim.cond_seeing_log_sigma * jax.random.normal(k1, (e,)))
    seeing = jnp.clip(s, 0.5 * seeing, jnp.maximum(seeing, sim.max_seeing_arcsec))
  if sim.cond_sky_log_sigma > 0:
    sky = sky * jnp.exp(sim.cond_sky_log_sigma * jax.random.normal(k2, (e,)))
  if sim.cond_zero_point_sigma_mag > 0:
    zp = zp + sim.cond_zero_point_sigma_mag * jax.random.normal(k3, (e,))
  shift = (sim.cond_zero_point_object_sigma_mag * jax.random.normal(k4, ())
           if sim.cond_zero_point_object_sigma_mag > 0 else jnp.float32(0.0))
  factor = (jax.random.uniform(k5, (), minval=1.0, maxval=sim.cond_calibration_max_factor)
            if sim.cond_calibration_max_factor > 1.0 else jnp.float32(1.0))
  return seeing, sky, zp + shift, shift, factor


def psf_fwhm_px(seeing_arcsec, sim: Simulator):
  """The PSF FWHM (px) the simulator renders, and its photometry assumes, at a table seeing."""
  return render.seeing_to_fwhm_px(seeing_arcsec, sim.survey.pixel_scale, sim.seeing_scale,
                                  sim.seeing_offset_arcsec)


def _attempt_parts(key, label, sim: Simulator):
  """One draw of field, CCD and light curve: (window ok, variability ok, outputs).

  Transients must be detected (``sequences.first_detection``; with ``detection_baseline``, on
  the difference against the field's first epochs) with ``pre_detection`` images before (or, with
  ``sim.clip_early_start``, start at the field's first image when detected earlier, as a real
  transient's sequence does: ``preprocess.detection_start``); other classes take their
  start (so their N_d) from a transient drawn on the same field, so that N_d follows one
  distribution for all classes: a transient's curve decides the window, the object's own (key
  klc) for a transient, a ghost's (key kg) otherwise. The variable classes
  (``sim.variable_ids``) must in addition vary detectably at the epochs of that window
  (lightcurves.detectable_variability on their own curve from klc, evaluated at the window's
  epochs only); other classes pass. The object's own curve is drawn once, after the redraws,
  from the accepted attempt's klc (the same curve: it depends only on the key and the times).

  ``label`` is a traced class id (every class's curves are computed and one is selected) or a
  Python int (only that class's are): the same draw either way, since a class's curve depends
  only on (key, class, times).
  """
  surv, lcm = sim.survey, sim.lightcurves
  static = isinstance(label, int)
  kf, kc, klc, kg, kgc = jax.random.split(key, 5)
  field = jax.random.randint(kf, (), 0, surv.num_fields)
  ccd = jax.random.randint(kc, (), 0, surv.num_ccds)
  t, n = surv.t_days[field], surv.num_epochs[field]
  band = surv.band_index[field] if surv.num_bands > 1 else None
  ghost_class = jnp.asarray(sim.transient_ids)[
      jax.random.randint(kgc, (), 0, len(sim.transient_ids))]
  if static and label in sim.transient_ids:
    det_key, det_class, det_classes = klc, label, (label,)
  elif static:
    det_key, det_class, det_classes = kg, ghost_class, sim.transient_ids
  else:
    is_transient = jnp.isin(label, jnp.asarray(sim.transient_ids))
    det_key = jax.random.wrap_key_data(jnp.where(is_transient, jax.random.key_data(klc),
                                                 jax.random.key_data(kg)))
    det_class, det_classes = jnp.where(is_transient, label, ghost_class), sim.transient_ids
  det_mag, _, _ = lightcurves.sample_magnitudes(det_key, det_class, t, n, lcm, det_classes,
                                                band=band)
  detected = sequences.detected_epochs(det_mag, surv.limmag5[field], n, sim.detection_baseline,
                                      band=band, num_bands=surv.num_bands)
  det = sequences.first_index(detected)
  start, ok = sequences.sequence_start(det, n, sim.pre_detection, sim.n_w,
                                     clip_early=sim.clip_early_start)
  if sim.supernova_min_detections > 1 and 'Supernova' in sim.class_names:
    sn = sim.class_names.index('Supernova')
    need = jnp.where(det_class == sn, sim.supernova_min_detections, 1)
    ok = ok & (sequences.detections_in_window(detected, start, sim.max_steps, sim.n_w) >= need)
  var_ok = jnp.bool_(True)
  own_classes = ((label,) if label in sim.variable_ids else ()) if static else sim.variable_ids
  if own_classes:
    idx, valid, _ = sequences.window(start, n, sim.max_steps, sim.n_w)
    own, _, _ = lightcurves.sample_magnitudes(klc, label, t[idx], n, lcm, own_classes,
                                              band=None if band is None else band[idx])
    detectable = lightcurves.detectable_variability(
        own, surv.limmag5[field, idx], valid, sim.var_min_epochs, sim.var_k_sigma,
        sim.var_floor)
    var_ok = detectable if static else (
        ~jnp.isin(label, jnp.asarray(sim.variable_ids)) | detectable)
  return ok, var_ok, (field, ccd, jax.random.key_data(klc), start)


def _attempt(key, label, sim: Simulator):
  """One draw: (accepted, (field, ccd, light-curve key data, start)); see _attempt_parts."""
  ok, var_ok, out = _attempt_parts(key, label, sim)
  return ok & var_ok, out


def variability_kept_fraction(key, sim: Simulator, num: int = 2000):
  """Per variable class: the fraction of attempts with a valid window that the variability
  selection keeps ({class name: fraction}), from ``num`` attempts per class."""
  out = {}
  for c in sim.variable_ids:
    keys = jax.random.split(jax.random.fold_in(key, c), num)
    ok, var_ok, _ = jax.jit(jax.vmap(lambda k: _attempt_parts(k, jnp.int32(c), sim)))(keys)
    ok, var_ok = np.asarray(ok), np.asarray(var_ok)
    out[sim.class_names[c]] = float(var_ok[ok].mean()) if ok.any() else float('nan')
  return out


def _round(key, label, num, sim: Simulator):
  """``num`` attempts of one object in parallel; the first accepted one in key order wins (the
  first attempt when none is)."""
  oks, outs = jax.vmap(lambda k: _attempt(k, label, sim))(jax.random.split(key, num))
  first = jnp.argmax(oks)
  return oks.any(), jax.tree.map(lambda x: x[first], outs)


# Objects per later redraw round: a 32nd of the batch (8 of 256, where ~6 supernovae are still
# pending after the first round). The result does not depend on it (each object's attempts come
# from its own key), only the work: a round costs group x 2 redraw_batch attempts.
_REDRAW_GROUP_DIVISOR = 32


def by_class(fn, first_label, num_classes, *rows):
  """``fn(c, *row)`` for every object of a batch whose object i has class (first_label + i) %
  num_classes (consecutive global indices), with the class c a Python int, so that only that
  class's work is traced; results in batch order.

  Class c's objects are i = (c - first_label) % C + C j, j < ceil(B / C): one static group per
  class, vmapped; a group's rows past the batch's end recompute the batch's last object and
  are dropped.
  """
  b = rows[0].shape[0]
  g = -(-b // num_classes)
  outs = []
  for c in range(num_classes):
    pos = jnp.minimum((c - first_label) % num_classes + num_classes * jnp.arange(g), b - 1)
    outs.append(jax.vmap(lambda *r: fn(c, *r))(*(x[pos] for x in rows)))
  i = jnp.arange(b)
  slot = (first_label + i) % num_classes * g + i // num_classes  # row i // C of its class's
  return jax.tree.map(lambda *x: jnp.concatenate(x)[slot], *outs)


def _draw_schedules(keys, labels, sim: Simulator, first_label=None):
  """Sec. 3.1's window for a batch: redraws field, CCD and light curve until each object fits.

  Object i's attempts come in a fixed order from its own key (a first round of
  ``redraw_batch``, then rounds of ``2 redraw_batch`` from a split chain), and the first
  accepted one wins, so the result is a pure function of the object's key, whichever batch it is
  in. The first round runs for every object; later rounds only for the objects still unaccepted
  (mostly supernovae, 11 % of whose attempts fit in HiTS: 16 % of them remain after the first
  16), gathered into groups of ``1 / _REDRAW_GROUP_DIVISOR`` of the batch, as many groups as
  are pending: a vmapped while loop would run every round for the whole batch.
  After ``max_redraws`` attempts an object keeps its last round's first attempt.
  With ``first_label`` (labels[i] = (first_label + i) % num_classes, as for consecutive global
  indices), the first round and the final curves run per class (``by_class``): each object
  then computes its own class's curves only, not every class's (the first round ~30 % faster,
  the whole simulator ~9 %), with bit-identical results (tested).
  Returns (field, ccd, magnitudes [E], reference magnitude, start, redshift) per object
  (redshift NaN for classes without one).
  """
  b = labels.shape[0]
  r1, r2 = sim.redraw_batch, 2 * sim.redraw_batch
  group = min(b, max(1, -(-b // _REDRAW_GROUP_DIVISOR)))
  k_first, chain = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  rounds = lambda k, l, num: jax.vmap(lambda kk, ll: _round(kk, ll, num, sim))(k, l)
  if first_label is None:
    ok, out = rounds(k_first, labels, r1)
  else:
    ok, out = by_class(lambda c, k: _round(k, c, r1, sim), first_label, sim.num_classes,
                       k_first)
  # Attempts made so far; derived from ok so that it varies across devices like ok does
  # (inside the training step's shard_map, a while loop's carry must keep its type).
  count = jnp.where(ok, r1, r1).astype(jnp.int32)

  def pending(ok, count):
    return ~ok & (count < sim.max_redraws)

  def body(state):
    ok, out, chain, count = state
    need = pending(ok, count)
    idx = jnp.argsort(~need, stable=True)[:group]  # unaccepted objects first
    sel = need[idx]
    nxt, sub = jnp.moveaxis(jax.vmap(jax.random.split)(chain[idx]), 1, 0)
    ok_i, out_i = rounds(sub, labels[idx], r2)
    pick = lambda new, old: jnp.where(sel.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    ok = ok.at[idx].set(pick(ok_i, ok[idx]))
    out = jax.tree.map(lambda o, n: o.at[idx].set(pick(n, o[idx])), out, out_i)
    chain = chain.at[idx].set(pick(nxt, chain[idx]))
    count = count.at[idx].add(jnp.where(sel, r2, 0))
    return ok, out, chain, count

  _, (field, ccd, klc, start), _, _ = jax.lax.while_loop(
      lambda s: pending(s[0], s[3]).any(), body, (ok, out, chain, count))
  surv = sim.survey
  multi = surv.num_bands > 1
  curve = lambda l, k, f: lightcurves.sample_magnitudes(
      jax.random.wrap_key_data(k), l, surv.t_days[f], surv.num_epochs[f], sim.lightcurves,
      (l,) if isinstance(l, int) else None, band=surv.band_index[f] if multi else None)
  if first_label is None:
    mag, ref, z = jax.vmap(curve)(labels, klc, field)
  else:
    mag, ref, z = by_class(curve, first_label, sim.num_classes, klc, field)
  return field, ccd, mag, ref, start, z


def _dihedral_tables(size):
  """Pixel permutations [8, size * size] of the 4 rotations, each with and without mirroring."""
  grid = np.arange(size * size).reshape(size, size)
  return np.stack([np.rot90(np.flip(grid, -1) if m else grid, r).reshape(-1)
                   for m in (False, True) for r in range(4)])


def _dihedral(images, k):
  """Applies symmetry ``k`` (0..7) of the square to [..., H, W] images by one gather."""
  h, w = images.shape[-2:]
  perm = jnp.asarray(_dihedral_tables(h))[k]
  return images.reshape(images.shape[:-2] + (h * w,))[..., perm].reshape(images.shape)


_MAX_NIGHTS = 512  # night offsets drawn per object; later nights share the last one


def simulate_object(keys, label, has_host, schedule, sim: Simulator):
  """One labelled sequence before hosts and noise: the point source on sky, and the truth.

  ``keys`` [6] are the object's subkeys, ``schedule`` its ``_draw_schedules`` row. The host
  galaxy (when ``has_host``) is drawn and rendered by ``_add_hosts`` for the batch's hosts only;
  noise (and, for a bank PSF, a symmetry of the square) is applied at batch level too.
  Each epoch's centre is the object's sub-pixel centre (with ``subpixel_per_epoch``, one drawn
  per epoch, uniform in the pixel, as for stamps cut at the nearest pixel of each epoch's
  position) plus a registration error N(0, centroid_jitter_px^2) per axis, and its astrophysical flux is scaled by a calibration
  error exp(N(0, zero_point_rms^2)); the table zero point (used by eq. 4) stays as it is.
  The image's sky is the table's plus N(0, sky_rms_adu^2 + (sky_rms_fraction sky)^2); the
  table's sky (``sky_adu``, what preprocessing subtracts) stays as it is.
  """
  surv = sim.survey
  _, k_gal, k_off, k_ctr, k_noise, k_rot = keys
  field, ccd, mag, ref_mag, start = schedule
  n = surv.num_epochs[field]
  idx, epoch_valid, step_mask = sequences.window(start, n, sim.max_steps, sim.n_w)

  t = surv.t_days[field, idx]
  zp = surv.zero_point[field, idx]
  sky = surv.sky_adu[field, idx]
  seeing = surv.seeing_arcsec[field, idx]
  exp_time = surv.exp_time_s[field, idx]
  zp_ref = sequences.reference_zero_point(surv.zero_point[field])
  gain, read_noise = surv.gain[ccd], surv.read_noise_e[ccd]
  saturation = surv.saturation_adu[ccd]
  cal = 1.0
  if sim.randomised:
    seeing, sky, zp, shift, cal = randomise_conditions(jax.random.fold_in(k_ctr, 7), seeing,
                                                       sky, zp, sim)
    zp_ref = zp_ref + shift
  fwhm_px = psf_fwhm_px(seeing, sim)
  if sim.fwhm_scatter > 0:  # the star's PSF width about the seeing relation, unknown to eq. 4
    fwhm_px = fwhm_px * jnp.exp(cal * sim.fwhm_scatter * jax.random.normal(
        jax.random.fold_in(k_ctr, 4), fwhm_px.shape))
  dx, dy = jax.random.uniform(k_ctr, (2,), minval=-0.5, maxval=0.5)
  e = idx.shape[0]
  jitter = (sim.centroid_jitter_px * jax.random.normal(jax.random.fold_in(k_ctr, 1), (e, 2))
            if sim.centroid_jitter_px > 0 else jnp.zeros((e, 2)))
  if sim.subpixel_per_epoch:
    base = jax.random.uniform(jax.random.fold_in(k_ctr, 3), (e, 2), minval=-0.5, maxval=0.5)
  else:
    base = jnp.broadcast_to(jnp.stack([dx, dy]), (e, 2))
  cx, cy = base[:, 0] + jitter[:, 0], base[:, 1] + jitter[:, 1]
  factor = (jnp.exp(cal * sim.zero_point_rms * jax.random.normal(
      jax.random.fold_in(k_ctr, 2), (e,))) if sim.zero_point_rms > 0 else jnp.ones((e,)))
  if sim.night_rms > 0:  # one calibration offset per night, shared by the night's epochs
    frac, mjd0 = sim.night_boundary_mjd_frac, surv.mjd0
    night = jnp.floor(t + (mjd0 - frac)) - np.floor(mjd0 - frac)
    offsets = jax.random.normal(jax.random.fold_in(k_ctr, 5), (_MAX_NIGHTS,))
    factor = factor * jnp.exp(cal * sim.night_rms * offsets[
        jnp.clip(night, 0, _MAX_NIGHTS - 1).astype(jnp.int32)])

  source_adu = jnp.where(epoch_valid, factor * render.mag_to_adu(mag[idx], zp, exp_time), 0.0)
  sky_image = sky
  if sim.sky_rms_adu > 0 or sim.sky_rms_fraction > 0:  # the table's sky is off at the object
    sky_sigma = render.sky_error_sigma(sky, sim.sky_rms_adu, sim.sky_rms_fraction)
    sky_image = sky + sky_sigma * jax.random.normal(jax.random.fold_in(k_ctr, 6), (e,))
  extra = {'band': surv.band_index[field, idx]} if surv.num_bands > 1 else {}

  size, kind, beta = sim.stamp_size, sim.psf_kind, sim.moffat_beta
  psf = jax.vmap(lambda w, x, y: render.psf_stamp(w, x, y, size, kind, beta, sim.psf_bank))(
      fwhm_px, cx, cy)
  return {
      'noiseless': source_adu[:, None, None] * psf + sky_image[:, None, None],
      'galaxy_keys': jax.random.key_data(jnp.stack([k_gal, k_off])),
      'center': jnp.stack([cx, cy], -1),  # [E, 2] per-epoch centre (px from the stamp centre)
      'flux_factor': factor,  # [E] calibration error of each epoch's astrophysical flux
      'fwhm_px': fwhm_px,
      'rotation': jax.random.randint(k_rot, (), 0, 8),
      'noise_key': jax.random.key_data(k_noise),
      'mask': step_mask,
      'label': label.astype(jnp.int32),
      't_days': t,
      'epoch_valid': epoch_valid,
      'zero_point': zp,
      'zero_point_ref': zp_ref,
      'sky_adu': sky,
      'seeing_arcsec': seeing,
      'exp_time_s': exp_time,
      'limmag5': surv.limmag5[field, idx],
      'gain': gain,
      'read_noise_e': read_noise,
      'saturation_adu': saturation,
      'source_flux_adu': source_adu,
      'magnitude': ref_mag,  # a Galaxy's: its galaxy's, set by _add_hosts
      'has_host': has_host,
      'field': field,
      'ccd': ccd,
  } | extra


_GOLDEN = 0.6180339887498949


def assign_hosts(key, index, sim: Simulator):
  """Which objects have a host: a low-discrepancy (golden-ratio) sequence per class.

  Object ``i`` (class c = i % C, rank j = i // C within its class) has a host when
  frac(j * phi + u_c) < host_fraction[c], with u_c uniform from the batch key. Every class
  then gets its host fraction to within a few objects in any window of indices, which bounds
  the number of hosts in a batch (``max_hosts``) so only those galaxies are rendered.
  """
  labels = index % sim.num_classes
  u = jax.random.uniform(jax.random.fold_in(key, 0x686F7374), (sim.num_classes,))
  phase = jnp.mod((index // sim.num_classes).astype(jnp.float32) * _GOLDEN + u[labels], 1.0)
  return phase < sim.host_fraction[labels]


def max_hosts(sim: Simulator, batch_size: int) -> int:
  """Static bound on the hosts among ``batch_size`` consecutive indices (see assign_hosts)."""
  per_class = -(-batch_size // sim.num_classes)
  frac = np.asarray(jax.device_get(sim.host_fraction))
  bound = int(np.sum(np.minimum(np.ceil(per_class * frac) + np.where(frac > 0, 3, 0),
                                per_class)))
  return min(batch_size, bound)


def _add_hosts(objects, sim: Simulator):
  """Renders the host galaxies of the objects that have one and adds them (batch level).

  A supernova's host (when ``objects['redshift']`` is given, finite and > 0) is drawn given
  its redshift (``render.sample_host_at_redshift``); every other host from galaxy counts
  (``render.sample_galaxy``). The host moves with each epoch's registration error and takes its
  calibration error.
  """
  b = objects['label'].shape[0]
  m = max_hosts(sim, b)
  has_host = objects['has_host']
  # Hosts first (stable), then the m first are rendered; beyond the bound nothing is dropped
  # silently: has_host is cleared for any object that could not be rendered.
  order = jnp.argsort(~has_host, stable=True)[:m]
  rendered = jnp.zeros((b,), bool).at[order].set(True) & has_host
  take = lambda name: objects[name][order]
  k_gal, k_off = jnp.moveaxis(take('galaxy_keys'), 1, 0)
  pixel_scale = sim.survey.pixel_scale
  gal = jax.vmap(lambda k: render.sample_galaxy(k, sim.galaxy_config, pixel_scale))(
      jax.random.wrap_key_data(k_gal))
  is_galaxy = take('label') == sim.galaxy_id
  if objects.get('redshift') is not None and sim.host_tables is not None:
    z = take('redshift').astype(jnp.float32)
    use_z = jnp.isfinite(z) & (z > 0) & ~is_galaxy
    gal_z = jax.vmap(lambda k, zz: render.sample_host_at_redshift(
        k, zz, sim.galaxy_config, sim.host_tables, pixel_scale))(
            jax.random.wrap_key_data(k_gal), jnp.where(use_z, z, 0.1))
    gal = jax.tree.map(lambda a, b: jnp.where(use_z, a, b), gal_z, gal)
  ox, oy = jax.vmap(lambda k, g: render.sample_host_offset(k, g, pixel_scale))(
      jax.random.wrap_key_data(k_off), gal)
  # The Galaxy class is the galaxy alone, centred; a host sits so the source lies on its profile.
  centre = take('center')  # [m, E, 2]
  dx, dy = centre[..., 0], centre[..., 1]
  g = is_galaxy[:, None]
  gx, gy = jnp.where(g, dx, dx - ox[:, None]), jnp.where(g, dy, dy - oy[:, None])
  size, kind, beta = sim.stamp_size, sim.psf_kind, sim.moffat_beta
  one = lambda g, x, y, f: jax.vmap(lambda w, xx, yy: render.galaxy_stamp(
      g, w, xx, yy, size, kind, beta, pixel_scale, sim.psf_bank))(f, x, y)
  stamps = jax.vmap(one)(gal, gx, gy, take('fwhm_px'))
  on = rendered[order][:, None] & take('epoch_valid')
  host_mag = gal.mag[:, None]
  if sim.num_bands > 1:  # the galaxy's magnitude is the reference band's; its colour per epoch
    host_mag = host_mag + sim.host_colour[take('band')]
  host_total = jnp.where(on, take('flux_factor') * render.mag_to_adu(
      host_mag, take('zero_point'), take('exp_time_s')), 0.0)
  host = host_total[:, :, None, None] * stamps
  out = dict(objects)
  out['noiseless'] = objects['noiseless'].at[order].add(host)
  out['host_flux_adu'] = jnp.zeros(objects['epoch_valid'].shape, host.dtype).at[order].set(
      host.sum(axis=(-2, -1)))
  out['magnitude'] = objects['magnitude'].at[order].set(
      jnp.where(is_galaxy, gal.mag, take('magnitude')))
  out['has_host'] = rendered
  out['host_r_disk_arcsec'] = jnp.zeros((b,), gal.r_disk_px.dtype).at[order].set(
      jnp.where(rendered[order], gal.r_disk_px * pixel_scale, 0.0))
  if sim.psf_kind == 'bank':
    # A bank PSF need not be symmetric: a random symmetry of the square augments its
    # orientations. Stamps with a circular PSF need none: their distribution is already
    # invariant under the square's symmetries (sub-pixel centre uniform in the pixel, position
    # angle uniform, host offset drawn in the host's frame, i.i.d. noise), and the per-pixel
    # gather cost a tenth of the simulator's time.
    out['noiseless'] = jax.vmap(_dihedral)(out['noiseless'], out['rotation'])
  for k in ('galaxy_keys', 'center', 'fwhm_px', 'rotation'):
    del out[k]
  return out


def _observe(objects, sim: Simulator):
  """Batch level: CCD noise on the noiseless stamps, then eq. 4 and the n_w stacks.

  Noise is drawn per object from its own key (so a batch split across devices is the same
  batch), outside the per-object vmap so that ``render.add_noise`` can branch once per batch.
  """
  out = dict(objects)
  noiseless = out.pop('noiseless')
  keys = jax.random.wrap_key_data(out.pop('noise_key'))
  per = lambda x: x[:, None, None, None]
  raw = render.add_noise_batch(keys, noiseless, per(out['gain']), per(out['read_noise_e']),
                               per(out['saturation_adu']), sim.poisson)
  sky = out['sky_adu']
  raw = jnp.where(out['epoch_valid'][..., None, None], raw, sky[..., None, None])
  # The shared definition of a model input (real files go through the same function).
  # Padded steps carry nothing (their first images may be real, but the step is not).
  out['images'], out['time_gaps'] = jax.vmap(
      lambda r, s, z, zr, t, m: sequences.observe_steps(r, s, z, zr, t, m, sim.n_w))(
          raw, sky, out['zero_point'], out['zero_point_ref'], out['t_days'], out['mask'])
  if sim.num_bands > 1:
    out['time_gaps'] = jax.vmap(lambda g, b, m: bands_lib.side_input(
        g, b, m, sim.n_w, sim.num_bands))(out['time_gaps'], out['band'], out['mask'])
  out['raw_adu'] = raw
  return out


def photometry_features(batch, sim: Simulator):
  """Sec. 3.3 input: optimal-photometry fluxes and variances per image, scaled like eq. 4.

  [..., E, H, W] raw stamps -> [..., T, 2 * n_w] features (n_w fluxes, then n_w variances).
  """
  def per_image(raw, sky, seeing, gain, rn):
    return photometry.optimal_flux(raw - sky, psf_fwhm_px(seeing, sim), sky, gain, rn,
                                   sim.psf_kind, sim.moffat_beta, sim.psf_bank)

  lead = batch['raw_adu'].shape[:-3]
  e = batch['raw_adu'].shape[-3]
  bcast = lambda x: jnp.broadcast_to(x[..., None], lead + (e,))
  flat = lambda x: x.reshape((-1,) + x.shape[len(lead) + 1:])
  flux, var = jax.vmap(per_image)(
      flat(batch['raw_adu']), flat(batch['sky_adu']), flat(batch['seeing_arcsec']),
      flat(bcast(batch['gain'])), flat(bcast(batch['read_noise_e'])))
  scale = sequences.flux_scale(batch['zero_point'], batch['zero_point_ref'][..., None])
  valid = batch['epoch_valid']
  flux = jnp.where(valid, flux.reshape(lead + (e,)) * scale, 0.0)
  var = jnp.where(valid, var.reshape(lead + (e,)) * scale**2, 0.0)
  stack = jax.vmap(lambda f, v: jnp.concatenate(
      [sequences.stack_steps(f, sim.n_w), sequences.stack_steps(v, sim.n_w)], -1))
  return stack(flux.reshape((-1, e)), var.reshape((-1, e))).reshape(
      lead + (sim.max_steps, 2 * sim.n_w))


def simulate_indices(key, sim: Simulator, index, consecutive=False):
  """Objects with global indices ``index`` [B]: keys fold_in(key, i), labels i % num_classes.

  ``consecutive`` (static): the caller guarantees index[i] = index[0] + i (a batch, or a
  device's shard of one), so that the schedules can run per class (``_draw_schedules``); the
  objects are the same either way.
  """
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # legacy uint32 keys
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), 6))(index)  # [B, 6]
  labels = (index % sim.num_classes).astype(jnp.int32)
  hosts = assign_hosts(key, index, sim)
  first = index[0] % sim.num_classes if consecutive else None
  *schedule, redshift = _draw_schedules(keys[:, 0], labels, sim, first)
  objects = jax.vmap(simulate_object, in_axes=(0, 0, 0, 0, None))(keys, labels, hosts,
                                                                   tuple(schedule), sim)
  objects['redshift'] = redshift.astype(jnp.float32)  # supernovae; NaN for other classes
  return _observe(_add_hosts(objects, sim), sim)


def simulate_batch(key, sim: Simulator, batch_size: int, offset=0):
  """A batch of ``batch_size`` objects (global indices offset .. offset + batch_size - 1)."""
  return simulate_indices(key, sim, offset + jnp.arange(batch_size, dtype=jnp.int32),
                          consecutive=True)
