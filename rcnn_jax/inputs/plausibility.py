"""Plausibility of an epoch's observing conditions and pixels: one rule for real files
(``preprocess.prepare``), the streaming update (``stream.Streaming.update``) and the exported
update (``exported``). This module imports only numpy, so the exported artifact's loader can use
it without the project's model code.

An epoch is implausible, and dropped with one line naming it, when:

* its zero point is not finite, or lies more than ``ZP_MARGIN_MAG`` outside the survey's
  zero-point range (``zero_point_range``: the 5-95 % quantiles of ``config.survey`` over its
  bands). HiTS 2015's measured conditions (``shared/data/hits2015/conditions.csv``, Forster et
  al. 2016, ApJ 832, 155) span 24.91-25.11 (5-95 %, g) and reach 23.88 on the cloudiest epoch of
  the development files, 1.2 mag below the median: a 2 mag margin keeps every epoch a survey
  would process (an epoch 2 mag of cloud deep is not science data) and refuses fill values
  (-99, 0), sign errors (-25) and another convention (e.g. ZTF's 30-s ``magzpsci`` 26.3 against
  the config's 1 ADU/s 22.6 is 3.7 mag off);
* its seeing is zero, negative or infinite (NaN is *unknown*, handled by the seeing cut:
  ``config.real.drop_unknown_seeing``);
* its exposure time is zero, negative or not finite (when the file gives one);
* its sky level is zero or negative: the stamps are raw ADU with the sky included (the input
  format of ``realdata``), so the sky pedestal is positive (HiTS: 100 to 5,500 ADU);
* one of its pixels lies outside what the camera can record: above ``ADU_MARGIN`` times the
  survey's highest saturation level (``config.survey.saturation_range_adu``; DECam 33,874 to
  51,319 ADU, Bernstein et al. 2017, PASP 129, 114502; a 16-bit converter cannot count past
  65,535 and flat-fielding scales by a few per cent), or below minus that saturation level (a
  bias-subtracted pixel is never that far below zero). 1e30 ADU is a corrupt value, not a star.

NaN or Inf pixels, MJDs, zero points and skies are refused for the whole file by ``realdata``
(a corrupt file), as before; the rules here concern values that are finite but impossible.
"""

from __future__ import annotations

import numpy as np

ZP_MARGIN_MAG = 2.0
ADU_MARGIN = 2.0


def zero_point_range(survey) -> tuple[float, float] | None:
  """(lowest, highest) zero point the survey config describes: its ``zero_point_quantiles`` (5,
  50, 95 %) or, for several bands, those of every ``band_conditions`` entry. None when the
  config gives none (a survey read from a conditions table: ``table_zero_point_range``)."""
  q = survey.get('zero_point_quantiles', None) if hasattr(survey, 'get') else None
  qs = [tuple(q)] if q is not None else []
  bc = survey.get('band_conditions', None) if hasattr(survey, 'get') else None
  if bc:
    for b in bc:
      qb = bc[b].get('zero_point_quantiles', None)
      if qb is not None:
        qs.append(tuple(qb))
  if not qs:
    return None
  return float(min(min(x) for x in qs)), float(max(max(x) for x in qs))


def limits_from_config(config) -> dict:
  """The rule's numbers for a config (a saved one included): zero-point and pixel ranges."""
  sv = config.survey
  zr = zero_point_range(sv)
  zp = None if zr is None else (zr[0] - ZP_MARGIN_MAG, zr[1] + ZP_MARGIN_MAG)
  sat = sv.get('saturation_range_adu', None)
  adu = None if sat is None else (-float(max(sat)), ADU_MARGIN * float(max(sat)))
  return {'zero_point_range': None if zp is None else [float(zp[0]), float(zp[1])],
          'adu_range': None if adu is None else [float(adu[0]), float(adu[1])]}


def epoch_problems(limits, zero_point=None, seeing_arcsec=None, sky_adu=None, exp_time_s=None,
                   stamps=None) -> list[str]:
  """Per epoch, why it is implausible ('' when it is not); every argument is [E] (stamps
  [E, H, W]) or None (not given, not checked). ``limits``: ``limits_from_config``'s dict."""
  n = None
  for a in (zero_point, seeing_arcsec, sky_adu, exp_time_s, stamps):
    if a is not None:
      n = len(np.asarray(a))
      break
  if not n:  # nothing given, or no epoch at all
    return []
  why = [[] for _ in range(n)]

  def flag(bad, text):
    for i in np.flatnonzero(bad):
      why[i].append(text(i))

  zr = limits.get('zero_point_range') if limits else None
  if zero_point is not None:
    z = np.asarray(zero_point, np.float64).reshape(n)
    # NaN: not given (streaming: no scaling); +-Inf or a value far outside the survey's range.
    bad = np.isinf(z)
    if zr is not None:
      with np.errstate(invalid='ignore'):
        bad |= np.isfinite(z) & ((z < zr[0]) | (z > zr[1]))
    flag(bad, lambda i: f'zero point {z[i]:g} outside the plausible {zr[0]:.2f}-{zr[1]:.2f}'
         if zr is not None else f'zero point {z[i]:g}')
  if seeing_arcsec is not None:
    s = np.asarray(seeing_arcsec, np.float64).reshape(n)
    with np.errstate(invalid='ignore'):
      bad = np.isinf(s) | (s <= 0)
    flag(bad, lambda i: f'seeing {s[i]:g}" is not positive and finite')
  if exp_time_s is not None:
    e = np.asarray(exp_time_s, np.float64).reshape(n)
    with np.errstate(invalid='ignore'):
      bad = ~np.isfinite(e) | (e <= 0)
    flag(bad, lambda i: f'exposure time {e[i]:g} s is not positive and finite')
  if sky_adu is not None:
    k = np.asarray(sky_adu, np.float64).reshape(n)
    with np.errstate(invalid='ignore'):
      bad = k <= 0
    flag(bad, lambda i: f'sky {k[i]:g} ADU is not positive (stamps hold raw ADU with the sky)')
  ar = limits.get('adu_range') if limits else None
  if stamps is not None and ar is not None:
    st = np.asarray(stamps, np.float64).reshape(n, -1)
    with np.errstate(invalid='ignore'):
      hi, lo = np.nanmax(st, axis=1), np.nanmin(st, axis=1)
    bad = (hi > ar[1]) | (lo < ar[0])
    flag(bad, lambda i: f'pixel values {lo[i]:g}..{hi[i]:g} ADU beyond what the camera records '
         f'({ar[0]:g}..{ar[1]:g})')
  return ['; '.join(w) for w in why]
