"""Epoch-to-epoch statistics of real and simulated sequences: constant stars and variables.

Part of ``python -m rcnn_jax.realism`` (see there); every measurement is the realism module's
(``stars.measure``: 9 x 9 pixel-integrated Gaussian centre, 8 px aperture flux corrected
by the model PSF's aperture fraction), applied identically to real and simulated stamps, on
epochs with seeing at most ``config.survey.max_seeing_arcsec`` (the epochs training sees).

* Constant stars (``twin_scatter``, ``calibrate_jitter``): per star, the scatter between its
  bright epochs (peak > stars.MIN_PEAK_SIGMA sigma) of the fitted centre (robust std per axis,
  ``astropy.stats.mad_std``, rms of the two axes) and of the flux relative to its median. Each
  real star has two simulated twins at its epochs, conditions and median centre: one with
  noise only (no registration or calibration error, a fixed centre) and one with the configured
  ``sim.astrometry`` (per-epoch uniform sub-pixel centres when ``subpixel_per_epoch``, plus
  ``centroid_jitter_px``), ``sim.calibration.zero_point_rms`` and the sky error
  (``sky_rms_adu``, ``sky_rms_fraction``; experiments/realism/sky_error.py). The real errors are
  estimated as sqrt(median(real^2) - median(noise-only^2)) over stars (flux; centroid for a
  fixed centre) and, for per-epoch sub-pixel centres, as sqrt(pooled variance of the real
  centres - 1/12 - noise variance); uncertainties by a bootstrap over stars. The pooled
  kurtosis of the centres tells a uniform (-1.2) from a Gaussian (0). configs/hits.py's
  defaults come from these.
* Variables (``variable_stats``): for each real RR Lyrae and eclipsing binary of the labelled
  development set, the light curve (epoch magnitudes) and ``num_sim`` simulated curves of the
  same class drawn by the simulator's light-curve model at the real epochs' times, shifted to
  the real star's median magnitude and rendered under the real epochs' conditions (with the
  configured registration and calibration errors). The simulated curves pass the simulator's
  variability selection first (``select_detectable`` at the real star's epochs and limiting
  magnitudes, as training keeps them); the kept share is reported. Statistics
  (``curve_stats``): amplitude = 95th - 5th percentile of the magnitudes; skewness of the
  magnitudes (scipy.stats.skew; > 0 for a faint tail, e.g. eclipses); faint fraction = share
  of epochs fainter than the median by more than max(0.1 mag, 3 x the epoch's photometric
  error). The 20 real variables only check the simulator; nothing is fitted to them.
"""

from __future__ import annotations

import os

from astropy import stats as astats
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as sstats

from rcnn_jax.core import utils
from rcnn_jax.core.errors import UserError
from rcnn_jax.inputs import realdata
from rcnn_jax.realism import stars
from rcnn_jax.realism import twins
from rcnn_jax.sim import lightcurves
from rcnn_jax.sim import photometry
from rcnn_jax.sim import render

MIN_BRIGHT_EPOCHS = 5   # bright usable epochs a star needs to enter the scatter statistics
FAINT_MIN_MAG = 0.1     # faint-epoch threshold (mag) below which the noise threshold applies
VARIABLE_CLASSES = ('RRLyrae', 'EclipsingBinary')
SELECTION_OVERSAMPLE = 4  # simulated candidates drawn per kept curve, for the selection


def _mad_std(x):
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(astats.mad_std(x)) if x.size else float('nan')


def usable_epochs(record, config):
  """Epochs a model input keeps (``preprocess``, step 1): seeing <= the survey's cut, and no
  epoch of unknown seeing when ``config.real.drop_unknown_seeing`` (the default)."""
  ok = record['seeing'] <= float(config.survey.max_seeing_arcsec)
  real = config.get('real', None) or {}
  if real.get('drop_unknown_seeing', True) and 'seeing_known' in record:
    ok = ok & np.asarray(record['seeing_known'], bool)
  return ok


