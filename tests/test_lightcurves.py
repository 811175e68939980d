"""Light-curve physics on dense time grids, the variability selection and the magnitude prior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hits
from rcnn_jax.sim import lightcurves as lc


@pytest.fixture(scope='module')
def model():
  return lc.build_lightcurve_model(hits.get_config('paper').sim)


def _curves(model, name, t, num=200, mean=20.0, seed=0):
  fn = lc.CURVES[name]
  keys = jax.random.split(jax.random.key(seed), num)
  mag, ref, z = jax.jit(jax.vmap(lambda k: fn(k, t, t.shape[0], jnp.float32(mean), model)))(
      keys)
  return np.asarray(mag, np.float64), np.asarray(ref), np.asarray(z)


def _extrema(m):
  """Indices of local maxima of light (magnitude minima) and minima of light, interior only."""
  d = np.sign(np.diff(m))
  nz = d != 0
  idx = np.flatnonzero(nz)
  s = d[nz]
  turn = np.flatnonzero(s[1:] != s[:-1])
  pos = idx[turn + 1]
  bright = pos[s[turn] < 0]  # magnitude stops falling: maximum light
  faint = pos[s[turn] > 0]
  return bright, faint


def _cycle_stats(t, m):
  """Per cycle between consecutive maxima of light: (rise fraction, minima of light, length)."""
  bright, faint = _extrema(m)
  out = []
  for a, b in zip(bright[:-1], bright[1:]):
    inside = faint[(faint > a) & (faint < b)]
    if len(inside):
      deepest = inside[np.argmax(m[inside])]
      out.append(((t[b] - t[deepest]) / (t[b] - t[a]), len(inside), t[b] - t[a]))
  return np.array(out)


def test_pulsation_shape_rise_and_single_minimum():
  phase = np.linspace(-0.5, 3.5, 40001)
  for q in (0.3, 0.6, 0.9):
    m = np.asarray(lc.pulsation_shape(jnp.asarray(phase), q), np.float64)
    np.testing.assert_allclose([m.min(), m.max()], [-0.5, 0.5], atol=1e-4)
    assert abs(m[5000] + 0.5) < 1e-4  # maximum light at phase 0
    st = _cycle_stats(phase, m)
    assert len(st) == 3 and np.all(st[:, 1] == 1)
    np.testing.assert_allclose(st[:, 0], lc.pulsation_rise_fraction(q), atol=2e-3)


def test_rr_lyrae_rise_and_one_minimum_per_cycle(model):
  t = jnp.linspace(0.0, 3.0, 30001)
  mag, ref, z = _curves(model, 'RRLyrae', t)
  assert np.all(np.isnan(z)) and np.all(ref == 20.0)
  rises, lengths, is_c = [], [], []
  for m in mag:
    st = _cycle_stats(np.asarray(t), m)
    assert len(st) >= 2
    assert np.all(st[:, 1] == 1)  # one minimum per cycle
    rises.append(np.median(st[:, 0]))
    lengths.append(np.median(st[:, 2]))
    is_c.append(rises[-1] > 0.25)
  rises, lengths, is_c = map(np.array, (rises, lengths, is_c))
  # RRab rise in ~0.12-0.18 of a cycle, RRc (near sinusoidal) in 0.35-0.42.
  assert np.all((rises[~is_c] > 0.10) & (rises[~is_c] < 0.20))
  assert np.all((rises[is_c] > 0.33) & (rises[is_c] < 0.45))
  assert 0.15 < is_c.mean() < 0.35  # rrc_fraction 0.25
  assert 0.55 < np.median(lengths[~is_c]) < 0.65 and 0.28 < np.median(lengths[is_c]) < 0.36
  amp = np.ptp(mag, 1)
  assert 0.8 < np.median(amp[~is_c]) < 1.2 and np.all(amp[is_c] < 0.61)


def test_rrab_broad_minimum_gives_negative_magnitude_skewness(model):
  """A real RRab spends longer near minimum light than near maximum (slow decline into a broad
  minimum, steep rise): its magnitudes skew negative (the literature's V-band sine series,
  lightcurves.py: -0.67). The odd closed form alone has zero skewness; RRc stay near zero."""
  from scipy import stats
  t = jnp.linspace(0.0, 30.0, 60001)  # tens of cycles: phase-uniform sampling of each curve
  mag, _, _ = _curves(model, 'RRLyrae', t, num=120)
  sk = stats.skew(mag, axis=1)
  st = [np.median(_cycle_stats(np.asarray(t), m)[:, 0]) for m in mag]
  is_c = np.array(st) > 0.25
  assert np.all((sk[~is_c] > -0.75) & (sk[~is_c] < -0.45)), sk[~is_c]
  assert np.all(np.abs(sk[is_c]) < 0.2), sk[is_c]
  for q in (0.80, 0.89):  # without the standstill: zero by symmetry
    x = np.linspace(0, 1, 20000, endpoint=False)
    assert abs(stats.skew(np.asarray(lc.pulsation_shape(jnp.asarray(x), q)))) < 1e-3


def test_cepheid_rise_one_minimum_and_standstill(model):
  t = jnp.linspace(0.0, 200.0, 40001)
  mag, _, _ = _curves(model, 'Cepheid', t, num=150)
  rises, periods = [], []
  for m in mag:
    st = _cycle_stats(np.asarray(t), m)
    assert len(st) >= 2
    assert np.all(st[:, 1] == 1)  # the bump is a standstill: it adds no minimum
    rises.append(np.median(st[:, 0]))
    periods.append(np.median(st[:, 2]))
  rises, periods = np.array(rises), np.array(periods)
  away = (periods < 7.0) | (periods > 16.0)
  assert away.sum() > 50
  assert 0.2 < np.median(rises[away]) < 0.36  # rise ~0.3 of a cycle at most periods
  assert np.all(rises < 0.5)


def test_standstill_is_monotone_and_slowest_at_its_centre():
  phase = np.linspace(0.0, 2.0, 20001)
  psi = np.asarray(lc._standstill_phase(jnp.asarray(phase), 0.3, 0.05, 0.8), np.float64)
  rate = np.diff(psi) / np.diff(phase)
  assert np.all(rate > 0)
  np.testing.assert_allclose(psi[-1] - psi[0], 2.0, atol=1e-4)
  slow = phase[np.argmin(rate[:10000])]
  assert abs(slow - 0.3) < 0.005 and rate.min() < 0.3 * np.median(rate)


def test_contact_binaries_two_minima_primary_deeper_equal_maxima(model):
  t = np.linspace(0.0, 3.0, 30001)
  mag, ref, _ = _curves(model, 'EclipsingBinary', jnp.asarray(t), num=200)
  contact = np.mean(mag == 20.0, 1) < 0.01  # detached ones are flat outside eclipse
  assert 0.3 < contact.mean() < 0.7  # contact_fraction 0.5
  for m in mag[contact]:
    bright, faint = _extrema(m)
    assert len(faint) >= 8
    # two minima per orbit: minima alternate with maxima, the orbit spans two of each
    order = np.sort(np.concatenate([bright, faint]))
    kinds = np.isin(order, faint)
    assert np.all(kinds[1:] != kinds[:-1])
    depth = m[faint]
    # alternate minima: one set (the primary) deeper or equal
    even, odd = depth[0::2], depth[1::2]
    n = min(len(even), len(odd))
    diff = even[:n] - odd[:n]
    assert np.all(diff >= -1e-6) or np.all(diff <= 1e-6)
    maxima = m[bright]
    assert np.ptp(maxima) < 0.05  # near-equal maxima (small O'Connell effect)
    assert 0.08 < np.ptp(m) < 0.9
    # orbital period within 0.22-0.6 d: four extrema of light-minimum kind every two orbits
    orbit = 2 * np.median(np.diff(t[faint]))
    assert 0.2 < orbit < 0.62


def test_contact_amplitudes_follow_rucinski_2001(model):
  """Rucinski (2001, AJ 122, 1007): the W UMa amplitude distribution is about flat for small
  amplitudes, peaks near 0.2-0.25 mag and falls to zero at the largest geometric amplitude
  (~0.75-0.8 mag, q = 1 edge-on); OGLE's amplitudes are small (Rucinski 1997). The uniform
  draw before issue 31 had median 0.45 mag and as many binaries at 0.6-0.75 as at 0.15-0.3."""
  config = hits.get_config('paper')
  config.sim.lightcurves.contact_fraction = 1.0
  m = lc.build_lightcurve_model(config.sim)
  t = jnp.linspace(0.0, 0.6, 1201)  # at least one whole orbit (P <= 0.6 d)
  mag, _, _ = _curves(m, 'EclipsingBinary', t, num=2000)
  amp = np.ptp(mag, 1)
  assert 0.27 < np.median(amp) < 0.37, np.median(amp)
  low = np.mean((amp > 0.15) & (amp < 0.3))
  high = np.mean((amp > 0.6) & (amp < 0.75))
  assert high < 0.35 * low, (low, high)
  assert amp.max() < 0.95  # 0.8 plus the unequal minima (a1 <= 0.15 a2)


def test_contact_amplitude_draw_is_the_trapezoid_and_old_configs_draw_uniform():
  keys = jax.random.split(jax.random.key(1), 20000)
  draw = jax.jit(jax.vmap(lambda k: lc.contact_amplitude(k, (0.1, 0.8), 0.25)))
  a = np.asarray(draw(keys), np.float64)
  assert a.min() >= 0.1 and a.max() <= 0.8
  # density: 1 on [0.1, 0.25], (0.8 - a) / 0.55 above, normalised by 0.15 + 0.275
  edges = np.linspace(0.1, 0.8, 15)
  hist, _ = np.histogram(a, edges, density=True)
  mid = 0.5 * (edges[1:] + edges[:-1])
  dens = np.where(mid <= 0.25, 1.0, (0.8 - mid) / 0.55) / 0.425
  np.testing.assert_allclose(hist[mid < 0.7], dens[mid < 0.7], rtol=0.12)
  # Configs saved without contact_amp_flat_to (before issue 31): the old draw, bit for bit.
  old = jax.vmap(lambda k: lc.contact_amplitude(k, (0.1, 0.8), None))(keys[:100])
  ref = jax.vmap(lambda k: jax.random.uniform(k, (), minval=0.1, maxval=0.8))(keys[:100])
  np.testing.assert_array_equal(np.asarray(old), np.asarray(ref))
  config = hits.get_config('paper')
  del config.sim.lightcurves['contact_amp_flat_to']
  config.sim.lightcurves.contact_fraction = 1.0
  m = lc.build_lightcurve_model(config.sim)
  mag, _, _ = _curves(m, 'EclipsingBinary', jnp.linspace(0.0, 0.6, 1201), num=400)
  assert 0.4 < np.median(np.ptp(mag, 1)) < 0.5  # uniform on 0.1-0.8


def test_detached_flat_outside_eclipse_and_width_from_geometry():
  phase = np.linspace(-0.5, 0.5, 200001)
  for r1, r2, cos_i, j in ((0.15, 0.1, 0.05, 0.5), (0.05, 0.04, 0.0, 0.9),
                           (0.2, 0.2, 0.3, 1.0)):
    f = np.asarray(lc.detached_flux(jnp.asarray(phase), r1, r2, cos_i, j), np.float64)
    w = lc.eclipse_half_width(r1, r2, cos_i)
    primary = np.abs(phase) < 0.25
    ecl = primary & (f < 1.0 - 1e-7)
    measured = (phase[ecl].max() - phase[ecl].min()) / 2
    np.testing.assert_allclose(measured, w, rtol=0.01, atol=2e-5)
    assert np.all(f[np.abs(phase) > w + 1e-4][np.abs(phase[np.abs(phase) > w + 1e-4]) < 0.5
                                              - w - 1e-4] == 1.0)
    total = np.pi * (r1**2 + j * r2**2)
    if cos_i == 0.0 and r2 < r1:  # central transit of star 2 over star 1
      np.testing.assert_allclose(1 - f.min(), np.pi * r2**2 / total, rtol=1e-3)
  # Sampled detached binaries: exactly flat (the sampled magnitude) most of the time.
  config = hits.get_config('paper')
  config.sim.lightcurves.contact_fraction = 0.0
  m = lc.build_lightcurve_model(config.sim)
  mag, ref, _ = _curves(m, 'EclipsingBinary', jnp.linspace(0.0, 40.0, 40001), num=100)
  flat = np.mean(mag == 20.0, 1)
  assert np.median(flat) > 0.8 and np.all(mag >= 20.0 - 1e-4), mag.min()
  assert np.all(ref == 20.0)


def test_variability_selection_rejects_constant_keeps_large_amplitude():
  e = 22
  valid = jnp.arange(e) < 18
  lim = jnp.full((e,), 23.5)
  args = (lim, valid, 2, 3.0, 0.012)
  const = jnp.full((e,), 19.0)
  assert not bool(lc.detectable_variability(const, *args))
  big = 19.0 + 0.5 * jnp.sin(jnp.arange(e) * 1.3)
  assert bool(lc.detectable_variability(big, *args))
  # +-1 % about the median: within 3 sigma of the 1.2 % floor (deviations <= 2 %).
  small = 19.0 + 0.01 * jnp.sign(jnp.sin(jnp.arange(e) * 1.3))
  assert not bool(lc.detectable_variability(small, *args))
  # A large amplitude near the limiting magnitude is lost in the noise.
  faint = 23.3 + 0.3 * jnp.sin(jnp.arange(e) * 1.3)
  assert not bool(lc.detectable_variability(faint, *args))
  # Deviations only in padded epochs do not count.
  pad = const.at[19:].set(17.0)
  assert not bool(lc.detectable_variability(pad, *args))


def test_shared_stellar_prior_covers_bright_magnitudes(model):
  config = hits.get_config('paper')
  np.testing.assert_array_equal(np.asarray(model.mag_icdf[0]), np.asarray(model.mag_icdf[1]))
  q = np.asarray(model.mag_icdf[0])
  u = np.linspace(0, 1, q.size)
  frac = lambda lo, hi: np.interp(hi, q, u) - np.interp(lo, q, u)
  w = config.sim.lightcurves.bright_weight
  lo, hi = config.sim.lightcurves.bright_range
  assert frac(lo, hi) >= w  # the uniform part alone puts w there
  assert frac(17.0, 19.5) > 0.3
  # The paper's prior (bright_weight 0) had few bright stars.
  config.sim.lightcurves.bright_weight = 0.0
  paper = np.asarray(lc.build_lightcurve_model(config.sim).mag_icdf[0])
  assert np.interp(19.5, paper, u) - np.interp(17.0, paper, u) < 0.1


def test_unknown_class_and_bad_prior_are_clear_errors():
  config = hits.get_config('paper')
  config.sim.class_names = tuple(config.sim.class_names) + ('Mira',)
  with pytest.raises(ValueError, match='no light-curve model'):
    lc.build_lightcurve_model(config.sim)
  config = hits.get_config('paper')
  config.sim.lightcurves.bright_weight = 1.5
  with pytest.raises(ValueError, match='bright_weight'):
    lc.build_lightcurve_model(config.sim)


def test_subset_and_window_give_the_same_curve(model):
  """A class's curve depends only on (key, class, times): what the variability selection
  evaluates at the window's epochs is what the object gets."""
  t = jnp.linspace(0.0, 30.0, 40)
  key = jax.random.key(5)
  for c in (1, 2, 3):
    full, _, _ = lc.sample_magnitudes(key, c, t, 40, model)
    sub, _, _ = lc.sample_magnitudes(key, c, t[7:29], 40, model, (1, 2, 3))
    np.testing.assert_allclose(np.asarray(sub), np.asarray(full)[7:29], rtol=1e-6)


