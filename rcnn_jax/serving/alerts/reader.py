"""ZTF and Rubin alert packets (Avro) -> one epoch of an object each (``Epoch``).

An ``Epoch`` holds what ``Classifier.update`` (``stream.py``) takes for one object: the science
stamp (raw counts with the sky in the model's units, already cut to the stamp size around the
source), MJD, band, zero point and seeing, plus the ids. Everything after that (the seeing cut,
the sky, eq. 4, the window, the LSTM) is the stream's, the same rules as every real input
(``preprocess.py``); nothing here prepares an image further.

From the cutout to the stamp. The packet's science cutout is centred on the source: ZTF cuts
63 x 63 px around the candidate's pixel (Masci et al. 2019, PASP 131, 018003, Sec. 6.2;
ztf-avro-alert schema 3.3, ``cutoutScience``), Rubin cuts a box of ``bboxSize`` (30-55 px here)
around the DIASource and writes its WCS with the source at the reference point (``CRVAL`` =
the source's ra, dec; LSST DPDD, LSE-163 Sec. 3.5; schema ``lsst.v10_0``). The stamp is the
``config.sim.stamp_size`` square whose centre pixel is the pixel holding the source (``CRPIX``
for Rubin, the cutout's centre for ZTF, or its edge side when ZTF truncated it at a CCD edge,
from ``xpos``/``ypos``). No resampling: the ZTF config's pixel is ZTF's (1.01"/px) and the LSST
config's Rubin's (0.2"/px), so the model sees the survey's own pixels and noise; a packet whose
native pixel scale differs from the model's by more than ``PIXEL_SCALE_TOLERANCE`` is refused
(a resampled stamp would have correlated noise the simulator never made). A stamp that does
not fit inside the cutout, or holds a NaN or Inf, is refused.

Units (``config.survey``: counts in ADU with the sky, zero points for 1 ADU/s, eq. 1 of
``render.mag_to_adu``: ADU = t 10^((zp - m) / 2.5)):

* ZTF: the cutout is the science image in DN (``BUNIT = 'DN'``), sky included; its
  ``candidate.magzpsci`` is the zero point of the whole exposure (Masci et al. 2019, Sec. 8),
  so the config's zero point is ``magzpsci - 2.5 log10(exptime)``. Seeing: ``candidate.fwhm``
  (px, SExtractor's Gaussian-core FWHM; schema 3.3) times 1.01"/px. ``fid`` 1, 2, 3 = g, r, i.
  MJD = ``jd`` - 2400000.5.
* Rubin: the cutout is the calibrated, background-subtracted visit image in nJy (``BUNIT``),
  so m_AB = 31.4 - 2.5 log10(f / nJy) (Oke & Gunn 1983, ApJ 266, 713: 3631 Jy at m = 0). The
  packet carries no ADU calibration, so the stamp is put in the config's units with the band's
  median zero point ``zp`` (``survey.band_conditions[b].zero_point_quantiles[1]``, SMTN-002)
  and the survey's visit time ``t`` (``survey.exp_time_s``, 30 s; the packet has none):
  ADU = f_nJy t 10^((zp - 31.4) / 2.5), and that ``zp`` is the epoch's zero point. Eq. 4 then
  scales a band's images exactly as the simulator scales its nominal ones. Seeing: the FWHM of
  the PSF cutout (``PSFIMAGE`` extension of ``cutoutScience``: 2 sqrt(A / pi) for the area A
  of the pixels above half its peak) times 0.2"/px; without one, the Gaussian FWHM
  2.3548 sqrt((ixxPSF + iyyPSF) / 2) of the source's adaptive PSF moments (arcsec^2). MJD =
  ``midpointMjdTai``. Object: ``diaObjectId``; 0 or null means the source has no DIAObject
  (a solar-system source: ``ssObjectId``, object ``ss<id>``; else the source alone,
  ``src<diaSourceId>``), never one object for all of them.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import math
import os
import warnings
import zlib

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
import fastavro
import numpy as np

from rcnn_jax.core.errors import UserError

ZTF_PIXEL_SCALE = 1.01  # arcsec/px (Dekany et al. 2020, PASP 132, 038001)
RUBIN_PIXEL_SCALE = 0.2  # arcsec/px (Ivezic et al. 2019, ApJ 873, 111)
PIXEL_SCALE_TOLERANCE = 0.02  # relative
ZTF_BANDS = {1: 'g', 2: 'r', 3: 'i'}  # candidate.fid (schema 3.3)
ZTF_SCHEMAS = ('3.',)  # schemavsn prefixes read (3.x: the fields used here are unchanged)
RUBIN_SCHEMAS = ('lsst.v10_',)  # lsst_schema_version / writer-schema namespace prefixes
AB_NJY_ZERO_POINT = 31.4  # m_AB of 1 nJy: 2.5 log10(3631e9) = 31.40
MJD_OFFSET = 2400000.5


class BadPacket(UserError):
  """A packet (or a file) that cannot be classified: one line naming the file and the alert."""


@dataclasses.dataclass(frozen=True)
class Epoch:
  """One alert as one epoch of an object, in the units of the model's config."""
  survey: str  # 'ztf' | 'rubin'
  object_id: str
  alert_id: str
  mjd: float
  band: str
  stamp: np.ndarray  # [S, S] float32 counts (ADU) with the sky, the source in the centre pixel
  zero_point: float  # mag of 1 ADU/s (NaN: unknown, no eq. 4 scaling)
  seeing_arcsec: float  # FWHM (NaN: unknown)
  exp_time_s: float
  source: str  # 'file#record'


