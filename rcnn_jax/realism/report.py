"""Appendix A's report (the library behind ``python -m rcnn_jax.realism``): every real
sequence beside its simulated twin (``twins``), the constant stars' scatter and the variables'
statistics (``lcstats``), written as ``realism.json`` and drawn as ``realism.png`` and
``scatter.png``.
"""

from __future__ import annotations

import os

import jax
import matplotlib
import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.inputs import realdata
from rcnn_jax.realism import stars
from rcnn_jax.sim import bands
from rcnn_jax.sim import photometry
from rcnn_jax.sim import render

matplotlib.use('Agg')
import matplotlib.pyplot as plt

from rcnn_jax.realism import lcstats
from rcnn_jax.realism.twins import column
from rcnn_jax.realism.twins import compare_sequence
from rcnn_jax.realism.twins import exposure_times
from rcnn_jax.realism.twins import psf_seeing_relation
from rcnn_jax.realism.twins import summarize


def run(paths, out_dir, config, camera_path=None, seed=None, plot=True, progress=True,
        variables_dir=None, num_sim=10):
  """Compares every real sequence in ``paths`` with its simulated twin; writes JSON (+ PNG).

  Also measures the epoch-to-epoch centroid and flux scatter of the (constant) stars against
  their simulated twins (``lcstats``: 'jitter_calibration' in realism.json) and, with
  ``variables_dir``, the light-curve statistics of real and simulated variables; both go into
  ``scatter.png``.
  """
  bands.require_one_band(config, 'the realism check')
  files = realdata.expand_inputs(paths)
  camera = stars.camera_params(config, camera_path)
  bank = None
  if config.sim.psf.kind == 'bank':
    bank = render.load_psf_bank(config.sim.psf.bank_path, config.survey.pixel_scale_arcsec)
  stamp = int(config.sim.stamp_size)
  seqs = [(f, realdata.load_sequence(f, stamp, n_w=1)) for f in files]
  pad_to = -(-max(s.num_epochs for _, s in seqs) // 8) * 8
  key = jax.random.key(config.seed if seed is None else seed)
  records, exp_from_file = [], 0
  for i, (f, seq) in enumerate(utils.progress(seqs, total=len(seqs), desc='realism',
                                             disable=not progress)):
    t, from_file = exposure_times(f, seq.num_epochs, config.survey.exp_time_s)
    exp_from_file += from_file
    records.append(compare_sequence(seq, t, jax.random.fold_in(key, i), config, camera, bank,
                                    pad_to))
  settings = {
      'data': [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike))
                                      else paths)],
      'psf_kind': str(config.sim.psf.kind), 'moffat_beta': float(config.sim.psf.moffat_beta),
      'seeing_scale': psf_seeing_relation(config)[0],
      'seeing_offset_arcsec': psf_seeing_relation(config)[1],
      'psf_fwhm': 'seeing_offset_arcsec + seeing_scale x table seeing (config.sim.psf)',
      'pixel_scale_arcsec': float(config.survey.pixel_scale_arcsec),
      'gain_e_per_adu': camera[0], 'read_noise_e': camera[1], 'saturation_adu': camera[2],
      'camera_source': camera[3], 'poisson': bool(config.sim.poisson),
      'seed': int(config.seed if seed is None else seed),
      'files_with_exp_time': exp_from_file,
      'seeing_fallback': "the sequence's median table seeing",
      'magnitude': 'median over epochs of eq. 1 applied to the 8 px aperture flux divided by the '
                   "model PSF's aperture fraction at the epoch's PSF FWHM",
      'background_noise': '1.4826 MAD of the outer 3 px ring after a clipped cubic fit in the '
                          'distance to the fitted star centre',
      'fwhm': 'pixel-integrated circular Gaussian fitted to the central 9x9 (background 0), '
              f'epochs with peak > {stars.MIN_PEAK_SIGMA:g} sigma and known seeing',
      'ratios': 'median over epochs of the per-epoch ratio real / sim',
  }
  summary = summarize(records, settings)
  rows = [lcstats.twin_scatter(r, jax.random.fold_in(key, 1_000_000 + i), config, camera, bank,
                               pad_to) for i, r in enumerate(records)]
  summary['jitter_calibration'] = lcstats.calibrate_jitter(rows)
  summary['jitter_calibration']['configured'] = {
      'centroid_jitter_px': float(config.sim.astrometry.centroid_jitter_px),
      'zero_point_rms': float(config.sim.calibration.zero_point_rms)}
  summary['constant_star_scatter'] = [{k: v for k, v in r.items() if not k.endswith('_offsets')}
                                      for r in rows]
  var_stats = {}
  if variables_dir:
    var_stats = lcstats.variable_stats(variables_dir, jax.random.fold_in(key, 2_000_000),
                                       config, camera, bank, num_sim, progress)
    summary['variable_stats'] = lcstats.summarize_variables(var_stats)
    summary['variable_stats_raw'] = var_stats
  os.makedirs(out_dir, exist_ok=True)
  utils.write_json(os.path.join(out_dir, 'realism.json'), summary)
  if plot:
    plot_realism(records, summary, os.path.join(out_dir, 'realism.png'))
    lcstats.plot_scatter_and_variables(rows, summary['jitter_calibration'], var_stats,
                                       os.path.join(out_dir, 'scatter.png'))
  return summary, records


