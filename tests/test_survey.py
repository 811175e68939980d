"""Survey conditions: the built-in model and the empirical table reader."""

import numpy as np
import pytest

from configs import hits
from rcnn_jax.sim import survey

HEADER = ('field,epoch,filter,mjd,exp_time_s,seeing_arcsec,airmass,sky_adu,zero_point,limmag5,'
          'limmag3')


def _write_conditions(path, rows):
  path.write_text(HEADER + '\n' + '\n'.join(rows) + '\n')
  return str(path)


def _write_camera(path, text='ccd,gain_e_per_adu,read_noise_e,saturation_adu\n1,4.0,6.0,45000\n'
                  '2,3.8,7.0,40000\n'):
  path.write_text(text)
  return str(path)


def _rows(field, n, seeing=1.2, start=57070.1):
  return [f'{field},{i},g,{start + 0.07 * i},86.0,{seeing},1.2,120.0,25.0,23.6,24.1'
          for i in range(n)]


def _config(cond, cam):
  c = hits.get_config('smoke').survey
  c.unlock()
  c.conditions_path, c.camera_path = cond, cam
  return c


def test_builtin_model_matches_configured_distributions():
  c = hits.get_config().survey
  s = survey.build_survey(c, min_epochs=8)
  n = np.asarray(s.num_epochs)
  valid = np.arange(s.max_epochs)[None] < n[:, None]
  seeing = np.asarray(s.seeing_arcsec)[valid]
  assert seeing.max() <= c.max_seeing_arcsec
  assert 1.15 < np.median(seeing) < 1.45
  zp = np.asarray(s.zero_point)[valid]
  assert abs(np.median(zp) - 25.05) < 0.03
  assert 15 <= n.min() and n.max() <= 32
  t = np.asarray(s.t_days)
  assert np.all(np.diff(t, axis=1) >= 0)  # sorted, padding repeats the last epoch
  assert 3.74 <= float(s.gain.min()) and float(s.gain.max()) <= 4.44
  assert s.num_ccds == c.num_ccds


def test_builtin_model_is_deterministic_and_seeded():
  c = hits.get_config().survey
  a, b = survey.build_survey(c), survey.build_survey(c)
  np.testing.assert_array_equal(a.t_days, b.t_days)
  c.model_seed = 7
  d = survey.build_survey(c)
  assert not np.array_equal(np.asarray(a.sky_adu), np.asarray(d.sky_adu))


def test_reader_drops_bad_seeing_and_sorts(tmp_path):
  rows = _rows(1, 10) + _rows(2, 9)
  rows[3] = rows[3].replace(',1.2,1.2,', ',2.5,1.2,')  # field 1 epoch 3 above 2"
  rows.append('1,99,r,57070.5,86.0,1.0,1.2,120.0,25.0,23.6,24.1')  # other band ignored
  rows = rows[::-1]  # unsorted input
  s = survey.build_survey(_config(_write_conditions(tmp_path / 'c.csv', rows),
                                  _write_camera(tmp_path / 'cam.csv')), min_epochs=2)
  assert list(np.asarray(s.num_epochs)) == [9, 9]
  assert np.all(np.diff(np.asarray(s.t_days), axis=1) >= 0)
  assert float(s.seeing_arcsec.max()) <= 2.0
  assert s.num_ccds == 2 and abs(s.mjd0 - 57070.1) < 1e-9


def test_reader_min_epochs_drops_short_fields(tmp_path):
  rows = _rows(1, 10) + _rows(2, 4)
  s = survey.build_survey(_config(_write_conditions(tmp_path / 'c.csv', rows),
                                  _write_camera(tmp_path / 'cam.csv')), min_epochs=8)
  assert s.num_fields == 1


@pytest.mark.parametrize('mutate, message', [
    (lambda r: [x.replace(',120.0,', ',nan,') for x in r], "unusable value"),
    (lambda r: [x.replace(',86.0,', ',-1,') for x in r], "exp_time_s"),
])
def test_reader_rejects_unusable_values(tmp_path, mutate, message):
  path = _write_conditions(tmp_path / 'c.csv', mutate(_rows(1, 10)))
  with pytest.raises(ValueError, match=message) as e:
    survey.build_survey(_config(path, _write_camera(tmp_path / 'cam.csv')))
  assert 'c.csv' in str(e.value) and '\n' not in str(e.value)


def test_reader_missing_file_and_column(tmp_path):
  cam = _write_camera(tmp_path / 'cam.csv')
  with pytest.raises(FileNotFoundError, match='nope.csv'):
    survey.build_survey(_config(str(tmp_path / 'nope.csv'), cam))
  p = tmp_path / 'c.csv'
  p.write_text('field,filter,mjd\n1,g,57070.1\n')
  with pytest.raises(ValueError, match="missing column 'exp_time_s'"):
    survey.build_survey(_config(str(p), cam))
  bad_cam = _write_camera(tmp_path / 'cam2.csv', 'ccd,gain_e_per_adu\n1,4.0\n')
  with pytest.raises(ValueError, match="missing column 'read_noise_e'"):
    survey.build_survey(_config(_write_conditions(tmp_path / 'c3.csv', _rows(1, 10)), bad_cam))


def test_reader_needs_both_paths(tmp_path):
  with pytest.raises(ValueError, match='both'):
    survey.build_survey(_config(_write_conditions(tmp_path / 'c.csv', _rows(1, 10)), ''))


def test_reader_on_shared_hits_data(hits_data):
  c = _config(str(hits_data / 'conditions.csv'), str(hits_data / 'camera.csv'))
  s = survey.build_survey(c, min_epochs=8)
  n = np.asarray(s.num_epochs)
  assert s.num_fields == 49 and int(n.sum()) == 1124  # the paper's seeing cut
  assert s.num_ccds == 47
  assert 3.74 <= float(s.gain.min()) and float(s.gain.max()) <= 4.45
