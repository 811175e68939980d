"""Real sequences: npz/FITS reading, validation errors, pickle refusal, sky estimate, eq. 4
inputs."""

from __future__ import annotations

import os
import pathlib
import pickle

import numpy as np
import pytest

from rcnn_jax.inputs import realdata

DEV = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'hits2015' / \
    'real_nonvariable_dev'


def _good(t=6, size=25, seed=0):
  """A valid sequence's arrays: stamps with a unique centre value, increasing MJD."""
  rng = np.random.default_rng(seed)
  stamps = (100.0 + rng.normal(0.0, 5.0, (t, size, size))).astype(np.float32)
  stamps[:, size // 2, size // 2] = 12345.0 + np.arange(t)
  return dict(stamps=stamps, mjd=57070.0 + np.cumsum(rng.uniform(0.05, 2.0, t)),
              zero_point=25.0 + rng.normal(0.0, 0.05, t), sky_adu=np.full(t, 100.0))


def _save(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def _assert_bad(path, match=None, **kw):
  with pytest.raises(realdata.BadInput) as info:
    realdata.load_sequence(path, **kw)
  msg = str(info.value)
  assert os.path.basename(str(path)) in msg
  assert '\n' not in msg
  if match:
    assert match in msg.lower(), msg
  return msg


def test_good_npz_is_centre_cropped(tmp_path):
  d = _good(t=6, size=25)
  seq = realdata.load_sequence(_save(tmp_path / 'obj1.npz', **d))
  assert seq.name == 'obj1'
  assert seq.stamps.shape == (6, 21, 21) and seq.stamps.dtype == np.float32
  np.testing.assert_array_equal(seq.stamps[:, 10, 10], 12345.0 + np.arange(6))
  np.testing.assert_array_equal(seq.stamps, d['stamps'][:, 2:23, 2:23])
  assert seq.mjd.dtype == np.float64 and seq.sky_adu.dtype == np.float32
  assert not seq.sky_estimated and seq.seeing_arcsec is None
  np.testing.assert_allclose(seq.zero_point, d['zero_point'])


def test_rectangular_stamps_and_even_offsets(tmp_path):
  d = _good(t=4, size=25)
  stamps = np.zeros((4, 24, 30), np.float32)
  stamps[:, 1 + 10, 4 + 10] = 7.0  # rows (24-21)//2 = 1, cols (30-21)//2 = 4
  seq = realdata.load_sequence(_save(tmp_path / 'rect.npz', stamps=stamps, mjd=d['mjd']))
  assert seq.stamps.shape == (4, 21, 21)
  assert np.all(seq.stamps[:, 10, 10] == 7.0) and seq.stamps.sum() == 28.0
  assert seq.zero_point is None and seq.sky_estimated


def test_real_dev_files_and_sky_estimate(tmp_path):
  if not DEV.is_dir():
    pytest.skip(f'real dev set not found at {DEV}')
  seqs, errors = realdata.load_many([DEV])
  assert errors == [] and len(seqs) == 40
  rel = []
  for seq in seqs:
    assert seq.stamps.shape[1:] == (21, 21) and not seq.sky_estimated
    with np.load(DEV / f'{seq.name}.npz', allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files if k != 'sky_adu'}
    est = realdata.load_sequence(_save(tmp_path / f'{seq.name}.npz', **arrays))
    assert est.sky_estimated
    np.testing.assert_array_equal(est.sky_adu, realdata.estimate_sky(seq.stamps))
    rel.append(np.median(est.sky_adu) / np.median(seq.sky_adu) - 1.0)
  rel = np.abs(np.array(rel))
  # The stored sky is one value per field and epoch (several CCDs share it), the estimate is the
  # local background of each stamp: they agree to 3 % typically and 3.5 % at worst.
  assert np.median(rel) < 0.015
  assert np.mean(rel < 0.03) >= 0.95
  assert rel.max() < 0.035


def test_estimate_sky_ignores_source_and_outliers():
  rng = np.random.default_rng(1)
  sky = np.array([100.0, 250.0, 1750.0])
  stamps = sky[:, None, None] + rng.normal(0, 3.0, (3, 21, 21))
  stamps[:, 5:16, 5:16] += 5000.0  # a bright source inside the ring
  stamps[:, 0, :4] = 60000.0  # saturated pixels / cosmic rays on the border
  stamps[:, 20, 17:] = -500.0
  np.testing.assert_allclose(realdata.estimate_sky(stamps), sky, rtol=0.01)
  # exactly the outer 3-pixel ring: 80 border pixels at 100, the next 72 + 64 at 200, the rest
  # at 100; the ring's median is 200, a 2- or 4-pixel ring would give 100 or 150
  i = np.arange(21)
  edge = np.minimum(np.minimum(i, 20 - i)[:, None], np.minimum(i, 20 - i)[None, :])
  ring = np.where((edge == 1) | (edge == 2), 200.0, 100.0)
  np.testing.assert_allclose(realdata.estimate_sky(ring[None]), [200.0])


def test_fits_round_trip_equals_npz(tmp_path):
  d = _good(t=5, size=23)
  npz = realdata.load_sequence(_save(tmp_path / 'a.npz', **d))
  for name in ('a.fits', 'a.fits.gz', 'a.fit'):
    realdata.write_fits(tmp_path / name, d['stamps'], d['mjd'], d['zero_point'], d['sky_adu'])
    fit = realdata.load_sequence(tmp_path / name)
    assert fit.name == 'a'
    for field in ('stamps', 'mjd', 'sky_adu', 'zero_point'):
      np.testing.assert_array_equal(getattr(fit, field), getattr(npz, field))
      assert getattr(fit, field).dtype == getattr(npz, field).dtype
  realdata.write_fits(tmp_path / 'b.fits', d['stamps'], d['mjd'])
  b = realdata.load_sequence(tmp_path / 'b.fits')
  assert b.zero_point is None and b.sky_estimated


def test_folder_expansion(tmp_path):
  d = _good()
  for n in ('c.npz', 'a.npz'):
    _save(tmp_path / n, **d)
  realdata.write_fits(tmp_path / 'b.fits.gz', d['stamps'], d['mjd'])
  realdata.write_fits(tmp_path / 'd.fit', d['stamps'], d['mjd'])
  (tmp_path / 'notes.txt').write_text('x')
  (tmp_path / 'sub').mkdir()
  _save(tmp_path / 'sub' / 'z.npz', **d)
  files = realdata.expand_inputs([tmp_path])
  assert [os.path.basename(f) for f in files] == ['a.npz', 'b.fits.gz', 'c.npz', 'd.fit']
  single = str(tmp_path / 'sub' / 'z.npz')
  # The same file twice is one object (its path is its identity in outputs): listed once.
  assert realdata.expand_inputs([single, tmp_path / 'sub']) == [single]
  with pytest.raises(realdata.BadInput, match='nowhere'):
    realdata.expand_inputs([tmp_path / 'nowhere'])
  # A folder of class folders (real_labelled_dev/): the subfolders' files, in sorted order.
  top = tmp_path / 'labelled'
  for cls, names in (('RRLyrae', ('r2.npz', 'r1.npz')), ('EclipsingBinary', ('e1.npz',))):
    (top / cls).mkdir(parents=True)
    for n in names:
      _save(top / cls / n, **d)
  assert [os.path.relpath(f, top) for f in realdata.expand_inputs([top])] == [
      'EclipsingBinary/e1.npz', 'RRLyrae/r1.npz', 'RRLyrae/r2.npz']
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  with pytest.raises(realdata.BadInput, match='nor do its subfolders'):
    realdata.expand_inputs([tmp_path / 'empty'])


BAD_CASES = {
    'no_stamps': lambda d: {k: v for k, v in d.items() if k != 'stamps'},
    'no_mjd': lambda d: {k: v for k, v in d.items() if k != 'mjd'},
    'stamps_2d': lambda d: {**d, 'stamps': d['stamps'][0]},
    'stamps_4d': lambda d: {**d, 'stamps': d['stamps'][..., None]},
    'too_small': lambda d: {**d, 'stamps': d['stamps'][:, :20, :]},
    'too_narrow': lambda d: {**d, 'stamps': d['stamps'][:, :, 3:23]},
    'mjd_length': lambda d: {**d, 'mjd': d['mjd'][:-1]},
    'zp_length': lambda d: {**d, 'zero_point': d['zero_point'][:-1]},
    'sky_length': lambda d: {**d, 'sky_adu': np.ones(9)},
    'seeing_length': lambda d: {**d, 'seeing_arcsec': np.ones(2)},
    'nan_stamps': lambda d: {**d, 'stamps': np.where(np.arange(25) == 3, np.nan, d['stamps'])},
    'inf_stamps': lambda d: {**d, 'stamps': np.where(np.arange(25) == 3, np.inf, d['stamps'])},
    'nan_mjd': lambda d: {**d, 'mjd': np.where(np.arange(6) == 2, np.nan, d['mjd'])},
    'nan_zp': lambda d: {**d, 'zero_point': np.where(np.arange(6) == 2, np.nan, d['zero_point'])},
    'inf_sky': lambda d: {**d, 'sky_adu': np.where(np.arange(6) == 0, -np.inf, d['sky_adu'])},
    'mjd_repeat': lambda d: {**d, 'mjd': np.r_[d['mjd'][:3], d['mjd'][2], d['mjd'][4:]]},
    'mjd_decreasing': lambda d: {**d, 'mjd': d['mjd'][::-1].copy()},
    'string_stamps': lambda d: {**d, 'stamps': d['stamps'].astype(str)},
    'string_mjd': lambda d: {**d, 'mjd': d['mjd'].astype(str)},
    'bool_stamps': lambda d: {**d, 'stamps': d['stamps'] > 100},
    'complex_zp': lambda d: {**d, 'zero_point': d['zero_point'].astype(complex)},
}


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_npz_gives_one_line_bad_input(tmp_path, case):
  path = _save(tmp_path / f'{case}.npz', **BAD_CASES[case](_good()))
  _assert_bad(path)


def test_bad_input_messages_name_the_problem(tmp_path):
  d = _good()
  assert "'stamps'" in _assert_bad(_save(tmp_path / 'm.npz', mjd=d['mjd']), 'missing')
  _assert_bad(_save(tmp_path / 's.npz', **BAD_CASES['too_small'](d)), 'smaller')
  _assert_bad(_save(tmp_path / 'n.npz', **BAD_CASES['nan_mjd'](d)), 'nan')
  _assert_bad(_save(tmp_path / 'i.npz', **BAD_CASES['mjd_repeat'](d)), 'strictly increasing')
  _assert_bad(_save(tmp_path / 'd.npz', **BAD_CASES['string_stamps'](d)), 'non-numeric')
  _assert_bad(_save(tmp_path / 'l.npz', **BAD_CASES['zp_length'](d)), 'zero_point')
  few = {k: v[:2] for k, v in d.items()}
  _assert_bad(_save(tmp_path / 'f.npz', **few), 'fewer than n_w', n_w=3)
  assert realdata.load_sequence(tmp_path / 'f.npz', n_w=2).stamps.shape == (2, 21, 21)
  _assert_bad(tmp_path / 'missing.npz', 'no such file')
  (tmp_path / 'x.csv').write_text('1,2\n')
  _assert_bad(tmp_path / 'x.csv', 'unknown format')


def test_bad_fits_gives_bad_input(tmp_path):
  d = _good()
  realdata.write_fits(tmp_path / 'short.fits', d['stamps'], d['mjd'][:-1])
  _assert_bad(tmp_path / 'short.fits', "'mjd'")
  from astropy.io import fits
  fits.PrimaryHDU(d['stamps']).writeto(tmp_path / 'notable.fits')
  _assert_bad(tmp_path / 'notable.fits', "missing key 'mjd'")
  realdata.write_fits(tmp_path / 'cut.fits', d['stamps'], d['mjd'])
  raw = (tmp_path / 'cut.fits').read_bytes()
  (tmp_path / 'cut.fits').write_bytes(raw[:len(raw) // 2])
  _assert_bad(tmp_path / 'cut.fits')
  (tmp_path / 'junk.fits').write_bytes(b'not a fits file at all' * 10)
  _assert_bad(tmp_path / 'junk.fits', 'cannot read')


class _Trap:
  """Unpickling this creates the sentinel file: proof that a loader unpickled."""

  def __init__(self, sentinel):
    self.sentinel = pathlib.Path(sentinel)

  def __reduce__(self):
    return (pathlib.Path.touch, (self.sentinel,))


def test_pickled_files_refused_and_never_unpickled(tmp_path):
  sentinel = tmp_path / 'UNPICKLED'
  d = _good()
  # an npz holding an object array (with a trap inside)
  obj = np.empty(1, dtype=object)
  obj[0] = _Trap(sentinel)
  np.savez(tmp_path / 'objarr.npz', stamps=d['stamps'], mjd=d['mjd'], extra=obj)
  # a plain pickle.dump into a .npz name
  with open(tmp_path / 'dumped.npz', 'wb') as f:
    pickle.dump({'stamps': d['stamps'], 'mjd': d['mjd'], 'trap': _Trap(sentinel)}, f)
  # np.save of an object array into a .npz name (an .npy payload)
  with open(tmp_path / 'saved.npz', 'wb') as f:
    np.save(f, np.array([{'a': 1}, _Trap(sentinel)], dtype=object), allow_pickle=True)
  for name in ('objarr.npz', 'dumped.npz', 'saved.npz'):
    assert 'pickled data, refused' in _assert_bad(tmp_path / name)
    seqs, errors = realdata.load_many([tmp_path / name])
    assert seqs == [] and 'pickled data, refused' in errors[0]
  assert not sentinel.exists()
  # the trap works: a real unpickle would have created it
  pickle.loads(pickle.dumps(_Trap(sentinel)))
  assert sentinel.exists()


def test_truncated_and_corrupt_npz(tmp_path):
  good = _save(tmp_path / 'whole.npz', **_good())
  raw = pathlib.Path(good).read_bytes()
  (tmp_path / 'half.npz').write_bytes(raw[:len(raw) // 2])
  assert 'cannot read' in _assert_bad(tmp_path / 'half.npz')
  (tmp_path / 'empty.npz').write_bytes(b'')
  _assert_bad(tmp_path / 'empty.npz', 'cannot read')
  # flip bytes inside a member's data: the zip CRC or the npy header fails
  bad = bytearray(raw)
  for i in range(200, 400):
    bad[i] ^= 0xFF
  (tmp_path / 'flipped.npz').write_bytes(bytes(bad))
  _assert_bad(tmp_path / 'flipped.npz')
  with open(tmp_path / 'plain.npz', 'wb') as f:
    np.save(f, np.zeros((6, 21, 21)))
  _assert_bad(tmp_path / 'plain.npz', 'not an npz')


def test_load_many_collects_errors_and_fail_fast(tmp_path):
  d = _good()
  folder = tmp_path / 'set'
  folder.mkdir()
  _save(folder / 'a_good.npz', **d)
  _save(folder / 'b_bad.npz', **BAD_CASES['nan_stamps'](d))
  (folder / 'c_cut.npz').write_bytes(b'PK\x03\x04' + b'\0' * 10)
  realdata.write_fits(folder / 'd_good.fits', d['stamps'], d['mjd'])
  seqs, errors = realdata.load_many([folder, tmp_path / 'absent'])
  assert [s.name for s in seqs] == ['a_good', 'd_good']
  assert len(errors) == 3 and all('\n' not in e for e in errors)
  # Listing problems first (the missing path), then the files that fail to load, in order.
  assert 'absent' in errors[0] and 'b_bad.npz' in errors[1] and 'c_cut.npz' in errors[2]
  with pytest.raises(realdata.BadInput, match='b_bad.npz'):
    realdata.load_many([folder], fail_fast=True)
  with pytest.raises(realdata.BadInput, match='absent'):
    realdata.load_many([tmp_path / 'absent', folder], fail_fast=True)


def _seq(stamps, mjd, sky, zp=None):
  return realdata.RealSequence(
      name='x', stamps=np.asarray(stamps, np.float32), mjd=np.asarray(mjd, np.float64),
      sky_adu=np.asarray(sky, np.float32), zero_point=None if zp is None else np.asarray(zp),
      sky_estimated=False, seeing_arcsec=None)


def test_eq4_makes_counts_independent_of_zero_point():
  rng = np.random.default_rng(3)
  psf = np.exp(-((np.arange(21) - 10)[:, None]**2 + (np.arange(21) - 10)[None, :]**2) / 8.0)
  psf /= psf.sum()
  mag, exp_time = 20.0, 86.0
  zp = np.array([25.1, 24.6, 25.4, 24.9])
  sky = rng.uniform(100, 600, 4)
  adu = 10**(-0.4 * (mag - zp)) * exp_time  # the same star through different zero points
  stamps = adu[:, None, None] * psf + sky[:, None, None]
  out = realdata.model_inputs(_seq(stamps, np.arange(4.0), sky, zp), n_w=1)
  proc = out['images'][..., 0]
  expected = 10**(-0.4 * (mag - zp[0])) * exp_time * psf
  for e in range(4):
    np.testing.assert_allclose(proc[e], expected, rtol=1e-5, atol=1e-4)
  # without zero points: sky subtraction only
  out = realdata.model_inputs(_seq(stamps, np.arange(4.0), sky), n_w=1)
  np.testing.assert_allclose(out['images'][..., 0], stamps - sky[:, None, None], rtol=1e-5,
                             atol=1e-3)


def test_stacking_and_time_gaps_by_hand():
  mjd = np.array([57070.0, 57070.5, 57071.25, 57073.0, 57080.0])
  stamps = np.stack([np.full((21, 21), 10.0 * (e + 1)) for e in range(5)])
  sky = np.full(5, 5.0)
  out = realdata.model_inputs(_seq(stamps, mjd, sky), n_w=3)
  assert out['images'].shape == (3, 21, 21, 3) and out['images'].dtype == np.float32
  assert out['time_gaps'].dtype == np.float32 and out['num_steps'] == 3
  # step t holds epochs t, t+1, t+2; values are 10 (e+1) - 5
  np.testing.assert_array_equal(out['images'][:, 0, 0, :],
                                [[5, 15, 25], [15, 25, 35], [25, 35, 45]])
  np.testing.assert_allclose(out['time_gaps'],
                             [[0, .5, 1.25], [.5, 1.25, 3.], [1.25, 3., 10.]])
  np.testing.assert_array_equal(out['mjd_last'], [57071.25, 57073.0, 57080.0])
  assert out['mask'].tolist() == [True] * 3


def test_padding_truncation_and_mask():
  mjd = 57070.0 + np.arange(5.0)
  stamps = np.stack([np.full((21, 21), e + 1.0) for e in range(5)])
  seq = _seq(stamps, mjd, np.zeros(5), zp=np.full(5, 25.0))
  full = realdata.model_inputs(seq, n_w=3)
  pad = realdata.model_inputs(seq, n_w=3, max_steps=6)
  assert pad['images'].shape == (6, 21, 21, 3) and pad['time_gaps'].shape == (6, 3)
  assert pad['mask'].tolist() == [True] * 3 + [False] * 3 and pad['num_steps'] == 3
  np.testing.assert_array_equal(pad['images'][:3], full['images'])
  np.testing.assert_array_equal(pad['time_gaps'][:3], full['time_gaps'])
  assert not pad['images'][3:].any() and not pad['time_gaps'][3:].any()
  assert np.all(np.isnan(pad['mjd_last'][3:])) and pad['mjd_last'][2] == mjd[4]
  cut = realdata.model_inputs(seq, n_w=3, max_steps=2)
  assert cut['images'].shape == (2, 21, 21, 3) and cut['num_steps'] == 2
  assert cut['mask'].all()
  np.testing.assert_array_equal(cut['images'], full['images'][:2])
  np.testing.assert_array_equal(cut['mjd_last'], mjd[2:4])
  same = realdata.model_inputs(seq, n_w=3, max_steps=3)
  np.testing.assert_array_equal(same['images'], full['images'])
  with pytest.raises(ValueError):
    realdata.model_inputs(seq, n_w=6)


def test_matches_simulator_conventions():
  from rcnn_jax.sim import sequences
  d = _good(t=7, size=21, seed=5)
  d['zero_point'] = 25.0 + np.linspace(-0.4, 0.3, 7)
  seq = _seq(d['stamps'], d['mjd'], d['sky_adu'] + np.arange(7.0), d['zero_point'])
  out = realdata.model_inputs(seq, n_w=3)
  proc = sequences.preprocess(seq.stamps, seq.sky_adu, seq.zero_point.astype(np.float32),
                              np.float32(seq.zero_point[0]))
  np.testing.assert_allclose(out['images'], np.asarray(sequences.stack_steps(proc, 3)),
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(out['time_gaps'],
                             np.asarray(sequences.time_gaps(seq.mjd - seq.mjd[0], 3)), atol=1e-5)
