"""Per-epoch sky error of the 40 real constant stars, from how their flux scatter grows as they get fainter.

    PYTHONPATH=. python experiments/realism/sky_error.py > experiments/realism/sky_error.json

A coherent error s (ADU per pixel) of the table's sky adds A s / F to an aperture flux F
(A = the 8 px aperture's pixels, photometry.APERTURE_PX), a zero-point error the same
fraction at every flux. Per star (``realism.json`` ``constant_star_scatter``: real and
noise-only twin flux scatter over its bright epochs), the excess real^2 - noise^2 is fitted
as zp^2 + (A s / F)^2 with F the star's flux at the median zero point and exposure time of
the files; uncertainties by a bootstrap over stars. The ring residual of
experiments/real_dev/sky_residual.py is not used for s: it also holds the bright stars' wings
and neighbours, which do not shift a whole aperture (it would put s at 2.8 ADU, already
1.7 % of a median star's aperture flux, more than the whole measured scatter).
"""
import glob, json, sys
import numpy as np
from rcnn_jax.sim import photometry

root = sys.argv[1] if len(sys.argv) > 1 else '../shared/data/hits2015'
d = json.load(open('experiments/realism/realism.json'))
rows = [r for r in d['constant_star_scatter']
        if np.isfinite(r['real'][1]) and np.isfinite(r['noise'][1])]
m = np.array([r['mag'] for r in rows])
ex = np.array([r['real'][1]**2 - r['noise'][1]**2 for r in rows])
zps, times, skies = [], [], []
for f in sorted(glob.glob(f'{root}/real_nonvariable_dev/*.npz')):
  z = np.load(f, allow_pickle=False)
  ok = np.isfinite(z['seeing_arcsec'])
  zps += list(z['zero_point'][ok]); skies += list(z['sky_adu'][ok])
  times += list(z['exp_time_s'][ok]) if 'exp_time_s' in z.files else [86.0] * int(ok.sum())
zp, t, sky = float(np.median(zps)), float(np.median(times)), float(np.median(skies))
area = int(np.sum(np.hypot(*(np.indices((21, 21)) - 10.0)) <= photometry.APERTURE_PX))
flux = t * 10**(0.4 * (zp - m))


def fit(idx):
  a = np.stack([np.ones(len(idx)), (area / flux[idx])**2], 1)
  (zp2, s2), *_ = np.linalg.lstsq(a, ex[idx], rcond=None)
  return np.sqrt(max(zp2, 0.0)), np.sqrt(max(s2, 0.0))


zp_rms, s = fit(np.arange(len(rows)))
rng = np.random.default_rng(0)
boot = np.array([fit(rng.integers(0, len(rows), len(rows))) for _ in range(1000)])
print(json.dumps({
    'num_stars': len(rows), 'aperture_pixels': area, 'median_zero_point': zp,
    'median_exp_time_s': t, 'median_sky_adu': sky,
    'zero_point_rms': float(zp_rms), 'zero_point_rms_bootstrap_std': float(boot[:, 0].std()),
    'sky_error_adu': float(s), 'sky_error_adu_bootstrap_16_84': np.percentile(boot[:, 1], [16, 84]).tolist(),
    'sky_error_fraction_of_sky': float(s / sky),
    'star_flux_adu_16_50_84': np.percentile(flux, [16, 50, 84]).tolist()}, indent=1))
