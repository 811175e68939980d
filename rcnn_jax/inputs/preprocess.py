"""Real sequences prepared exactly as the simulator prepares its own: the rules in one place.

A real file (``realdata.RealSequence``: raw stamps with sky, MJD, zero points, sky, seeing)
becomes a model input by the same steps as a simulated object, and through the same code
(``sequences.reference_zero_point`` and ``sequences.observe_steps``, which the simulator's
``_observe`` calls too):

1. Epoch selection (``select_epochs``): epochs with seeing above
   ``config.survey.max_seeing_arcsec`` are dropped, as ``survey.build_survey`` drops them from
   every training field (about 15 % of the real HiTS epochs, up to 3.45"). An epoch whose seeing
   is NaN (its observing conditions were not measured) is dropped too (``config.real.
   drop_unknown_seeing``): the survey's conditions table, from which the simulator draws every
   training epoch, has no row for it, so its zero point and sky in the file are fill values and
   eq. 4 cannot be trusted. Measured on the development files: all 13 field-17 non-variables
   carry one such epoch (MJD 57073.05, zero point 25.045 copied from another epoch), 33 % fainter
   in a 9.5 px aperture than their median, which the first issue-12 CPU model read as
   variability (12 of its 14 non-variable errors; experiments/real_dev/README.md). Fallback,
   said once on stderr: a file without seeing keeps all its epochs.
2. Reference zero point: the zero point of the first kept epoch of the file (the file covers
   its field from the start of the campaign), as the simulator takes its field's first good
   epoch, whatever epoch the sequence starts on. A file without zero points: no scaling
   (said once on stderr).
3. Sky: the table's ``sky_adu`` as given. Measured on the 70 development files
   (``experiments/real_dev/sky_residual.json``, outer 3-px ring clipped median minus
   ``sky_adu``): median residual +1.5 ADU on dark nights (0.27 of the 5.5 ADU per-pixel sky
   noise) and -2.1 ADU on moonlit nights (-0.18 of 12.4 ADU). The residual is a fraction of
   the noise, so real inputs keep the table's sky and training needs no residual; its 95th
   percentile (+30 ADU) comes from neighbours and hosts that fall in the ring, which would
   bias a ring re-estimate, not improve it. Files without ``sky_adu`` use the ring estimate
   (``realdata.estimate_sky``).
4. Sequence start: the first kept epoch (``start='first'``, every class but the transients in
   Sec. 4), or ``sim.pre_detection`` kept epochs before the first detection
   (``start='detection'``, see ``detection_start``: PSF-matched differences from the early
   baseline, as an image-subtraction pipeline detects), floored at the first epoch.
5. Window: ``sim.max_steps`` steps at most (the paper's "after 20 inputs"; the model never saw
   more), unless ``max_steps=None`` asks for every step.
6. Eq. 4, the n_w stacks and the time gaps (days since the sequence's first image) by
   ``sequences.observe_steps``, in float32 like the simulator; MJD differences are taken in
   float64 first.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy import optimize
from scipy import special

from rcnn_jax.core.errors import BadInput
from rcnn_jax.core.errors import UserError
from rcnn_jax.inputs import plausibility as plausibility_lib
from rcnn_jax.sim import photometry
from rcnn_jax.sim import render
from rcnn_jax.sim import sequences
from rcnn_jax.sim import survey as survey_lib


@dataclasses.dataclass(frozen=True)
class Rules:
  """The settings the preparation needs, all from a config (``Rules.from_config``).

  A field left None is not set: the preparation steps that need it fail (no default can
  contradict the config's).
  """
  n_w: int | None = None
  max_steps: int | None = None
  pre_detection: int | None = None
  max_seeing_arcsec: float | None = None  # None: no seeing cut
  drop_unknown_seeing: bool | None = None  # NaN seeing: conditions not measured, dropped
  # First detection (Sec. 3.1 on real stamps): baseline epochs and threshold.
  baseline_epochs: int | None = None
  detection_sigma: float | None = None
  detection_method: str | None = None  # 'difference' (PSF-matched) | 'photometry'
  # Photometry of the detection rule: PSF as the simulator renders it, camera as the survey's.
  pixel_scale: float | None = None
  seeing_scale: float | None = None
  seeing_offset_arcsec: float | None = None
  psf_kind: str | None = None
  moffat_beta: float | None = None
  gain: float | None = None
  read_noise_e: float | None = None
  transient_classes: tuple | None = None
  # Implausible epochs (``plausibility``): zero-point and pixel ranges of the survey; None: off.
  plausibility: dict | None = None

  @classmethod
  def from_config(cls, config) -> 'Rules':
    """Rules of a config (a training workdir's saved one included)."""
    sc, sv, psf = config.sim, config.survey, config.sim.psf
    gain, rn = camera_gain_read_noise(config)
    kind = str(psf.kind)
    return cls(
        n_w=int(sc.n_w), max_steps=int(sc.max_steps), pre_detection=int(sc.pre_detection),
        max_seeing_arcsec=float(sv.max_seeing_arcsec),
        # Saved configs from before the field get today's rule (NaN seeing dropped).
        drop_unknown_seeing=bool(config.real.get('drop_unknown_seeing', True)),
        baseline_epochs=int(config.real.baseline_epochs),
        detection_sigma=float(config.real.detection_sigma),
        # Saved configs from before the field get today's rule (PSF-matched differences).
        detection_method=str(config.real.get('detection_method', 'difference')),
        pixel_scale=float(sv.pixel_scale_arcsec),
        seeing_scale=float(psf.seeing_scale),
        seeing_offset_arcsec=float(psf.seeing_offset_arcsec),
        # A PSF bank is the simulator's; the detection's matched filter uses its Moffat model.
        psf_kind='moffat' if kind == 'bank' else kind,
        moffat_beta=float(psf.moffat_beta), gain=gain, read_noise_e=rn,
        transient_classes=tuple(sc.transient_classes),
        plausibility=plausibility_lib.limits_from_config(config))


def camera_gain_read_noise(config) -> tuple[float, float]:
  """(gain e-/ADU, read noise e-) for a real file of unknown CCD: the camera table's medians
  when ``survey.camera_path`` is set, else the built-in model's (middle of ``gain_range``,
  ``read_noise_median_e``)."""
  sv = config.survey
  path = str(sv.camera_path or '')
  if path:
    cam = survey_lib.read_camera(path)
    return float(np.median(cam['gain'])), float(np.median(cam['read_noise_e']))
  lo, hi = sv.gain_range
  return 0.5 * (float(lo) + float(hi)), float(sv.read_noise_median_e)


class Warnings:
  """Says each fallback once on stderr (per kind of problem), however many files share it."""

  def __init__(self, stream=None):
    self.stream = stream
    self.seen = set()

  def __call__(self, kind, message):
    if kind in self.seen:
      return
    self.seen.add(kind)
    print(f'warning: {message}', file=self.stream or sys.stderr)


_DEFAULT_WARN = Warnings()


def select_epochs(seq, max_seeing_arcsec, warn=None, drop_unknown=True,
                  plausibility=None) -> np.ndarray:
  """Indices of the epochs kept: seeing <= max_seeing_arcsec (None: all), as in training; an
  epoch of NaN (unknown) seeing is dropped when ``drop_unknown`` (module docstring, step 1); an
  implausible epoch (``plausibility.epoch_problems`` with the ``plausibility`` limits: a zero
  point far outside the survey's, non-positive seeing, exposure or sky, pixels beyond what the
  camera records) is dropped with one line naming the file and the epoch."""
  warn = warn or _DEFAULT_WARN
  e = seq.num_epochs
  ok = np.ones(e, bool)
  if plausibility is not None:
    why = plausibility_lib.epoch_problems(
        plausibility, zero_point=seq.zero_point, seeing_arcsec=seq.seeing_arcsec,
        sky_adu=None if seq.sky_estimated else seq.sky_adu,
        exp_time_s=getattr(seq, 'exp_time_s', None), stamps=seq.stamps)
    for i, w in enumerate(why):
      if w:
        ok[i] = False
        warn(f'implausible:{_who(seq)}:{i}', f'{_who(seq)}: epoch {i} (MJD {seq.mjd[i]:.5f}) '
             f'dropped: {w}')
  if max_seeing_arcsec is None:
    return np.flatnonzero(ok)
  if seq.seeing_arcsec is None:
    warn('no_seeing', f'{seq.name}: no seeing column: all epochs kept (training drops seeing > '
         f'{max_seeing_arcsec}"); said once for all such files')
    return np.flatnonzero(ok)
  seeing = np.asarray(seq.seeing_arcsec, np.float64)
  unknown = ~np.isfinite(seeing)
  if unknown.any():
    what = 'dropped (conditions not measured)' if drop_unknown else 'kept'
    warn('nan_seeing', f'{seq.name}: {int(unknown.sum())} epoch(s) of unknown (NaN) seeing '
         f'{what}; said once for all such files')
  return np.flatnonzero(ok & ((unknown & (not drop_unknown)) | (seeing <= max_seeing_arcsec)))


def _who(seq) -> str:
  """How a sequence is named in a message: its path (``object_id``), else its name."""
  return getattr(seq, 'object_id', None) or seq.name


def _fwhm_px(seeing_arcsec, rules: Rules) -> np.ndarray:
  """[E] PSF FWHM (px) of the epochs, as the simulator renders them; NaN seeing takes the
  file's median (1.3" when none is known)."""
  seeing = np.asarray(seeing_arcsec, np.float64)
  good = np.isfinite(seeing)
  seeing = np.where(good, seeing, np.median(seeing[good]) if good.any() else 1.3)
  return np.asarray(render.seeing_to_fwhm_px(jnp.asarray(seeing, jnp.float32), rules.pixel_scale,
                                             rules.seeing_scale, rules.seeing_offset_arcsec),
                    np.float64)


def epoch_photometry(images, seeing_arcsec, sky_adu, rules: Rules):
  """(flux [E], sigma [E]) of a centred point source on sky-subtracted images (``photometry``).

  sigma is the optimal photometry's own error (Naylor 1998): sky and read noise (table sky,
  the camera's gain and read noise) plus the Poisson noise of the measured flux. For a source
  near the detection limit the sky term dominates: the noise that defines a survey's 5-sigma
  limiting magnitude. NaN seeing takes the file's median.
  """
  fwhm = jnp.asarray(_fwhm_px(seeing_arcsec, rules), jnp.float32)
  one = lambda img, w, sky: photometry.optimal_flux(img, w, sky, rules.gain, rules.read_noise_e,
                                                    rules.psf_kind, rules.moffat_beta)
  flux, var = jax.vmap(one)(jnp.asarray(images, jnp.float32), fwhm,
                            jnp.asarray(sky_adu, jnp.float32))
  return np.asarray(flux, np.float64), np.sqrt(np.asarray(var, np.float64))


def first_detection(flux, sigma, baseline_epochs, nsigma=5.0) -> int:
  """Index of the first epoch with flux - baseline > nsigma * sigma, or len(flux) if none.

  baseline = median flux of the first ``baseline_epochs`` epochs (0: none, the flux is a
  difference already) (HiTS 2015 observed each
  field 3 to 4 times on its first night: the median of three is robust to one outlier and is
  the object before it could have changed much). sigma is each epoch's own photometric error
  (``epoch_photometry``: sky, read noise and the flux's Poisson noise, so a bright host or
  star does not make noise look like a detection). This is the simulator's rule
  (``sequences.first_detection``: source magnitude brighter than the epoch's 5-sigma limiting
  magnitude, i.e. source flux above 5 sigma of that epoch's sky noise), with the early baseline
  standing in for the flux of whatever was there before the transient (a host, a template),
  which the simulator knows and a real stamp does not.
  """
  flux, sigma = np.asarray(flux, np.float64), np.asarray(sigma, np.float64)
  base = np.median(flux[:int(baseline_epochs)]) if int(baseline_epochs) > 0 else 0.0
  hit = np.flatnonzero(flux - base > nsigma * sigma)
  return int(hit[0]) if hit.size else len(flux)


def _eq4_images(seq, kept, zp_ref):
  """[K, S, S] float32 eq. 4 images of the kept epochs (the simulator's float32 arithmetic)."""
  stamps = jnp.asarray(seq.stamps[kept], jnp.float32)
  sky = jnp.asarray(seq.sky_adu[kept], jnp.float32)
  if zp_ref is None:
    return np.asarray(stamps - sky[:, None, None])
  zp = jnp.asarray(seq.zero_point[kept], jnp.float32)
  return np.asarray(sequences.preprocess(stamps, sky, zp, jnp.float32(zp_ref)))


def _mixture_stamp_np(fwhm_px, extra_sigma_px, size, kind, beta):
  """The sub-pixel-averaged PSF template (``photometry.mean_psf``) of FWHM ``fwhm_px``
  convolved with a Gaussian of sigma ``extra_sigma_px``, in float64 numpy."""
  w, s = render.psf_mixture(kind, beta)
  sig = np.sqrt((np.asarray(s, np.float64) * fwhm_px)**2 + 1.0 / 12.0 + extra_sigma_px**2)
  edges = np.arange(size + 1, dtype=np.float64) - size / 2.0
  c = special.erf(edges[:, None] / (np.sqrt(2.0) * sig))
  cells = 0.5 * (c[1:] - c[:-1])  # [size, K]
  return np.einsum('yk,xk,k->yx', cells, cells, np.asarray(w, np.float64))


def matching_kernel_sigma(fwhm_sharp_px, fwhm_broad_px, rules: Rules) -> float:
  """Sigma (px) of the Gaussian that best turns the sharper PSF into the broader one: the
  least-squares fit of the sharper template convolved with it to the broader template
  (``_mixture_stamp_np``). A Moffat convolved with a Gaussian is not a Moffat; matching the
  FWHM alone (sigma^2 = (FWHM_b^2 - FWHM_s^2) / 2.355^2) leaves a host residual of up to 7
  sigma at 0.9" against 1.8" (``tests/test_preprocess.py``), the fit one of 2 to 4 sigma."""
  size = 21
  target = _mixture_stamp_np(fwhm_broad_px, 0.0, size, rules.psf_kind, rules.moffat_beta)
  def loss(k):
    t = _mixture_stamp_np(fwhm_sharp_px, k, size, rules.psf_kind, rules.moffat_beta)
    return float(np.sum((t - target)**2))
  hi = max(3.0 * float(np.sqrt(max(fwhm_broad_px**2 - fwhm_sharp_px**2, 0.0))), 1e-3)
  return float(optimize.minimize_scalar(loss, bounds=(0.0, hi), method='bounded',
                                        options={'xatol': 1e-4}).x)


def matched_difference_flux(images, fwhm_px, baseline_epochs, rules: Rules):
  """[E] flux of each epoch's centred point source minus the early baseline's, PSF-matched.

  What a survey's image-subtraction pipeline measures (Alard & Lupton 1998; HiTS's, which found
  the paper's real supernovae, subtracts a PSF-matched template: Forster et al. 2016, ApJ 832,
  155): for each epoch e and each baseline epoch b (the first ``baseline_epochs``), the
  sharper of the two images is convolved with the Gaussian that best matches its PSF to the
  other's (``matching_kernel_sigma``), and each image's flux is measured with its own PSF
  template convolved the same way (``_mixture_stamp_np``), so a point source's flux is
  unbiased in both. A static extended host then has nearly the same shape in both images and
  cancels; plain PSF photometry (``epoch_photometry``) of a host measures a flux that changes
  with the seeing: on the development supernovae's hosts (~1,000 to 2,500 ADU) by up to 16
  sigma between epochs of one night, which started their sequences at false detections. The
  difference is the median over the baseline epochs (robust to one bad epoch, as
  ``first_detection``'s baseline). Images: sky-subtracted [E, S, S]; fwhm_px [E].
  """
  img = np.asarray(images, np.float64)
  fwhm = np.asarray(fwhm_px, np.float64)
  size = img.shape[-1]
  nb = max(1, min(int(baseline_epochs), len(img)))

  def measure(im, f, extra):
    p = _mixture_stamp_np(f, extra, size, rules.psf_kind, rules.moffat_beta)
    sm = ndimage.gaussian_filter(im, extra, mode='nearest') if extra > 0.0 else im
    return float(np.sum(p * sm) / np.sum(p * p))  # uniform sky: the optimal weights

  kernels = {}
  diff = np.empty((len(img), nb))
  for e in range(len(img)):
    for b in range(nb):
      sharp, broad = sorted((fwhm[e], fwhm[b]))
      if (sharp, broad) not in kernels:
        kernels[sharp, broad] = (matching_kernel_sigma(sharp, broad, rules)
                                 if broad > sharp else 0.0)
      k = kernels[sharp, broad]
      if fwhm[e] >= fwhm[b]:
        diff[e, b] = measure(img[e], fwhm[e], 0.0) - measure(img[b], fwhm[b], k)
      else:
        diff[e, b] = measure(img[e], fwhm[e], k) - measure(img[b], fwhm[b], 0.0)
  return np.median(diff, axis=1)


def detection_start(seq, kept, zp_ref, rules: Rules, warn=None) -> int:
  """Position (among the kept epochs) where a transient's sequence starts: ``pre_detection``
  epochs before its first detection, floored at 0; 0 with a warning when never detected.

  ``rules.detection_method``: 'difference' (the default): the first epoch whose PSF-matched
  difference from the early baseline (``matched_difference_flux``) exceeds
  ``detection_sigma`` times the difference's error (the epoch's own photometric error and the
  baseline median's, pi/2 sigma_b^2 / n_b); the simulator's rule (the transient's own flux
  above 5 sigma of the epoch's sky noise) measured on real stamps, where a host is present
  and the seeing changes. 'photometry': plain PSF photometry above the baseline median
  (``first_detection``), the rule before 2026-12; it fires on a host's seeing-driven changes.
  """
  warn = warn or _DEFAULT_WARN
  if seq.seeing_arcsec is None:
    seeing = np.full(len(kept), np.nan)
  else:
    seeing = np.asarray(seq.seeing_arcsec, np.float64)[kept]
  images = _eq4_images(seq, kept, zp_ref)
  sky = np.asarray(seq.sky_adu, np.float64)[kept]
  flux, sigma = epoch_photometry(images, seeing, sky, rules)
  if zp_ref is not None:  # sigma in eq. 4 units, like the flux
    sigma = sigma * 10.0**((zp_ref - np.asarray(seq.zero_point, np.float64)[kept]) / 2.5)
  if rules.detection_method == 'difference':
    nb = max(1, min(int(rules.baseline_epochs), len(kept)))
    diff = matched_difference_flux(images, _fwhm_px(seeing, rules), nb, rules)
    sigma = np.sqrt(sigma**2 + 0.5 * np.pi * np.mean(sigma[:nb]**2) / nb)
    det = first_detection(diff, sigma, 0, rules.detection_sigma)
  elif rules.detection_method == 'photometry':
    det = first_detection(flux, sigma, rules.baseline_epochs, rules.detection_sigma)
  else:
    raise UserError("config.real.detection_method must be 'difference' or 'photometry', got "
                    f'{rules.detection_method!r}')
  if det >= len(kept):
    warn(f'undetected:{seq.name}', f'{seq.name}: never {rules.detection_sigma:g} sigma above '
         'its early baseline; its sequence starts at the first epoch')
    return 0
  return max(det - rules.pre_detection, 0)


def prepare(seq, rules: Rules, start='first', max_steps='config', warn=None) -> dict:
  """A real sequence's model input, prepared as the simulator prepares its objects.

  ``start``: 'first' (the first kept epoch), 'detection' (``detection_start``) or an int
  position among the kept epochs. ``max_steps``: 'config' (``rules.max_steps``, the default),
  an int, or None (every step). Returns images [T, S, S, n_w] float32, time_gaps [T, n_w]
  float32, mask [T] bool, mjd_last [T] float64, num_steps, and epochs (the file's indices of
  the E used images), start (their first), kept (all kept indices).
  """
  warn = warn or _DEFAULT_WARN
  n_w = rules.n_w
  kept = select_epochs(seq, rules.max_seeing_arcsec, warn, rules.drop_unknown_seeing,
                       rules.plausibility)
  if len(kept) < n_w:
    raise BadInput(_who(seq), _too_few(seq, kept, rules))
  if seq.zero_point is None:
    warn('no_zero_point', f'{seq.name}: no zero points: no eq. 4 scaling; said once for all '
         'such files')
    zp_ref = None
  else:
    zp_ref = float(sequences.reference_zero_point(
        np.asarray(seq.zero_point, np.float64)[kept]))
  if start == 'first':
    s0 = 0
  elif start == 'detection':
    s0 = detection_start(seq, kept, zp_ref, rules, warn)
  elif isinstance(start, (int, np.integer)):
    s0 = int(start)
  else:
    raise ValueError(f"start must be 'first', 'detection' or an int, got {start!r}")
  if max_steps == 'config':
    max_steps = rules.max_steps
  steps = len(kept) - s0 - n_w + 1
  if steps < 1:
    raise BadInput(_who(seq), f'{len(kept) - s0} usable epochs from the start, fewer than '
                   f'n_w = {n_w}')
  if max_steps is not None:
    steps = min(steps, int(max_steps))
  epochs = kept[s0:s0 + steps + n_w - 1]
  t_out = steps if max_steps is None else int(max_steps)
  e_out = t_out + n_w - 1
  pad = e_out - len(epochs)
  # Padded epochs repeat the last one, as the simulator clamps its indices; masked steps are 0.
  idx = np.concatenate([epochs, np.full(pad, epochs[-1], epochs.dtype)])
  mjd = np.asarray(seq.mjd, np.float64)
  t_days = (mjd[idx] - mjd[epochs[0]]).astype(np.float32)
  step_mask = np.arange(t_out) < steps
  raw = jnp.asarray(seq.stamps[idx], jnp.float32)
  sky = jnp.asarray(seq.sky_adu[idx], jnp.float32)
  if zp_ref is None:
    zp, zr = jnp.zeros(e_out, jnp.float32), jnp.float32(0.0)
  else:
    zp = jnp.asarray(np.asarray(seq.zero_point)[idx], jnp.float32)
    zr = jnp.float32(zp_ref)
  images, gaps = sequences.observe_steps(raw, sky, zp, zr, jnp.asarray(t_days),
                                         jnp.asarray(step_mask), n_w)
  mjd_last = np.full(t_out, np.nan)
  mjd_last[:steps] = mjd[epochs[n_w - 1:n_w - 1 + steps]]
  epoch_valid = np.arange(e_out) < len(epochs)
  if seq.seeing_arcsec is None:
    seeing = np.full(e_out, np.nan, np.float32)
  else:
    seeing = np.asarray(seq.seeing_arcsec, np.float32)[idx]
  return dict(images=np.asarray(images), time_gaps=np.asarray(gaps), mask=step_mask,
              mjd_last=mjd_last, num_steps=int(steps), epochs=epochs, start=int(epochs[0]),
              kept=kept,
              # The window's raw epochs (what the simulator's batch holds, for photometry).
              raw_adu=np.asarray(raw), sky_adu=np.asarray(sky), zero_point=np.asarray(zp),
              zero_point_ref=np.float32(zr), seeing_arcsec=seeing, epoch_valid=epoch_valid,
              t_days=t_days)


def _too_few(seq, kept, rules: Rules) -> str:
  """Why a file has fewer than n_w usable epochs: the counts each rule dropped."""
  e = seq.num_epochs
  parts = []
  if seq.seeing_arcsec is not None and rules.max_seeing_arcsec is not None:
    s = np.asarray(seq.seeing_arcsec, np.float64)
    unknown = int((~np.isfinite(s)).sum())
    if unknown and rules.drop_unknown_seeing:
      parts.append(f'{unknown} of unknown (NaN) seeing')
    with np.errstate(invalid='ignore'):
      above = int((s > rules.max_seeing_arcsec).sum())
    if above:
      parts.append(f'{above} with seeing above the {rules.max_seeing_arcsec:g}" cut')
  dropped = ' (' + ', '.join(parts) + ' dropped)' if parts else ''
  return (f'{len(kept)} usable epoch(s) of {e}{dropped}, fewer than n_w = {rules.n_w}; not '
          'classified')


def start_for_class(class_name, rules: Rules) -> str:
  """Sec. 4: transients (supernovae, asteroids) start at their detection, others at epoch 1."""
  return 'detection' if class_name in rules.transient_classes else 'first'