def limiting_magnitude(record, config):
  """Per-epoch 5-sigma limiting magnitude of a real record, by the survey model's relation
  (``survey``: a ~3.7 FWHM^2 px aperture on the epoch's per-pixel noise): the limmag5 that the
  variability selection uses for simulated epochs."""
  pix = float(config.survey.pixel_scale_arcsec)
  fwhm_px = np.asarray(record['seeing'], np.float64) / pix
  s_ap = np.sqrt(3.7 * fwhm_px**2) * np.asarray(record['sigma'], np.float64)
  return np.asarray(record['zero_point']) - 2.5 * np.log10(
      5.0 * s_ap / np.asarray(record['exp_time_s'], np.float64))


def select_detectable(curves, limmag5, use, config):
  """Which simulated curves [N, E] pass the simulator's variability selection (config
  ``sim.variability``) at a real star's first ``sim.max_steps`` usable epochs."""
  v = config.sim.get('variability', None)
  if not v:
    return np.ones(len(curves), bool)
  idx = np.flatnonzero(use)[:int(config.sim.max_steps)]
  valid = jnp.ones(len(idx), bool)
  fn = jax.vmap(lambda m: lightcurves.detectable_variability(
      m, jnp.asarray(limmag5[idx], jnp.float32), valid, int(v.min_epochs), float(v.k_sigma),
      float(v.floor)))
  return np.asarray(fn(jnp.asarray(curves[:, idx], jnp.float32)))


def epoch_scatter(meas, record, use):
  """(centroid rms per axis [px], fractional flux rms) over the epochs ``use`` of one star.

  The flux is the aperture flux over the aperture fraction, brought to a common zero point and
  exposure time with the table values (eq. 1), relative to its median.
  """
  dx, dy = np.asarray(meas['dx']), np.asarray(meas['dy'])
  flux = (np.asarray(meas['flux']) / record['ap_frac'] / record['exp_time_s']
          * 10.0**(-0.4 * record['zero_point']))
  rel = flux[use] / np.median(flux[use]) - 1.0
  centroid = np.sqrt(0.5 * (_mad_std(dx[use])**2 + _mad_std(dy[use])**2))
  return centroid, _mad_std(rel)


def _render(key, record, mag_epoch, cx, cy, jitter_px, zp_rms, config, camera, bank, pad_to,
            per_epoch=False, sky_errors=False):
  """A star at the record's epochs with per-epoch magnitudes: centre (cx, cy), or with
  ``per_epoch`` one uniform in the pixel per epoch, plus a Gaussian jitter of ``jitter_px``;
  with ``sky_errors`` the image's sky is off the table's by the configured
  ``sim.calibration`` sky error (as in the simulator), and the table's is subtracted."""
  e = record['sky'].size
  n = pad_to or e
  kj, kz, kn = jax.random.split(key, 3)
  sky_image = record['sky']
  if sky_errors:
    cal = config.sim.calibration
    sigma = np.asarray(render.sky_error_sigma(record['sky'], float(cal.get('sky_rms_adu', 0.0)),
                                              float(cal.get('sky_rms_fraction', 0.0))),
                       np.float64)
    sky_image = record['sky'] + sigma * np.asarray(
        jax.random.normal(jax.random.fold_in(kz, 1), (e,)), np.float64)
  jit = jitter_px * np.asarray(jax.random.normal(kj, (2, e)), np.float64)
  if per_epoch:
    cx, cy = np.asarray(jax.random.uniform(jax.random.fold_in(kj, 1), (2, e), minval=-0.5,
                                           maxval=0.5), np.float64)
  factor = np.exp(zp_rms * np.asarray(jax.random.normal(kz, (e,)), np.float64))
  mag = np.asarray(mag_epoch, np.float64) - 2.5 * np.log10(factor)
  p = lambda x: jnp.asarray(twins._pad(x, n))  # pylint: disable=protected-access
  gain, rn, sat = camera[:3]
  raw, _ = twins.render_star(
      kn, p(mag), p(record['zero_point']), p(record['exp_time_s']), p(record['fwhm_px']),
      p(cx + jit[0]), p(cy + jit[1]), p(sky_image), jnp.float32(gain), jnp.float32(rn),
      jnp.float32(sat), bank, size=record['real_stamps'].shape[-1],
      kind=str(config.sim.psf.kind), beta=float(config.sim.psf.moffat_beta),
      poisson=bool(config.sim.poisson))
  d = np.asarray(raw, np.float64)[:e] - record['sky'][:, None, None]
  return stars.measure(d, record['sigma'])


