"""Night-to-night calibration offsets of the 40 real non-variable dev stars (issue 12).

    python experiments/realism/night_offsets.py [DATA_DIR] > experiments/realism/night_offsets.json

Each star's flux per epoch: a 9.5 px aperture sum of (stamp - table sky), scaled by eq. 4 to the
first kept epoch's zero point, over epochs with seeing <= 2" (as every model input; NaN seeing,
conditions not measured, is dropped as preprocess.py drops it). Its
deviation from the star's median flux, median over the stars and epochs of each night, is the
night's calibration offset as the model sees it (zero-point error and moonlit-night sky error
together: eq. 4 uses the table's zero point and sky). Writes the offsets per night, their rms
over nights weighted by epochs (sim.calibration.night_rms) and the robust per-epoch scatter
within nights. Nothing else is fitted; the real labelled variables are not read.
"""
import glob
import json
import os
import sys

import numpy as np

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'shared', 'data', 'hits2015',
    'real_nonvariable_dev')
yy, xx = np.mgrid[-10:11, -10:11]
ap = (xx**2 + yy**2) <= 9.5**2
rows = []
for f in sorted(glob.glob(os.path.join(root, '*.npz'))):
  with np.load(f, allow_pickle=False) as d:
    keep = d['seeing_arcsec'] <= 2.0  # NaN (not measured) dropped, as preprocess.py
    st = d['stamps'][keep].astype(np.float64) - d['sky_adu'][keep][:, None, None]
    zp, mjd = d['zero_point'][keep], d['mjd'][keep]
  fl = (st * ap).sum((1, 2)) * 10**((zp[0] - zp) / 2.5)
  dev = fl / np.median(fl) - 1.0
  rows += [(np.floor(m - 57070.0), v) for m, v in zip(mjd, dev)]
a = np.array(rows)
nights, counts = np.unique(a[:, 0], return_counts=True)
off = np.array([np.median(a[a[:, 0] == n, 1]) for n in nights])
big = counts >= 20  # nights with enough epochs to measure an offset
w = counts[big] / counts[big].sum()
mean = np.sum(w * off[big])
rms = float(np.sqrt(np.sum(w * (off[big] - mean)**2)))
within = np.concatenate([a[a[:, 0] == n, 1] - o for n, o in zip(nights[big], off[big])])
print(json.dumps({
    'num_stars': len(glob.glob(os.path.join(root, '*.npz'))),
    'nights_days_after_57070': nights.tolist(), 'epochs': counts.tolist(),
    'offset_median': [round(float(x), 4) for x in off],
    'night_rms_weighted': round(rms, 4),
    'within_night_scatter_mad_std': round(float(1.4826 * np.median(np.abs(within))), 4),
}, indent=1))
