"""ZTF and LSST end to end (issue 15): simulated files through the real-data checks, the
real-data commands' refusal of several bands, and the colour tables against the literature."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import hits
from configs import lsst
from configs import ztf
from rcnn_jax.core.errors import UserError
from rcnn_jax.evaluation import finetune
from rcnn_jax.evaluation import real as real_eval
from rcnn_jax.inputs import preprocess
from rcnn_jax.inputs import realdata
from rcnn_jax.realism import psf_calibration
from rcnn_jax.realism import report
from rcnn_jax.serving import files as files_lib
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.sim import bands
from rcnn_jax.sim import batches
from rcnn_jax.sim import lightcurves
from rcnn_jax.sim import survey as survey_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# simulate's file for several bands: every object is a valid real-data file, and the real-data
# preparation gives back the simulator's model input


def test_lsst_file_objects_pass_the_real_data_checks(tmp_path):
  """Each simulated LSST object, written as a real-data file (its field's earlier epochs as
  sky-only stamps, then its raw stamps), passes ``realdata.load_sequence``'s checks (finite,
  strictly increasing MJD within a night's pair of visits, ...), and ``preprocess.prepare`` (the
  code of predict and evaluate --real) gives the simulator's images and time gaps; the band
  one-hots after the gaps are those of the file's ``band``."""
  config = lsst.get_config('smoke')
  data = batches.simulate_to_host(config, 7, chunk=7, progress=False)
  path = tmp_path / 'lsst.npz'
  np.savez(path, **batches.file_arrays(data))
  with np.load(path, allow_pickle=False) as z:  # no object arrays
    d = {k: z[k] for k in z.files}
  names = tuple(str(b) for b in d['band_names'])
  assert names == lsst.LSST_BANDS and d['band'].dtype.kind == 'i'
  assert set(batches.FIELDS) | {'class_names', 'band', 'band_names'} == set(d)
  n_w, nb = int(config.sim.n_w), len(names)
  assert d['time_gaps'].shape[-1] == n_w * (1 + nb)
  np.testing.assert_array_equal(d['label'], np.arange(7))
  surv = jax.device_get(survey_lib.build_survey(config.survey))
  rules = preprocess.Rules.from_config(config)
  mixed = 0
  for i in range(7):
    f = int(d['field'][i])
    t = d['mjd'][i] - surv.mjd0
    e = int(d['epoch_valid'][i].sum())
    start = int(np.argmin(np.abs(surv.t_days[f, :int(surv.num_epochs[f])] - t[0])))
    assert abs(surv.t_days[f, start] - t[0]) < 1e-4
    stamps = np.concatenate([np.broadcast_to(surv.sky_adu[f, :start, None, None],
                                             (start, 21, 21)), d['raw_adu'][i][:e]])
    cond = lambda k, f=f, n=start + e: np.asarray(getattr(surv, k)[f, :n], np.float64)
    file = tmp_path / f'object_{i}.npz'
    np.savez(file, stamps=stamps, mjd=surv.mjd0 + cond('t_days'),
             zero_point=cond('zero_point'), sky_adu=cond('sky_adu'),
             seeing_arcsec=cond('seeing_arcsec'),
             label=np.asarray(str(d['class_names'][d['label'][i]])))
    seq = realdata.load_sequence(file, 21, n_w)
    p = preprocess.prepare(seq, rules, start=start)
    np.testing.assert_array_equal(p['mask'], d['mask'][i])
    np.testing.assert_allclose(p['images'], d['images'][i], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(p['time_gaps'], d['time_gaps'][i][..., :n_w], atol=1e-4)
    np.testing.assert_array_equal(surv.band_index[f, start:start + e], d['band'][i][:e])
    oh = np.asarray(bands.one_hot_steps(d['band'][i], d['mask'][i], n_w, nb))
    np.testing.assert_array_equal(oh, d['time_gaps'][i][..., n_w:])
    mixed += len(set(d['band'][i][:e].tolist())) > 1
  assert mixed >= 5  # sequences of mixed bands


# ------------------------------------------------------------------------------------------
# Real-data commands: the real files are HiTS's (DECam g, no band per image)


def _workdir(tmp_path, config):
  """A workdir holding only config.json: the refusals come before any checkpoint is read."""
  wd = tmp_path / 'wd'
  wd.mkdir()
  (wd / 'config.json').write_text(json.dumps(json.loads(config.to_json_best_effort())))
  return str(wd)


@pytest.mark.parametrize('mod', [ztf, lsst])
def test_real_data_commands_refuse_several_bands(mod, tmp_path):
  config = mod.get_config('smoke')
  match = 'needs a single-band config: survey .* has the bands'
  missing = str(tmp_path / 'no_such_folder')  # refused before the data are even looked at
  with pytest.raises(UserError, match='realism check needs a single-band' + '.*' + 'g, r'):
    report.run(missing, str(tmp_path / 'out'), config)
  with pytest.raises(UserError, match=match):
    psf_calibration.calibrate_psf(missing, config)
  wd = _workdir(tmp_path, config)
  with pytest.raises(UserError, match='evaluate --real ' + match):
    real_eval.evaluate_real(wd, [missing])
  for fn in (finetune.finetune, finetune.kfold):
    with pytest.raises(UserError, match='finetune .real labelled sequences. ' + match):
      fn(wd, [missing], str(tmp_path / 'ft'))
  with pytest.raises(UserError, match=match):
    files_lib.predict_files(wd, [missing], str(tmp_path / 'p.csv'))
  clf = Classifier(config, None, None)  # whole real sequences: no band per image
  with pytest.raises(UserError, match=match):
    clf.classify([object()])
  bands.require_one_band(hits.get_config('smoke'), 'x')  # HiTS: one band, accepted


def test_real_data_commands_refuse_several_bands_in_one_line(tmp_path):
  wd = _workdir(tmp_path, ztf.get_config('smoke'))
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  for args in (['rcnn_jax.evaluate', '--workdir', wd, '--real', str(tmp_path)],
               ['rcnn_jax.realism', '--config', 'configs/lsst.py:smoke', '--data',
                str(tmp_path), '--out', str(tmp_path / 'out')]):
    r = subprocess.run([sys.executable, '-m'] + args, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-2000:]
    assert 'needs a single-band config' in err[0] and 'HiTS' in err[0], err
  assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------------------------------------
# Colour tables against the literature


@pytest.mark.parametrize('mod', [ztf, lsst])
def test_sn_ia_g_minus_r_before_and_at_peak(mod):
  """The tabulated Hsiao template through the survey's g and r filters (ZTF: Pan-STARRS g, r;
  LSST: lsst2016) at low z, from -10 d to B maximum: g - r within 0.1 mag of the -0.15 that
  Bulla et al. (2020, ApJ 902, 48) measured on 65 ZTF SNe Ia at z < 0.1 (nearly constant from
  6 days after first light, intrinsic scatter ~0.18 mag), and bluer than 0. Two weeks after
  peak the template reddens (g - r rises by > 0.1 by +15 d at z ~ 0.04)."""
  config = mod.get_config('smoke')
  lcm = lightcurves.build_lightcurve_model(config.sim, config.survey)
  names = tuple(config.survey.bands)
  g, r = names.index('g'), names.index('r')
  m = np.asarray(lcm.ia_mag_bands)
  z, phase = np.asarray(lcm.ia_z), np.asarray(lcm.ia_phase)
  low = np.flatnonzero(z <= 0.05)
  near = np.flatnonzero((phase >= -10) & (phase <= 0))
  assert low.size and near.size >= 10
  gr = m[g][np.ix_(low, near)] - m[r][np.ix_(low, near)]
  assert np.all(np.abs(gr + 0.15) < 0.1), gr.round(3)
  assert np.all(gr < 0)
  zi = int(np.argmin(np.abs(z - 0.04)))
  p0, p15 = int(np.argmin(np.abs(phase))), int(np.argmin(np.abs(phase - 15)))
  assert (m[g, zi, p15] - m[r, zi, p15]) - (m[g, zi, p0] - m[r, zi, p0]) > 0.1


def _blackbody_ab_mag(filter_name, temperature_k):
  """AB magnitude (up to a constant) of a blackbody through a speclite filter."""
  f = bands.load_filter(filter_name)
  lam = np.asarray(f.wavelength, float)  # Angstrom
  resp = np.asarray(f.response, float)
  b_nu = lam**-3 / np.expm1(1.4388e8 / (lam * temperature_k))  # hc / k = 1.4388e8 A K
  return -2.5 * np.log10(np.trapezoid(b_nu * resp / lam, lam) / np.trapezoid(resp / lam, lam))


@pytest.mark.parametrize('mod', [ztf, lsst])
def test_rr_lyrae_amplitude_ratios(mod):
  """The RR Lyrae A_b / A_g of the colour tables: A_r / A_g = 0.73 (Sesar et al. 2010, ApJ 708,
  717, Sec. 3, SDSS Stripe 82), and every band within 0.1 of, and not above, a blackbody whose
  temperature swings between 6100 and 7400 K over the cycle (an RRab's range, e.g. For, Sneden
  & Preston 2011, ApJS 197, 29 ~) through the survey's filters: the observed ratios fall a
  little below the blackbody's (line blanketing deepens the blue amplitudes; the radius change
  is grey). The blackbody ratios hardly depend on the range (6000-7300 K: within 0.002)."""
  config = mod.get_config('smoke')
  names = tuple(config.survey.bands)
  table, _ = bands.colour_tables(config.sim, config.sim.class_names, names)
  ratio = table[config.sim.class_names.index('RRLyrae'), :, 2]
  assert ratio[names.index('r')] == pytest.approx(0.73)
  amp = {b: _blackbody_ab_mag(config.survey.filters[b], 6100.0)
         - _blackbody_ab_mag(config.survey.filters[b], 7400.0) for b in names}
  bb = np.asarray([amp[b] / amp['g'] for b in names])
  assert np.all(np.abs(ratio - bb) < 0.1), dict(zip(names, zip(ratio, bb.round(3))))
  assert np.all(ratio <= bb + 1e-6)
  assert np.all(np.diff(bb) < 0) and np.all(np.diff(ratio) < 0)  # falling to the red
