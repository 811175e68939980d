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

from rcnn_jax import lightcurves
from rcnn_jax import photometry
from rcnn_jax import render
from rcnn_jax import sequences
from rcnn_jax import survey as survey_lib


@flax.struct.dataclass
class Simulator:
  """Everything the simulator needs: arrays as pytree leaves, settings as static fields."""
  survey: survey_lib.Survey
  lightcurves: Any
  psf_bank: Any
  host_fraction: jnp.ndarray  # [num_classes]
  class_names: tuple = flax.struct.field(pytree_node=False, default=())
  stamp_size: int = flax.struct.field(pytree_node=False, default=21)
  n_w: int = flax.struct.field(pytree_node=False, default=3)
  max_steps: int = flax.struct.field(pytree_node=False, default=20)
  pre_detection: int = flax.struct.field(pytree_node=False, default=5)
  transient_ids: tuple = flax.struct.field(pytree_node=False, default=(0, 6))
  galaxy_id: int = flax.struct.field(pytree_node=False, default=5)
  psf_kind: str = flax.struct.field(pytree_node=False, default='moffat')
  moffat_beta: float = flax.struct.field(pytree_node=False, default=3.0)
  galaxy_config: Any = flax.struct.field(pytree_node=False, default=None)
  poisson: bool = flax.struct.field(pytree_node=False, default=True)
  max_redraws: int = flax.struct.field(pytree_node=False, default=200)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_images(self) -> int:
    """E = T + n_w - 1 raw images per sequence."""
    return self.max_steps + self.n_w - 1


def build_simulator(config) -> Simulator:
  """Host side: reads or draws the survey, tabulates templates. Fast enough to call per run."""
  sc = config.sim
  names = tuple(sc.class_names)
  for required in ('Supernova', 'Galaxy', 'Asteroid'):
    if required not in names:
      raise ValueError(f'config.sim.class_names must include {required!r}')
  unknown = [c for c in sc.transient_classes if c not in names]
  if unknown:
    raise ValueError(f'config.sim.transient_classes: unknown class {unknown[0]!r}')
  if sc.n_w < 1 or sc.max_steps < 1 or sc.pre_detection < 0:
    raise ValueError('config.sim: n_w and max_steps must be >= 1 and pre_detection >= 0')
  surv = survey_lib.build_survey(config.survey, min_epochs=sc.pre_detection + sc.n_w)
  host = [sc.host_fraction_supernova if n == 'Supernova' else
          1.0 if n == 'Galaxy' else sc.host_fraction_other for n in names]
  bank = render.load_psf_bank(sc.psf.bank_path) if sc.psf.kind == 'bank' else None
  return Simulator(
      survey=surv, lightcurves=lightcurves.build_lightcurve_model(sc), psf_bank=bank,
      host_fraction=jnp.asarray(host, jnp.float32), class_names=names,
      stamp_size=int(sc.stamp_size), n_w=int(sc.n_w), max_steps=int(sc.max_steps),
      pre_detection=int(sc.pre_detection),
      transient_ids=tuple(names.index(c) for c in sc.transient_classes),
      galaxy_id=names.index('Galaxy'), psf_kind=str(sc.psf.kind),
      moffat_beta=float(sc.psf.moffat_beta), galaxy_config=sc.galaxy.to_dict(),
      poisson=bool(sc.poisson), max_redraws=int(sc.max_redraws))


def _draw_schedule(key, label, sim: Simulator):
  """Draws field, CCD and light curve until the object fits Sec. 3.1's window.

  Transients must be detected with ``pre_detection`` images before; other classes take their
  start (so their N_d) from a transient drawn on the same field, so that N_d follows one
  distribution for all classes. Redraws keep the classes exactly balanced.
  """
  surv, lcm = sim.survey, sim.lightcurves
  is_transient = jnp.isin(label, jnp.asarray(sim.transient_ids))

  def attempt(k):
    kf, kc, klc, kg, kgc = jax.random.split(k, 5)
    field = jax.random.randint(kf, (), 0, surv.num_fields)
    ccd = jax.random.randint(kc, (), 0, surv.num_ccds)
    t, n = surv.t_days[field], surv.num_epochs[field]
    mag, ref = lightcurves.sample_magnitudes(klc, label, t, n, lcm)
    ghost_class = jnp.asarray(sim.transient_ids)[
        jax.random.randint(kgc, (), 0, len(sim.transient_ids))]
    ghost, _ = lightcurves.sample_magnitudes(kg, ghost_class, t, n, lcm)
    det = sequences.first_detection(jnp.where(is_transient, mag, ghost), surv.limmag5[field], n)
    start, ok = sequences.sequence_start(det, n, sim.pre_detection, sim.n_w)
    return ok, (field, ccd, mag, ref, start)

  def cond(state):
    i, _, ok, _ = state
    return (~ok) & (i < sim.max_redraws)

  def body(state):
    i, k, _, _ = state
    k, sub = jax.random.split(k)
    ok, out = attempt(sub)
    return i + 1, k, ok, out

  k0, key = jax.random.split(key)
  ok, out = attempt(k0)
  _, _, ok, out = jax.lax.while_loop(cond, body, (jnp.int32(1), key, ok, out))
  return out