@dataclasses.dataclass(frozen=True)
class StampSpec:
  """What the model's config says a stamp is (``StampSpec.from_config``)."""
  stamp_size: int
  pixel_scale: float
  bands: tuple
  exp_time_s: float
  zero_points: dict  # band -> median zero point (1 ADU/s)

  @classmethod
  def from_config(cls, config) -> 'StampSpec':
    sv = config.survey
    bands = tuple(sv.get('bands', None) or (sv.band,))
    zps = {}
    bc = sv.get('band_conditions', None)
    for b in bands:
      if bc is not None and b in bc:
        zps[b] = float(bc[b].zero_point_quantiles[1])
    return cls(stamp_size=int(config.sim.stamp_size), pixel_scale=float(sv.pixel_scale_arcsec),
               bands=bands, exp_time_s=float(sv.exp_time_s), zero_points=zps)


# ----------------------------------------------------------------------------------------------
# Files


def list_inputs(inputs) -> list[str]:
  """Avro files from files and folders (a folder: its ``*.avro`` files, sorted, recursively)."""
  out = []
  for p in inputs:
    p = os.fspath(p)
    if os.path.isdir(p):
      found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                     if f.endswith('.avro'))
      if not found:
        raise UserError(f'{p}: no .avro file in this folder')
      out += found
    elif os.path.isfile(p):
      out.append(p)
    else:
      raise UserError(f'{p}: no such file or folder')
  return out


# The fields the reader uses: fastavro skips the others when reading with a projection of
# the writer's schema (prv_candidates, the template and difference cutouts, Fink's and Rubin's
# extra blocks): Avro decoding takes about half the time.
_FIELDS = {'schemavsn', 'objectId', 'candid', 'candidate', 'cutoutScience', 'diaSourceId',
           'diaSource', 'lsst_schema_version'}
_SUBFIELDS = {
    'candidate': {'jd', 'fid', 'magzpsci', 'fwhm', 'exptime', 'xpos', 'ypos', 'candid'},
    'diaSource': {'diaSourceId', 'diaObjectId', 'ssObjectId', 'midpointMjdTai', 'band',
                  'ixxPSF', 'iyyPSF'},
}


def projection(schema):
  """The writer schema with only the fields the reader uses (None: not a record schema, or
  one whose kept fields refer to a type defined in a dropped one: read it whole)."""
  if not isinstance(schema, dict) or schema.get('type') != 'record':
    return None
  s = copy.deepcopy(schema)
  s['fields'] = [f for f in s['fields'] if f['name'] in _FIELDS]
  for f in s['fields']:
    keep = _SUBFIELDS.get(f['name'])
    types = f['type'] if isinstance(f['type'], list) else [f['type']]
    for t in types:
      if keep and isinstance(t, dict) and t.get('type') == 'record':
        t['fields'] = [g for g in t['fields'] if g['name'] in keep]
  try:
    return fastavro.parse_schema(s)
  except (fastavro.schema.UnknownType, fastavro.schema.SchemaParseException, KeyError,
          ValueError, TypeError):
    return None


