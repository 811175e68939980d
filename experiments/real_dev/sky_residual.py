"""Sky residual of the 70 real development files: stamp outer ring minus the table's sky_adu.

    PYTHONPATH=. python experiments/real_dev/sky_residual.py > experiments/real_dev/sky_residual.json

Ring: the outer 3-pixel border, 3-sigma clipped median (realdata.estimate_sky). Noise: the
per-pixel sky noise sqrt(sky_adu * gain) / gain with the camera table's median gain. Nights
with sky_adu > 300 ADU count as moonlit (hits2015.md: dark ~120 ADU, moonlit ~560 / ~1750).

Fractional sky error (``sky_error_fraction``, the simulator's ``sim.calibration.sky_rms``):
the residual's upper tail is neighbours and hosts in the ring, so its width is read from the
lower half only, sigma = (median - 15.87th percentile) of residual / sky_adu, minus in
quadrature the ring median's own noise (1.2533 pixel noise / sqrt(ring pixels), relative to
the sky). A diagnostic only: the ring also holds the stars' wings and neighbours, so the
simulator's sky error comes from experiments/realism/sky_error.py instead.
"""
import glob, json, sys
import numpy as np
from rcnn_jax.inputs import realdata

root = sys.argv[1] if len(sys.argv) > 1 else '../shared/data/hits2015'
files = sorted(glob.glob(f'{root}/real_labelled_dev/*/*.npz') +
               glob.glob(f'{root}/real_nonvariable_dev/*.npz'))
cam = np.genfromtxt(f'{root}/camera.csv', delimiter=',', names=True)
gain = float(np.median(cam['gain_e_per_adu']))
rows = []
n_ring = None
for f in files:
  z = np.load(f, allow_pickle=False)
  ring = realdata.estimate_sky(z['stamps'])
  if n_ring is None:
    h = z['stamps'].shape[-1]
    n_ring = h * h - (h - 2 * realdata.SKY_RING)**2
  for r, s in zip(ring, z['sky_adu']):
    rows.append((float(s), float(r - s)))
a = np.array(rows)
out = {'files': len(files), 'epochs': len(a), 'gain_median': gain, 'ring_pixels': n_ring}
for name, sel in (('dark', a[:, 0] <= 300), ('moonlit', a[:, 0] > 300)):
  res, sky = a[sel, 1], a[sel, 0]
  noise = np.sqrt(sky * gain) / gain
  out[name] = {'epochs': int(sel.sum()), 'sky_median': float(np.median(sky)),
               'residual_median': float(np.median(res)),
               'residual_p05_p95': np.percentile(res, [5, 95]).tolist(),
               'residual_mean': float(res.mean()),
               'pixel_noise_median': float(np.median(noise)),
               'residual_over_noise_median': float(np.median(res / noise)),
               'residual_over_noise_p05_p95': np.percentile(res / noise, [5, 95]).tolist()}
  frac = res / sky
  lower = float(np.median(frac) - np.percentile(frac, 15.865))
  own = float(np.median(1.2533 * noise / np.sqrt(n_ring) / sky))
  out[name]['sky_error_fraction'] = float(np.sqrt(max(lower**2 - own**2, 0.0)))
  out[name]['sky_error_fraction_lower_half_raw'] = lower
  out[name]['ring_median_noise_fraction'] = own
print(json.dumps(out, indent=1))