def _dihedral(images, k):
  """Applies one of the 8 rotations/mirrorings of the square to [..., H, W] images."""
  ops = [lambda x, r=r, m=m: jnp.rot90(jnp.flip(x, -1) if m else x, r, axes=(-2, -1))
         for m in (False, True) for r in range(4)]
  return jax.lax.switch(k, ops, images)


def simulate_object(key, label, sim: Simulator):
  """One labelled sequence: model inputs, raw stamps and the truth behind them."""
  surv = sim.survey
  k_sched, k_host, k_gal, k_off, k_ctr, k_noise, k_rot = jax.random.split(key, 7)
  field, ccd, mag, ref_mag, start = _draw_schedule(k_sched, label, sim)
  n = surv.num_epochs[field]
  idx, epoch_valid, step_mask = sequences.window(start, n, sim.max_steps, sim.n_w)

  t = surv.t_days[field, idx]
  zp = surv.zero_point[field, idx]
  sky = surv.sky_adu[field, idx]
  seeing = surv.seeing_arcsec[field, idx]
  exp_time = surv.exp_time_s[field, idx]
  zp_ref = surv.zero_point[field, 0]
  gain, read_noise = surv.gain[ccd], surv.read_noise_e[ccd]
  saturation = surv.saturation_adu[ccd]
  fwhm_px = seeing / surv.pixel_scale

  is_galaxy = label == sim.galaxy_id
  has_host = is_galaxy | jax.random.bernoulli(k_host, sim.host_fraction[label])
  gal = render.sample_galaxy(k_gal, sim.galaxy_config, surv.pixel_scale)
  dx, dy = jax.random.uniform(k_ctr, (2,), minval=-0.5, maxval=0.5)
  ox, oy = render.sample_host_offset(k_off, gal, surv.pixel_scale)
  # The Galaxy class is the galaxy alone, centred; a host sits so the source lies on its profile.
  gx = jnp.where(is_galaxy, dx, dx - ox)
  gy = jnp.where(is_galaxy, dy, dy - oy)

  source_adu = jnp.where(epoch_valid, render.mag_to_adu(mag[idx], zp, exp_time), 0.0)
  host_total = jnp.where(has_host, render.mag_to_adu(gal.mag, zp, exp_time), 0.0)

  size, kind, beta = sim.stamp_size, sim.psf_kind, sim.moffat_beta
  psf = jax.vmap(lambda w: render.psf_stamp(w, dx, dy, size, kind, beta, sim.psf_bank))(fwhm_px)
  galaxy = jax.vmap(lambda w: render.galaxy_stamp(gal, w, gx, gy, size, kind, beta,
                                                  surv.pixel_scale, sim.psf_bank))(fwhm_px)
  noiseless = (source_adu[:, None, None] * psf + host_total[:, None, None] * galaxy
               + sky[:, None, None])
  raw = render.add_noise(k_noise, noiseless, gain, read_noise, saturation, sim.poisson)
  raw = _dihedral(raw, jax.random.randint(k_rot, (), 0, 8))
  raw = jnp.where(epoch_valid[:, None, None], raw, sky[:, None, None])

  proc = sequences.preprocess(raw, sky, zp, zp_ref)
  return {
      'images': sequences.stack_steps(proc, sim.n_w),
      'time_gaps': sequences.time_gaps(t, sim.n_w),
      'mask': step_mask,
      'label': label.astype(jnp.int32),
      'raw_adu': raw,
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
      'source_flux_adu': source_adu,
      'host_flux_adu': host_total * galaxy.sum(axis=(-2, -1)),
      'magnitude': jnp.where(is_galaxy, gal.mag, ref_mag),
      'has_host': has_host,
      'field': field,
      'ccd': ccd,
  }


def photometry_features(batch, sim: Simulator):
  """Sec. 3.3 input: optimal-photometry fluxes and variances per image, scaled like eq. 4.

  [..., E, H, W] raw stamps -> [..., T, 2 * n_w] features (n_w fluxes, then n_w variances).
  """
  def per_image(raw, sky, seeing, gain, rn):
    return photometry.optimal_flux(raw - sky, seeing / sim.survey.pixel_scale, sky, gain, rn,
                                   sim.psf_kind, sim.moffat_beta)

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


def simulate_indices(key, sim: Simulator, index):
  """Objects with global indices ``index`` [B]: keys fold_in(key, i), labels i % num_classes."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
  labels = (index % sim.num_classes).astype(jnp.int32)
  return jax.vmap(simulate_object, in_axes=(0, 0, None))(keys, labels, sim)


def simulate_batch(key, sim: Simulator, batch_size: int, offset=0):
  """A batch of ``batch_size`` objects (global indices offset .. offset + batch_size - 1)."""
  return simulate_indices(key, sim, offset + jnp.arange(batch_size, dtype=jnp.int32))