def read_records(path):
  """Yields (index, record, writer schema) of an Avro container file, then at most one
  ``BadPacket`` for the rest of a truncated or corrupt file (the records before it are still
  yielded). Records hold the fields the reader uses (``projection``)."""
  n = 0
  try:
    with open(path, 'rb') as f:
      reader = fastavro.reader(f)
      schema = reader.writer_schema
      proj = projection(schema)
      if proj is not None:
        f.seek(0)
        reader = fastavro.reader(f, reader_schema=proj)
      for rec in reader:
        yield n, rec, schema
        n += 1
  except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError,
          fastavro.read.SchemaResolutionError) as e:
    what = 'not an Avro container file' if n == 0 else f'truncated or corrupt after {n} records'
    yield n, BadPacket(f'{path}: {what} ({type(e).__name__}: {str(e)[:120]})'), None


def read_epochs(path, spec: StampSpec):
  """Yields an ``Epoch`` or a ``BadPacket`` per record of ``path`` (a truncated file ends with
  one ``BadPacket`` for its unread rest)."""
  for i, rec, schema in read_records(path):
    if isinstance(rec, BadPacket):
      yield rec
      continue
    try:
      yield decode(rec, schema, f'{path}#{i}', spec)
    except BadPacket as e:
      yield e


def decode(rec, schema, source, spec: StampSpec) -> Epoch:
  """One packet -> ``Epoch``; ``BadPacket`` naming ``source`` and the alert id otherwise."""
  if not isinstance(rec, dict):
    raise BadPacket(f'{source}: not an alert record')
  if 'candidate' in rec and 'candid' in rec:
    return _ztf(rec, source, spec)
  if 'diaSource' in rec:
    return _rubin(rec, schema, source, spec)
  raise BadPacket(f'{source}: unknown alert schema (neither ZTF candidate/candid nor Rubin '
                  'diaSource)')


def _check_scale(native, survey, alert, spec):
  if abs(native / spec.pixel_scale - 1.0) > PIXEL_SCALE_TOLERANCE:
    raise BadPacket(f'{alert}: a {survey} packet ({native}"/px) but the model\'s stamps are '
                    f'{spec.pixel_scale}"/px: classify it with a {survey} model')


def _ztf(rec, source, spec) -> Epoch:
  alert = f'{source} candid {rec.get("candid")}'
  vsn = str(rec.get('schemavsn') or '')
  if not vsn.startswith(ZTF_SCHEMAS):
    raise BadPacket(f'{alert}: unknown ZTF schema version {vsn!r} (reads 3.x)')
  _check_scale(ZTF_PIXEL_SCALE, 'ZTF', alert, spec)
  c = rec['candidate'] or {}
  band = ZTF_BANDS.get(c.get('fid'))
  if band is None or band not in spec.bands:
    raise BadPacket(f'{alert}: band {band or c.get("fid")!r} is not one of the model\'s bands '
                    f'{", ".join(spec.bands)}')
  if rec.get('objectId') is None or c.get('jd') is None:
    raise BadPacket(f'{alert}: no objectId or jd')
  image = _cutout(rec.get('cutoutScience'), alert)
  h, w = image.shape
  # The candidate's pixel: the cutout's centre, or, where ZTF cut it short at a CCD edge, the
  # side it was cut on (x/ypos are 1-based CCD-quadrant pixels; 63 = the full cutout).
  cx = _edge_centre(w, c.get('xpos'))
  cy = _edge_centre(h, c.get('ypos'))
  stamp = _cut(image, cx, cy, spec.stamp_size, alert)
  exptime = _num(c.get('exptime'))
  zp = _num(c.get('magzpsci'))
  zp = zp - 2.5 * math.log10(exptime) if math.isfinite(exptime) and exptime > 0 else math.nan
  fwhm = _num(c.get('fwhm'))
  seeing = fwhm * ZTF_PIXEL_SCALE if fwhm > 0 else math.nan
  return Epoch(survey='ztf', object_id=str(rec['objectId']), alert_id=str(rec['candid']),
               mjd=float(c['jd']) - MJD_OFFSET, band=band, stamp=stamp, zero_point=zp,
               seeing_arcsec=seeing, exp_time_s=exptime, source=source)