@pytest.mark.parametrize('period,branch', [(7.0, 'descending'), (12.0, 'rising')])
def test_cepheid_hertzsprung_bump_moves_with_period(period, branch):
  """The bump (a standstill: a dip of |dm/dt| inside a branch, which a smooth branch has not)
  lies on the descending branch at P = 7 d and on the rising branch at P = 14 d (Hertzsprung
  progression), and on no branch at P = 3 d."""
  config = hits.get_config('paper')

  def branches_with_standstill(period):
    lp = np.log10(period)
    config.sim.lightcurves.cepheid_log_period_d = (lp, lp + 1e-7)
    m = lc.build_lightcurve_model(config.sim)
    t = np.linspace(0.0, 3 * period, 12001)
    mag, _, _ = _curves(m, 'Cepheid', jnp.asarray(t), num=10, mean=0.0)
    found = []
    for x in mag:
      bright, _ = _extrema(x)
      a, b = bright[0], bright[1]  # one cycle from maximum light
      cyc = x[a:b]
      rate = np.abs(np.gradient(cyc))
      faint = int(np.argmax(cyc))
      lo, hi = cyc.min(), cyc.max()
      mid = (cyc > lo + 0.02 * (hi - lo)) & (cyc < lo + 0.98 * (hi - lo))
      out = set()
      for name, part in (('descending', slice(0, faint)), ('rising', slice(faint, None))):
        r = rate[part][mid[part]]
        dip = any(r[i] < 0.6 * min(r[:i].max(), r[i + 1:].max()) for i in range(1, len(r) - 1))
        if dip:
          out.add(name)
      found.append(out)
    return found

  found = branches_with_standstill(period)
  assert all(f == {branch} for f in found), found
  assert all(f == set() for f in branches_with_standstill(3.0))