def _centre(record, use):
  r = record['real']
  ok = use & r['fit_ok']
  if not ok.any():
    return 0.0, 0.0
  return float(np.median(r['dx'][ok])), float(np.median(r['dy'][ok]))


def twin_scatter(record, key, config, camera, bank=None, pad_to=None):
  """Centroid and flux scatter of a real constant star and of its two simulated twins.

  Returns {'real' | 'noise' | 'model': (centroid_px, flux_frac)} and the number of epochs;
  NaN when the star has fewer than MIN_BRIGHT_EPOCHS bright usable epochs.
  """
  use = usable_epochs(record, config) & record['real']['bright'] & record['real']['fit_ok']
  cx, cy = _centre(record, use)
  flat = np.full(record['sky'].size, record['mag'])
  k1, k2 = jax.random.split(key)
  twins = {'noise': _render(k1, record, flat, cx, cy, 0.0, 0.0, config, camera, bank, pad_to),
           'model': _render(k2, record, flat, cx, cy, *_configured(config), config, camera,
                            bank, pad_to, per_epoch=_per_epoch(config), sky_errors=True)}
  out = {'name': record['name'], 'mag': record['mag'], 'num_epochs': int(use.sum())}
  for who, meas in (('real', record['real']), *twins.items()):
    u = use & meas['fit_ok']
    out[who + '_offsets'] = np.concatenate([meas['dx'][u], meas['dy'][u]]).tolist()
    out[who] = (epoch_scatter(meas, record, u) if u.sum() >= MIN_BRIGHT_EPOCHS
                else (float('nan'), float('nan')))
  return out


def _configured(config):
  return (float(config.sim.astrometry.centroid_jitter_px),
          float(config.sim.calibration.zero_point_rms))


def _per_epoch(config):
  return bool(config.sim.astrometry.subpixel_per_epoch)


def _pooled_jitter(rows, idx, noise_var):
  """Registration error under per-epoch uniform sub-pixel centres: the pooled variance of the
  real centres (offsets from the centre pixel, 4-sigma clipped) minus the uniform's 1/12 and
  the measurement noise's, in quadrature."""
  x = np.concatenate([rows[i]['real_offsets'] for i in idx])
  _, _, std = astats.sigma_clipped_stats(x, sigma=4.0)
  return float(np.sqrt(max(std**2 - 1.0 / 12.0 - noise_var, 0.0)))


