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

Schemas by content (issue 41). No list of schema versions: a packet is read through the fields
above, found by name in its writer schema (or by an earlier name, as an Avro alias: Rubin's
``midPointTai`` and ``filterName`` before schema 5.0), and refused only when one of them is
missing, null or malformed, in one line naming the field and the alert. Read: every ZTF 3.x and
4.x (4.x reorders the unions, ``["null", T]``, and adds the forced photometry ``fp_hists``,
which is skipped; 3.0 has no ``exptime``: its exposures are the config's, ZTF's 30 s) and every
Rubin schema with a science cutout (``lsst.v6_1`` to ``lsst.v11_1`` of ``lsst-alert-packet``;
3.0 to 6.0 carry only difference and template cutouts, and are refused naming
``cutoutScience``). ``decode_message`` reads one Kafka message: an Avro container (ZTF's
stream) or the Confluent wire format (Rubin's: byte 0, the 4-byte big-endian schema id, a
schemaless body), with Rubin's pinned writer schemas by id (``packets.rubin_schema``). The
per-version changes of these fields: docs/alerts.md, "Schema versions".
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import struct
import warnings
import zlib

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
import fastavro
import numpy as np

from rcnn_jax.core.errors import UserError
from rcnn_jax.serving.alerts import packets

ZTF_PIXEL_SCALE = 1.01  # arcsec/px (Dekany et al. 2020, PASP 132, 038001)
RUBIN_PIXEL_SCALE = 0.2  # arcsec/px (Ivezic et al. 2019, ApJ 873, 111)
PIXEL_SCALE_TOLERANCE = 0.02  # relative
ZTF_BANDS = {1: 'g', 2: 'r', 3: 'i'}  # candidate.fid (schemas 3.0 to 4.02)
AB_NJY_ZERO_POINT = 31.4  # m_AB of 1 nJy: 2.5 log10(3631e9) = 31.40
MJD_OFFSET = 2400000.5


BadPacket = packets.BadPacket  # a packet (or a file) that cannot be classified: one line


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


# The fields the reader uses (with their earlier names, as Avro aliases) and the decoding of the
# packets' bytes: packets.py, one decoder for the files and the Kafka messages.


def _field(rec, name, wanted=packets.FIELDS):
  """``rec[name]`` under its current or an earlier name (a record read without the projection);
  ``KeyError`` if the record has neither."""
  if name in rec:
    return rec[name]
  for old in wanted.get(name, ()):
    if old in rec:
      return rec[old]
  raise KeyError(name)


def read_records(path):
  """Yields (index, record, writer schema) of an Avro container file, then at most one
  ``BadPacket`` for the rest of a truncated or corrupt file (the records before it are still
  yielded). Records hold the fields the reader uses (``packets.projection``), decoded by
  ``packets.container`` (the writer schema parsed once per distinct schema)."""
  n = 0
  try:
    with open(path, 'rb') as f:
      codec, recs = packets.container(f)
      for rec in recs:
        yield n, rec, codec.raw
        n += 1
  except BadPacket as e:
    yield n, BadPacket(f'{path}: {e}'), None
  except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError,
          zlib.error, fastavro.read.SchemaResolutionError) as e:
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


# ----------------------------------------------------------------------------------------------
# One Kafka message



def decode_message(data: bytes, schema=None, schemas=None, source: str = 'message'):
  """One Kafka message value -> (records, writer schema), the records holding the fields the
  reader uses (``projection``), each for ``decode``. The value is an Avro container file (ZTF's
  stream: one file per message, its schema inside) or the Confluent wire format (Rubin's: byte
  0, the 4-byte big-endian schema id, one schemaless Avro record) whose writer schema is
  ``schema`` if given, else ``schemas[id]`` (a mapping id -> schema) if it has the id, else
  Rubin's schema of that id (``packets.rubin_schema``; the one returned is shared: do not
  modify it).
  ``BadPacket`` naming ``source`` otherwise. The decoding: ``packets.decode_message``."""
  if schema is None and schemas is not None and len(data) >= 5 and data[:4] != packets.AVRO_MAGIC:
    (sid,) = struct.unpack('>I', bytes(data[1:5]))
    schema = schemas.get(sid)
  return packets.decode_message(data, label=source, schema=schema)


# ----------------------------------------------------------------------------------------------
# Packets


def _schema_name(schema):
  s = schema if isinstance(schema, dict) else {}
  name = str(s.get('name') or '?')
  return f'{s["namespace"]}.{name}' if s.get('namespace') and '.' not in name else name


def decode(rec, schema, source, spec: StampSpec) -> Epoch:
  """One packet -> ``Epoch``; ``BadPacket`` naming ``source``, the alert id and, for a field
  that is missing, null or malformed, that field."""
  if not isinstance(rec, dict):
    raise BadPacket(f'{source}: not an alert record')
  if 'candidate' in rec or 'candid' in rec:
    return _ztf(rec, schema, source, spec)
  if 'diaSource' in rec:
    return _rubin(rec, schema, source, spec)
  raise BadPacket(f'{source}: unknown alert schema {_schema_name(schema)} (neither ZTF '
                  'candidate/candid nor Rubin diaSource)')