def _edge_centre(n, pos, full=63):
  if n >= full or pos is None:
    return (n - 1) / 2.0
  p = float(pos) - 1.0  # 0-based
  return p if p < full // 2 else float(full // 2)


def _rubin(rec, schema, source, spec) -> Epoch:
  s = rec['diaSource'] or {}
  alert_id = rec.get('diaSourceId', s.get('diaSourceId'))
  alert = f'{source} diaSourceId {alert_id}'
  vsn = str(rec.get('lsst_schema_version') or (schema or {}).get('namespace') or
            (schema or {}).get('name') or '')
  if not vsn.startswith(RUBIN_SCHEMAS):
    raise BadPacket(f'{alert}: unknown Rubin schema {vsn!r} (reads lsst.v10_x)')
  _check_scale(RUBIN_PIXEL_SCALE, 'Rubin', alert, spec)
  band = s.get('band')
  if band not in spec.bands:
    raise BadPacket(f'{alert}: band {band!r} is not one of the model\'s bands '
                    f'{", ".join(spec.bands)}')
  if band not in spec.zero_points:
    raise BadPacket(f'{alert}: the model\'s config has no zero point for band {band!r}')
  if alert_id is None or s.get('midpointMjdTai') is None:
    raise BadPacket(f'{alert}: no diaSourceId or midpointMjdTai')
  hdus = _fits(rec.get('cutoutScience'), alert)
  image = _image(hdus, alert)
  hdr = hdus[0].header
  if 'CRPIX1' in hdr and 'CRPIX2' in hdr:
    cx, cy = float(hdr['CRPIX1']) - 1.0, float(hdr['CRPIX2']) - 1.0
  else:
    cx, cy = (image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0
  stamp_njy = _cut(image, cx, cy, spec.stamp_size, alert)
  zp, t = spec.zero_points[band], spec.exp_time_s
  stamp = (stamp_njy * (t * 10.0**((zp - AB_NJY_ZERO_POINT) / 2.5))).astype(np.float32)
  seeing = _rubin_seeing(hdus, s)
  obj = s.get('diaObjectId') or 0
  if obj:
    object_id = str(obj)
  elif s.get('ssObjectId'):
    object_id = f'ss{s["ssObjectId"]}'
  else:
    object_id = f'src{alert_id}'
  return Epoch(survey='rubin', object_id=object_id, alert_id=str(alert_id),
               mjd=float(s['midpointMjdTai']), band=band, stamp=stamp, zero_point=zp,
               seeing_arcsec=seeing, exp_time_s=t, source=source)


def psf_fwhm_px(psf) -> float:
  """FWHM (px) of a PSF image: 2 sqrt(A / pi), A = the number of pixels above half the peak."""
  psf = np.asarray(psf, np.float64)
  if psf.ndim != 2 or not np.all(np.isfinite(psf)) or psf.max() <= 0:
    return math.nan
  area = float(np.count_nonzero(psf > 0.5 * psf.max()))
  return 2.0 * math.sqrt(area / math.pi)


def _rubin_seeing(hdus, s) -> float:
  for h in hdus[1:]:
    if h.name == 'PSFIMAGE' and h.data is not None:
      fwhm = psf_fwhm_px(h.data)
      if math.isfinite(fwhm):
        return fwhm * RUBIN_PIXEL_SCALE
  ixx, iyy = _num(s.get('ixxPSF')), _num(s.get('iyyPSF'))
  if ixx > 0 and iyy > 0:
    return 2.3548 * math.sqrt(0.5 * (ixx + iyy))
  return math.nan


# ----------------------------------------------------------------------------------------------
# Cutouts


def _num(x) -> float:
  try:
    return math.nan if x is None else float(x)
  except (TypeError, ValueError):
    return math.nan


@dataclasses.dataclass
class _HDU:
  name: str
  header: dict  # keyword -> value (str, int or float)
  data: np.ndarray | None


_BITPIX = {8: '>u1', 16: '>i2', 32: '>i4', 64: '>i8', -32: '>f4', -64: '>f8'}


def _card_value(text):
  text = text.strip()
  if text.startswith("'"):
    end = text.find("'", 1)
    return text[1:end if end > 0 else None].rstrip()
  text = text.split('/', 1)[0].strip()
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def parse_fits(data: bytes):
  """[_HDU] of a FITS file of plain image HDUs (the FITS standard 4.0, Sec. 3-4 and 7.1:
  2880-byte blocks, 80-character cards, big-endian data), or None for anything else (scaled or
  compressed data, tables), which astropy then reads. ~10x faster than astropy on a cutout."""
  hdus, pos, n = [], 0, len(data)
  while pos < n:
    hdr, end = {}, False
    while not end:
      if pos + 2880 > n:
        return None
      block = data[pos:pos + 2880].decode('ascii', 'replace')
      pos += 2880
      for i in range(0, 2880, 80):
        card = block[i:i + 80]
        key = card[:8].strip()
        if key == 'END':
          end = True
          break
        if card[8:10] == '= ' and key not in hdr:
          hdr[key] = _card_value(card[10:])
    xt = hdr.get('XTENSION')
    if (xt is not None and xt != 'IMAGE') or hdr.get('BITPIX') not in _BITPIX:
      return None
    if hdr.get('BSCALE', 1) != 1 or hdr.get('BZERO', 0) != 0 or 'ZIMAGE' in hdr:
      return None
    shape = tuple(int(hdr.get(f'NAXIS{k}', -1)) for k in range(int(hdr.get('NAXIS', 0)), 0, -1))
    if any(d < 0 for d in shape):
      return None
    count = int(np.prod(shape)) if shape else 0
    size = count * abs(int(hdr['BITPIX'])) // 8
    if pos + size > n:
      return None
    arr = (np.frombuffer(data, _BITPIX[hdr['BITPIX']], count=count, offset=pos).reshape(shape)
           if count else None)
    pos += -(-size // 2880) * 2880
    name = str(hdr.get('EXTNAME', 'PRIMARY' if not hdus else '')).upper()
    hdus.append(_HDU(name, hdr, arr))
  return hdus or None


def _fits(cutout, alert):
  """The HDUs of a cutout: ZTF's ``{fileName, stampData}`` (gzipped FITS) or Rubin's bytes
  (plain FITS); ``BadPacket`` if missing or unreadable."""
  if isinstance(cutout, dict):
    cutout = cutout.get('stampData')
  if not cutout:
    raise BadPacket(f'{alert}: no science cutout')
  data = bytes(cutout)
  try:
    if data[:2] == b'\x1f\x8b':
      data = gzip.decompress(data)
    hdus = parse_fits(data)
    if hdus is not None:
      return hdus
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', VerifyWarning)  # ZTF's SIMPLE card is not quite standard
      with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False) as hl:
        return [_HDU(h.name, dict(h.header), None if h.data is None else np.array(h.data))
                for h in hl]
  except (OSError, EOFError, ValueError, TypeError, IndexError, zlib.error) as e:
    raise BadPacket(f'{alert}: corrupt science cutout ({type(e).__name__}: {str(e)[:80]})') \
        from None


def _image(hdus, alert) -> np.ndarray:
  for h in hdus:
    if h.data is not None and np.ndim(h.data) == 2:
      return np.asarray(h.data, np.float64)
  raise BadPacket(f'{alert}: the science cutout holds no 2-D image')


def _cutout(cutout, alert) -> np.ndarray:
  return _image(_fits(cutout, alert), alert)


def _cut(image, cx, cy, s, alert) -> np.ndarray:
  """The s x s stamp whose centre pixel holds (cx, cy) (0-based pixel centres), float32."""
  h, w = image.shape
  c0 = int(math.floor(cx + 0.5)) - s // 2
  r0 = int(math.floor(cy + 0.5)) - s // 2
  if r0 < 0 or c0 < 0 or r0 + s > h or c0 + s > w:
    raise BadPacket(f'{alert}: the {h}x{w} cutout does not hold a {s} px stamp around the '
                    f'source at ({cx:.1f}, {cy:.1f})')
  stamp = image[r0:r0 + s, c0:c0 + s]
  if not np.all(np.isfinite(stamp)):
    raise BadPacket(f'{alert}: NaN or Inf in the science stamp')
  return stamp.astype(np.float32)