def calibrate_jitter(rows, num_bootstrap=200, seed=0):
  """Registration and calibration errors: sqrt(median(real^2) - median(noise-only^2)).

  ``rows`` from ``twin_scatter``; the uncertainty is a bootstrap over stars. The centroid
  estimate is for a fixed sub-pixel centre per object (sim.astrometry.subpixel_per_epoch
  False); ``centroid_jitter_px_per_epoch_subpixel`` is the one for per-epoch uniform centres,
  and the pooled kurtosis of the centres (uniform -1.2, Gaussian 0) tells the two apart.
  """
  ok = [r for r in rows if np.isfinite(r['real'][0]) and np.isfinite(r['noise'][0])]
  if not ok:
    raise UserError('no constant star with enough bright epochs to measure scatter')
  arr = {w: np.array([r[w] for r in ok]) for w in ('real', 'noise', 'model')}

  def est(idx):
    return [float(np.sqrt(max(np.median(arr['real'][idx, j]**2)
                              - np.median(arr['noise'][idx, j]**2), 0.0))) for j in (0, 1)]

  rng = np.random.default_rng(seed)
  boot = np.array([est(rng.integers(0, len(ok), len(ok))) for _ in range(num_bootstrap)])
  centroid, flux = est(np.arange(len(ok)))
  med = lambda w, j: float(np.median(arr[w][:, j]))
  noise_var = float(np.median(arr['noise'][:, 0]**2))
  pooled = _pooled_jitter(ok, range(len(ok)), noise_var)
  boot_p = [_pooled_jitter(ok, rng.integers(0, len(ok), len(ok)), noise_var)
            for _ in range(num_bootstrap)]
  kurt = {w: float(sstats.kurtosis(np.concatenate([r[w + '_offsets'] for r in ok])))
          for w in ('real', 'noise', 'model')}
  return {
      'num_stars': len(ok),
      'centroid_jitter_px_per_epoch_subpixel': pooled,
      'centroid_jitter_px_per_epoch_subpixel_bootstrap_std': float(np.std(boot_p)),
      'centre_offset_kurtosis': kurt,
      'centroid_jitter_px': centroid, 'centroid_jitter_px_bootstrap_std': float(boot[:, 0].std()),
      'zero_point_rms': flux, 'zero_point_rms_bootstrap_std': float(boot[:, 1].std()),
      'median_centroid_scatter_px': {w: med(w, 0) for w in arr},
      'median_flux_scatter': {w: med(w, 1) for w in arr},
      'definition': 'per star over bright (peak > 20 sigma) epochs with seeing <= the survey '
                    'cut: centroid = rms over axes of the mad_std of the 9x9 Gaussian-fit '
                    'centre; flux = mad_std of aperture flux / median - 1. Estimate = '
                    'sqrt(median real^2 - median noise-only twin^2) over stars; "model" is the '
                    'twin with the configured jitter and zero-point rms.',
  }


# --------------------------------------------------------------------------- variables


def photometric_error_mag(record, meas):
  """Per-epoch magnitude error from sky and read noise in the aperture and the star's shot
  noise: 1.0857 sqrt(N_ap sigma^2 + F / gain) / F."""
  flux = np.asarray(meas['flux'])
  n_ap = np.pi * photometry.APERTURE_PX**2
  gain = record.get('gain', 4.0)
  var = n_ap * record['sigma']**2 + np.maximum(flux, 0.0) / gain
  with np.errstate(divide='ignore', invalid='ignore'):
    return 1.0857 * np.sqrt(var) / np.where(flux > 0, flux, np.nan)


def curve_stats(mag, err):
  """(amplitude, skewness, faint fraction) of one light curve (see the module docstring)."""
  mag, err = np.asarray(mag, np.float64), np.asarray(err, np.float64)
  ok = np.isfinite(mag) & np.isfinite(err)
  mag, err = mag[ok], err[ok]
  if mag.size < 5:
    return float('nan'), float('nan'), float('nan')
  lo, hi = np.percentile(mag, [5, 95])
  faint = mag - np.median(mag) > np.maximum(FAINT_MIN_MAG, 3.0 * err)
  # A constant curve: skewness 0 (a symmetric, degenerate distribution; scipy says NaN).
  flat = np.ptp(mag) <= 1e-9 * max(1.0, abs(float(np.median(mag))))
  skew = 0.0 if flat else float(sstats.skew(mag))
  return float(hi - lo), skew, float(faint.mean())


def sample_class_curves(key, class_name, t_days, config, model=None, num=10):
  """``num`` magnitude curves [num, E] of class ``class_name`` at times ``t_days`` [E], from the
  simulator's light-curve model (whatever ``lightcurves.sample_magnitudes`` implements)."""
  names = tuple(config.sim.class_names)
  model = model if model is not None else lightcurves.build_lightcurve_model(config.sim)
  cid = names.index(class_name)
  t = jnp.asarray(t_days, jnp.float32)
  fn = jax.jit(jax.vmap(lambda k: lightcurves.sample_magnitudes(k, cid, t, t.shape[0], model)[0]))
  return np.asarray(fn(jax.random.split(key, num)), np.float64)