class _Fields:
  """The fields of one packet, each found or a ``BadPacket`` naming it."""

  def __init__(self, rec, alert, schema):
    self.rec, self.alert, self.schema = rec, alert, schema

  def lookup(self, path):
    """(found, value) at ``path`` ('candidate.jd'): found False when the packet has no such
    field (its schema has none); a null on the way gives (True, None)."""
    v, wanted = self.rec, packets.FIELDS
    for part in path.split('.'):
      if v is None:
        return True, None
      if not isinstance(v, dict):
        self.bad(path.split('.')[0], v)
      try:
        v = _field(v, part, wanted)
      except KeyError:
        return False, None
      wanted = packets.SUBFIELDS.get(part, {})
    return True, v

  def has(self, path):
    return self.lookup(path)[0]

  def get(self, path, need=True):
    """The value at ``path``; absent or null: ``BadPacket`` naming it if needed, else None."""
    found, v = self.lookup(path)
    if need and not found:
      raise BadPacket(f'{self.alert}: no field {path} in the packet\'s schema '
                      f'{_schema_name(self.schema)}')
    if need and v is None:
      raise BadPacket(f'{self.alert}: {path} is null')
    return v

  def bad(self, path, v):
    raise BadPacket(f'{self.alert}: {path} malformed ({str(v)[:40]!r})')

  def number(self, path, kind=float):
    """A finite number (``kind`` int: an integer) at ``path``."""
    v = self.get(path)
    ok = (int,) if kind is int else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok) or not math.isfinite(v):
      self.bad(path, v)
    return kind(v)

  def text(self, path):
    v = self.get(path)
    if not isinstance(v, str) or not v:
      self.bad(path, v)
    return v


def _check_scale(native, survey, alert, spec):
  if abs(native / spec.pixel_scale - 1.0) > PIXEL_SCALE_TOLERANCE:
    raise BadPacket(f'{alert}: a {survey} packet ({native}"/px) but the model\'s stamps are '
                    f'{spec.pixel_scale}"/px: classify it with a {survey} model')


def _ztf(rec, schema, source, spec) -> Epoch:
  alert = f'{source} candid {rec.get("candid")}'
  _check_scale(ZTF_PIXEL_SCALE, 'ZTF', alert, spec)
  f = _Fields(rec, alert, schema)
  candid = f.number('candid', int)
  object_id = f.text('objectId')
  jd = f.number('candidate.jd')
  fid = f.number('candidate.fid', int)
  band = ZTF_BANDS.get(fid)
  if band is None:
    raise BadPacket(f'{alert}: candidate.fid malformed ({fid}: 1, 2, 3 = g, r, i)')
  if band not in spec.bands:
    raise BadPacket(f'{alert}: band {band!r} is not one of the model\'s bands '
                    f'{", ".join(spec.bands)}')
  c = f.get('candidate')
  image = _cutout(_science(f), alert)
  h, w = image.shape
  # The candidate's pixel: the cutout's centre, or, where ZTF cut it short at a CCD edge, the
  # side it was cut on (x/ypos are 1-based CCD-quadrant pixels; 63 = the full cutout).
  cx = _edge_centre(w, c.get('xpos'))
  cy = _edge_centre(h, c.get('ypos'))
  stamp = _cut(image, cx, cy, spec.stamp_size, alert)
  # exptime: in the candidate since schema 3.1 (null: unknown); 3.0's exposures were all 30 s.
  exptime = _num(c.get('exptime')) if f.has('candidate.exptime') else spec.exp_time_s
  zp = _num(c.get('magzpsci'))
  zp = zp - 2.5 * math.log10(exptime) if math.isfinite(exptime) and exptime > 0 else math.nan
  fwhm = _num(c.get('fwhm'))
  seeing = fwhm * ZTF_PIXEL_SCALE if fwhm > 0 else math.nan
  return Epoch(survey='ztf', object_id=object_id, alert_id=str(candid),
               mjd=jd - MJD_OFFSET, band=band, stamp=stamp, zero_point=zp,
               seeing_arcsec=seeing, exp_time_s=exptime, source=source)


def _science(f):
  """The packet's science cutout (ZTF's record or Rubin's bytes); ``BadPacket`` naming
  ``cutoutScience`` when the schema has none (Rubin before lsst.v6_1) or it is null."""
  if not f.has('cutoutScience'):
    raise BadPacket(f'{f.alert}: no science cutout (no field cutoutScience in the packet\'s '
                    f'schema {_schema_name(f.schema)})')
  cut = f.rec['cutoutScience']
  if cut is None:
    raise BadPacket(f'{f.alert}: no science cutout (cutoutScience is null)')
  return cut


def _edge_centre(n, pos, full=63):
  if n >= full or pos is None:
    return (n - 1) / 2.0
  p = float(pos) - 1.0  # 0-based
  return p if p < full // 2 else float(full // 2)


def _rubin(rec, schema, source, spec) -> Epoch:
  s = rec['diaSource'] if isinstance(rec.get('diaSource'), dict) else {}
  alert_id = rec.get('diaSourceId', s.get('diaSourceId'))
  alert = f'{source} diaSourceId {alert_id}'
  _check_scale(RUBIN_PIXEL_SCALE, 'Rubin', alert, spec)
  f = _Fields(rec, alert, schema)
  source_id = f.number('diaSource.diaSourceId', int)
  if alert_id is None:
    alert_id = source_id
  band = f.text('diaSource.band')
  if band not in spec.bands:
    raise BadPacket(f'{alert}: band {band!r} is not one of the model\'s bands '
                    f'{", ".join(spec.bands)}')
  if band not in spec.zero_points:
    raise BadPacket(f'{alert}: the model\'s config has no zero point for band {band!r}')
  mjd = f.number('diaSource.midpointMjdTai')
  hdus = _fits(_science(f), alert)
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
  obj = f.get('diaSource.diaObjectId', need=False) or 0
  ss = f.get('diaSource.ssObjectId', need=False)
  if obj:
    object_id = str(obj)
  elif ss:
    object_id = f'ss{ss}'
  else:
    object_id = f'src{alert_id}'
  return Epoch(survey='rubin', object_id=object_id, alert_id=str(alert_id),
               mjd=mjd, band=band, stamp=stamp, zero_point=zp,
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