def plot_realism(records, summary, path, num_objects=4, num_epochs=4):
  """Appendix A (``realism.run``): (a) stamps real | sim, (b) pixel values, (c) background
  noise, (d) FWHM, (e) peak/flux."""
  pix = summary['settings']['pixel_scale_arcsec']
  fig = plt.figure(figsize=(17, 15))
  outer = fig.add_gridspec(2, 1, height_ratios=(1.55, 1), hspace=0.18)
  grid = outer[0].subgridspec(num_objects, 2 * num_epochs, wspace=0.04, hspace=0.28)
  order = np.argsort([r['mag'] for r in records])
  picks = order[np.linspace(0, len(order) - 1, min(num_objects, len(order))).astype(int)]
  for row, i in enumerate(picks):
    r = records[i]
    e_order = np.argsort(r['seeing'])
    eps = np.sort(e_order[np.linspace(0, len(e_order) - 1, num_epochs).astype(int)])
    for j, e in enumerate(eps):
      s = 3.0 * r['sigma'][e]
      pair = [np.arcsinh(r['real_stamps'][e] / s), np.arcsinh(r['sim_stamps'][e] / s)]
      lo, hi = -2.0, max(pair[0].max(), pair[1].max())
      for k, (img, lab) in enumerate(zip(pair, ('real', 'sim'))):
        ax = fig.add_subplot(grid[row, 2 * j + k])
        ax.imshow(img, cmap='gray', origin='lower', vmin=lo, vmax=hi)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f'{lab} {r["seeing"][e]:.2f}"', fontsize=7, pad=2)
        if j == 0 and k == 0:
          ax.set_ylabel(f'{r["name"][9:]}\ng = {r["mag"]:.2f}', fontsize=7)
  fig.text(0.5, 0.905, '(a) real | simulated pairs (same asinh stretch per pair, in units of '
           '3 expected sigma; epochs of low to high seeing)', ha='center', fontsize=10)

  bottom = outer[1].subgridspec(1, 4, wspace=0.38)
  ax = fig.add_subplot(bottom[0])
  vr = np.concatenate([(r['real_stamps'] / r['sigma'][:, None, None]).ravel() for r in records])
  vs = np.concatenate([(r['sim_stamps'] / r['sigma'][:, None, None]).ravel() for r in records])
  edges = np.sinh(np.linspace(np.arcsinh(-8.0), np.arcsinh(max(vr.max(), vs.max())), 90))
  ax.hist(vr, edges, histtype='step', color='k', label='real, all pixels')
  ax.hist(vs, edges, histtype='step', color='tab:red', label='sim, all pixels')
  rr = np.concatenate([(r['real']['ring_residuals'] / r['sigma'][:, None]).ravel()
                       for r in records])
  rs = np.concatenate([(r['sim']['ring_residuals'] / r['sigma'][:, None]).ravel()
                       for r in records])
  ax.hist(rr, edges, histtype='step', color='k', ls='--', label='real, ring - radial fit')
  ax.hist(rs, edges, histtype='step', color='tab:red', ls='--', label='sim, ring - radial fit')
  ax.set_xscale('symlog', linthresh=3.0)
  ax.set_xticks([-10, -3, 0, 3, 10, 100, 1000], ['-10', '-3', '0', '3', '10', '100', '1000'])
  ax.set_yscale('log')
  px = summary['pixels']
  ax.set(xlabel='(pixel - sky) / expected sigma', ylabel='pixels',
         title=f'(b) pixels: KS ring {px["ring_ks_statistic"]:.2f}, '
               f'resid. {px["ring_residual_ks_statistic"]:.3f}')
  ax.legend(fontsize=7, loc='upper right')

  ax = fig.add_subplot(bottom[1])
  sig = column(records, 'sigma')
  ax.plot(sig, column(records, 'real', 'noise'), 'k.', ms=3, alpha=0.6, label='real')
  ax.plot(sig, column(records, 'sim', 'noise'), 'x', color='tab:red', ms=3, alpha=0.6, label='sim')
  lim = np.array([sig.min() * 0.8, sig.max() * 1.25])
  ax.plot(lim, lim, ':', c='gray', label='expected')
  ax.set_xscale('log')
  ax.set_yscale('log')
  b = summary['background_noise']
  ax.set(xlabel='expected sqrt(sky/g + (rn/g)^2) [ADU]', ylabel='ring robust std [ADU]',
         title=f'(c) background noise: real/sim = {b["ratio_real_sim"]:.3f}')
  ax.legend(fontsize=8)

  ax = fig.add_subplot(bottom[2])
  use = (column(records, 'real', 'bright') & column(records, 'real', 'fit_ok')
         & column(records, 'sim', 'fit_ok') & column(records, 'seeing_known'))
  see = column(records, 'seeing')[use]
  ax.plot(see, column(records, 'real', 'fwhm_px')[use] * pix, 'k.', ms=3, alpha=0.6, label='real')
  ax.plot(see, column(records, 'sim', 'fwhm_px')[use] * pix, 'x', color='tab:red', ms=3,
          alpha=0.6, label='sim')
  o = np.argsort(see)
  ax.plot(see[o], column(records, 'model_fwhm_px')[use][o] * pix, '-', c='tab:red', lw=0.8,
          label='noiseless model')
  lim = np.array([see.min() * 0.9, see.max() * 1.1])
  ax.plot(lim, lim, ':', c='gray', label='1:1')
  f = summary['fwhm']
  ax.set(xlabel='table seeing [arcsec]', ylabel='fitted Gaussian FWHM, 9x9 [arcsec]',
         title=f'(d) PSF width: real/sim = {f["ratio_real_sim"]:.3f}')
  ax.legend(fontsize=8)

  ax = fig.add_subplot(bottom[3])
  seeing = column(records, 'seeing')
  for who, style, col in (('real', '.', 'k'), ('sim', 'x', 'tab:red')):
    flux = column(records, who, 'flux')
    ok = flux > 0
    ax.plot(seeing[ok], column(records, who, 'peak')[ok] / flux[ok], style, color=col, ms=3,
            alpha=0.6, label=who)
  ax.set_yscale('log')
  ax.set(xlabel='seeing used [arcsec]', ylabel=f'peak / flux (r = {photometry.APERTURE_PX:g} px)',
         title=f'(e) peak-to-flux: real/sim = {summary["peak_to_flux"]["ratio_real_sim"]:.3f}')
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)