def variable_stats(data_dir, key, config, camera, bank=None, num_sim=10, progress=False):
  """Light-curve statistics of real and simulated RR Lyrae and eclipsing binaries.

  ``data_dir`` holds one folder per class (real_labelled_dev). Returns {class: {'real':
  [[amp, skew, faint], ...], 'sim': [...], 'names': [...]}}.
  """
  model = lightcurves.build_lightcurve_model(config.sim)
  stamp = int(config.sim.stamp_size)
  out = {}
  for c, cls in enumerate(VARIABLE_CLASSES):
    folder = os.path.join(data_dir, cls)
    if not os.path.isdir(folder):
      continue
    files = realdata.expand_inputs([folder])
    seqs = [(f, realdata.load_sequence(f, stamp, n_w=1)) for f in files]
    pad_to = -(-max(s.num_epochs for _, s in seqs) // 8) * 8
    res = {'real': [], 'sim': [], 'names': [], 'kept': []}
    for i, (f, seq) in enumerate(utils.progress(seqs, total=len(seqs), desc=cls,
                                               disable=not progress)):
      t_exp, _ = twins.exposure_times(f, seq.num_epochs, config.survey.exp_time_s)
      k = jax.random.fold_in(jax.random.fold_in(key, c), i)
      rec = twins.compare_sequence(seq, t_exp, jax.random.fold_in(k, 0), config, camera,
                                     bank, pad_to)
      rec['gain'] = camera[0]
      use = usable_epochs(rec, config) & (rec['real']['flux'] > 0)
      err = photometric_error_mag(rec, rec['real'])
      res['real'].append(curve_stats(rec['real_mag_epoch'][use], err[use]))
      res['names'].append(seq.name)
      t = np.asarray(seq.mjd, np.float64) - float(config.survey.mjd_start)
      curves = sample_class_curves(jax.random.fold_in(k, 1), cls, t, config, model,
                                   num_sim * SELECTION_OVERSAMPLE)
      selected = np.ones(len(curves), bool)
      if cls in tuple((config.sim.get('variability', None) or {}).get('classes', ())):
        selected = select_detectable(curves, limiting_magnitude(rec, config), use, config)
      res['kept'].append(float(selected.mean()))
      curves = curves[selected][:num_sim]
      cx, cy = _centre(rec, use & rec['real']['fit_ok'])
      for j, curve in enumerate(curves):
        shifted = curve - np.median(curve[use]) + rec['mag']
        meas = _render(jax.random.fold_in(k, 2 + j), rec, shifted, cx, cy, *_configured(config),
                       config, camera, bank, pad_to, per_epoch=_per_epoch(config),
                       sky_errors=True)
        with np.errstate(invalid='ignore', divide='ignore'):
          mag = np.asarray(render.adu_to_mag(meas['flux'] / rec['ap_frac'], rec['zero_point'],
                                             rec['exp_time_s']))
        u = use & (meas['flux'] > 0)
        res['sim'].append(curve_stats(mag[u], photometric_error_mag(rec, meas)[u]))
    out[cls] = {k2: (np.asarray(v).tolist() if k2 not in ('names', 'kept') else v)
                for k2, v in res.items()}
  return out


def summarize_variables(stats):
  """Medians (16, 50, 84 %) of each statistic, real and simulated, per class, and KS p-values."""
  names = ('amplitude_mag', 'skewness', 'faint_fraction')
  out = {}
  for cls, d in stats.items():
    real, sim = np.asarray(d['real']), np.asarray(d['sim'])
    out[cls] = {}
    for j, n in enumerate(names):
      r, s = real[:, j][np.isfinite(real[:, j])], sim[:, j][np.isfinite(sim[:, j])]
      out[cls][n] = {'real_16_50_84': stars.quantiles(r), 'sim_16_50_84': stars.quantiles(s),
                     'ks_pvalue': (float(sstats.ks_2samp(r, s).pvalue) if r.size and s.size
                                   else float('nan'))}
    out[cls]['num_real'], out[cls]['num_sim'] = int(real.shape[0]), int(sim.shape[0])
    if d.get('kept'):
      out[cls]['selection_kept_fraction'] = float(np.mean(d['kept']))
  return out


# --------------------------------------------------------------------------- figure


def plot_scatter_and_variables(rows, cal, var_stats, path):
  """(a) centroid and (b) flux scatter of constant stars vs magnitude, real and simulated;
  (c-e) amplitude, skewness and faint fraction of RR Lyrae and binaries, real and simulated."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
  mags = np.array([r['mag'] for r in rows])
  styles = (('real', 'k', 'o', 'real'), ('noise', 'tab:blue', 'x', 'sim, noise only'),
            ('model', 'tab:red', '+', 'sim, configured errors'))
  for j, (ax, lab) in enumerate(zip(axes[0, :2], ('centroid rms per axis [px]',
                                                  'flux rms (fraction)'))):
    for who, col, mk, name in styles:
      ax.plot(mags, [r[who][j] for r in rows], mk, color=col, ls='', label=name)
    ax.set(xlabel='g (aperture)', ylabel=lab)
    ax.legend(fontsize=8)
  axes[0, 0].set_title(f'(a) centroid scatter of constant stars; jitter '
                       f'{cal["centroid_jitter_px_per_epoch_subpixel"]:.3f} px\n(with per-epoch '
                       f'sub-pixel centres; {cal["centroid_jitter_px"]:.3f} px for a fixed one)',
                       fontsize=10)
  axes[0, 1].set_title(f'(b) flux scatter; zero-point rms estimate {cal["zero_point_rms"]:.4f}')
  ax = axes[0, 2]
  for who, col, _, name in styles:
    vals = np.concatenate([r[who + '_offsets'] for r in rows])
    ax.hist(vals, np.linspace(-1.0, 1.0, 41), histtype='step', color=col, density=True,
            label=f'{name} (kurtosis {cal["centre_offset_kurtosis"][who]:.2f})')
  ax.set(xlabel='fitted centre - centre pixel, both axes [px]', ylabel='density',
         title='(c) centres of bright epochs')
  ax.legend(fontsize=8)
  stat_names = ('amplitude [mag] (95-5 %)', 'skewness of magnitudes', 'faint-epoch fraction')
  cols = {'RRLyrae': 'tab:green', 'EclipsingBinary': 'tab:purple'}
  for j, ax in enumerate(axes[1]):
    allv = np.concatenate([np.asarray(d[w])[:, j] for d in var_stats.values()
                           for w in ('real', 'sim')]) if var_stats else np.zeros(1)
    allv = allv[np.isfinite(allv)]
    edges = np.linspace(allv.min(), allv.max() + 1e-6, 21) if allv.size else 10
    for cls, d in var_stats.items():
      sim = np.asarray(d['sim'])[:, j]
      real = np.asarray(d['real'])[:, j]
      ax.hist(sim[np.isfinite(sim)], edges, histtype='step', color=cols.get(cls, 'gray'),
              density=True, label=f'{cls} sim ({sim.size})')
      ax.plot(real, np.full(real.shape, -0.05 - 0.1 * list(var_stats).index(cls)) *
              max(1.0, ax.get_ylim()[1]), '|', ms=14, color=cols.get(cls, 'gray'),
              label=f'{cls} real ({real.size})')
    ax.set(xlabel=stat_names[j], ylabel='density (sim); ticks: real',
           title=f'({"def"[j]}) {stat_names[j].split(" [")[0]}')
    if var_stats:  # no variable files given: an empty panel, no legend
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
