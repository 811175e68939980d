"""Real image sequences (e.g. HiTS stamps) for classification: reading, checks, eq. 4 inputs.

Host side, numpy only. One file is one object's sequence of raw stamps (ADU, sky included):

- ``.npz``: keys ``stamps`` (T, H, W), ``mjd`` (T,) and optionally ``zero_point``, ``sky_adu``,
  ``seeing_arcsec``, ``exp_time_s`` (T,; the exposure time may be one value for all).
  Read with ``allow_pickle=False``: pickled content is refused, never unpickled.
- FITS (``.fits``, ``.fits.gz``, ``.fit``): the primary HDU (or the first image HDU) holds the
  (T, H, W) cube; a BINTABLE extension (named ``MJD``, else the first table) holds the column
  ``mjd`` and optionally ``zero_point``, ``sky_adu``, ``seeing_arcsec`` (names case-insensitive).
  ``write_fits`` writes this layout.

Every problem with a file raises ``BadInput`` with a one-line message ``'{path}: {problem}'``.
Stamps larger than ``stamp_size`` are centre-cropped: rows ``(H - S) // 2 .. (H - S) // 2 + S``
and likewise columns, so for odd H and S the centre pixel stays the centre pixel. When the sky is
not given it is estimated from the cropped stamps' outer 3-pixel ring (``estimate_sky``).

Model inputs are made by ``preprocess.prepare`` (the same code as the simulator's:
seeing cut, reference zero point, start, eq. 4, stacks); ``model_inputs`` is its form without
the seeing cut. Optional key ``label`` (a class name) is read as ``RealSequence.label``.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib

import numpy as np

from rcnn_jax.core.errors import BadInput  # re-exported: realdata.BadInput
from rcnn_jax.core.errors import printable
from rcnn_jax.inputs import preprocess

NPZ_SUFFIXES = ('.npz',)
FITS_SUFFIXES = ('.fits.gz', '.fits', '.fit')
SKY_RING = 3  # width in pixels of the border used to estimate the sky
OPTIONAL_KEYS = ('zero_point', 'sky_adu', 'seeing_arcsec', 'exp_time_s')
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, zipfile.BadZipFile,
                zlib.error)


@dataclasses.dataclass
class RealSequence:
  """One object's sequence: raw stamps (ADU, sky included) and per-epoch metadata."""
  name: str
  stamps: np.ndarray
  mjd: np.ndarray
  sky_adu: np.ndarray
  zero_point: np.ndarray | None
  sky_estimated: bool
  seeing_arcsec: np.ndarray | None
  label: str | None = None  # the class name, for labelled files (npz key ``label``)
  path: str | None = None
  exp_time_s: np.ndarray | None = None  # (T,) seconds, when the file gives them

  @property
  def object_id(self) -> str:
    """The object's name in outputs: its file's path as given (a folder argument joined with
    the file's path inside it), which two inputs cannot share; printable whatever its bytes
    (``outputs.display``). The file stem (``name``) when there is no path."""
    if self.path is None:
      return self.name
    return printable(os.path.normpath(self.path))

  @property
  def num_epochs(self) -> int:
    """E, the number of images."""
    return int(self.mjd.shape[0])


def _suffix(path) -> str | None:
  """The known format suffix of ``path`` (lower case), or None."""
  low = os.fspath(path).lower()
  for s in NPZ_SUFFIXES + FITS_SUFFIXES:
    if low.endswith(s):
      return s
  return None


def _stem(path) -> str:
  """File name without its format suffix ('a.fits.gz' -> 'a')."""
  base = os.path.basename(os.fspath(path))
  s = _suffix(base)
  return base[:-len(s)] if s else os.path.splitext(base)[0]


def _npy_has_objects(path) -> bool:
  """Whether an .npy payload declares an object dtype (header only, nothing unpickled)."""
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        _, _, dtype = np.lib.format.read_array_header_2_0(f)
    return bool(dtype.hasobject)
  except _READ_ERRORS:
    return False


def _read_npz(path) -> dict:
  """Raw arrays of an npz archive; pickled or unreadable content -> BadInput."""
  try:
    with open(path, 'rb') as f:
      head = f.read(4)
  except OSError as e:
    raise BadInput(path, f'cannot open ({e.strerror or e})') from None
  if head[:1] == b'\x80':
    raise BadInput(path, 'contains pickled data, refused')
  if head != b'PK\x03\x04':
    if head.startswith(b'\x93NUM'):
      if _npy_has_objects(path):
        raise BadInput(path, 'contains pickled data, refused')
      raise BadInput(path, 'is a single .npy array, not an npz archive')
    raise BadInput(path, 'cannot read (not an npz/zip archive, corrupt or truncated)')
  out = {}
  try:
    with np.load(path, allow_pickle=False) as z:
      for k in z.files:
        out[k] = np.asarray(z[k])
  except ValueError as e:
    if 'pickle' in str(e).lower() or 'object' in str(e).lower():
      raise BadInput(path, 'contains pickled data, refused') from None
    raise BadInput(path, f'cannot read (corrupt or truncated npz: {e})') from None
  except _READ_ERRORS as e:
    raise BadInput(path, f'cannot read (corrupt or truncated npz: {type(e).__name__}: '
                   f'{e})') from None
  return out


def _read_fits(path) -> dict:
  """The cube and the per-epoch table columns of a FITS file; unreadable -> BadInput."""
  import warnings  # pylint: disable=g-import-not-at-top

  from astropy.io import fits  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      with fits.open(path, memmap=False) as hdus:
        hdus.verify('silentfix')
        image = None
        for h in hdus:
          if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and h.data is not None:
            image = h
            break
        tables = [h for h in hdus if isinstance(h, fits.BinTableHDU)]
        named = [h for h in tables if h.name.upper() == 'MJD']
        table = (named or tables or [None])[0]
        if image is not None:
          out['stamps'] = np.array(image.data)
        if table is not None and table.data is not None:
          cols = {c.lower(): c for c in table.columns.names}
          for key in ('mjd',) + OPTIONAL_KEYS:
            if key in cols:
              out[key] = np.array(table.data[cols[key]])
  except _READ_ERRORS as e:
    raise BadInput(path, f'cannot read (corrupt or truncated FITS: {type(e).__name__}: '
                   f'{e})') from None
  return out


def write_fits(path, stamps, mjd, zero_point=None, sky_adu=None, seeing_arcsec=None):
  """Write a sequence as FITS: primary cube (T, H, W) and a BINTABLE 'MJD' of per-epoch columns."""
  from astropy.io import fits  # pylint: disable=g-import-not-at-top
  stamps = np.asarray(stamps, np.float32)
  cols = [fits.Column(name='mjd', format='D', array=np.asarray(mjd, np.float64))]
  for name, v in (('zero_point', zero_point), ('sky_adu', sky_adu),
                  ('seeing_arcsec', seeing_arcsec)):
    if v is not None:
      cols.append(fits.Column(name=name, format='D', array=np.asarray(v, np.float64)))
  table = fits.BinTableHDU.from_columns(cols, name='MJD')
  fits.HDUList([fits.PrimaryHDU(stamps), table]).writeto(path, overwrite=True)


def _is_numeric(a) -> bool:
  """Integer or real floating point (no bool, complex, strings or objects)."""
  return a.dtype.kind in 'iuf'


def _validate(path, raw, stamp_size, n_w):
  """Checks and converts the raw arrays; returns (stamps, mjd, optional dict)."""
  for key in ('stamps', 'mjd'):
    if key not in raw:
      raise BadInput(path, f"missing key '{key}'")
  stamps, mjd = np.asarray(raw['stamps']), np.asarray(raw['mjd'])
  for key, a in (('stamps', stamps), ('mjd', mjd)):
    if not _is_numeric(a):
      raise BadInput(path, f"'{key}' has non-numeric dtype {a.dtype}")
  if stamps.ndim != 3:
    raise BadInput(path, f"'stamps' must be 3-D (T, H, W), got shape {stamps.shape}")
  if mjd.ndim != 1:
    raise BadInput(path, f"'mjd' must be 1-D, got shape {mjd.shape}")
  t, h, w = stamps.shape
  if mjd.shape[0] != t:
    raise BadInput(path, f"'mjd' has {mjd.shape[0]} values for {t} stamps")
  if h < stamp_size or w < stamp_size:
    raise BadInput(path, f'stamps are {h}x{w}, smaller than the stamp size {stamp_size}')
  optional = {}
  for key in OPTIONAL_KEYS:
    if key not in raw:
      continue
    a = np.asarray(raw[key])
    if not _is_numeric(a):
      raise BadInput(path, f"'{key}' has non-numeric dtype {a.dtype}")
    if key == 'exp_time_s' and a.ndim == 0:  # one exposure time for every epoch
      a = np.full(t, a, np.float64)
    if a.shape != (t,):
      raise BadInput(path, f"'{key}' has shape {a.shape}, expected ({t},)")
    optional[key] = a
  for key, a in (('stamps', stamps), ('mjd', mjd), ('zero_point', optional.get('zero_point')),
                 ('sky_adu', optional.get('sky_adu'))):
    if a is not None and not np.all(np.isfinite(a)):
      raise BadInput(path, f"'{key}' contains NaN or Inf")
  mjd = mjd.astype(np.float64)
  if t > 1 and not np.all(np.diff(mjd) > 0):
    raise BadInput(path, "'mjd' is not strictly increasing")
  if t < n_w:
    raise BadInput(path, f'{t} epochs, fewer than n_w = {n_w}')
  r0, c0 = (h - stamp_size) // 2, (w - stamp_size) // 2
  stamps = stamps[:, r0:r0 + stamp_size, c0:c0 + stamp_size].astype(np.float32)
  return stamps, mjd, optional


def load_sequence(path, stamp_size=21, n_w=3) -> RealSequence:
  """Read, check and centre-crop one file (npz or FITS); any problem -> BadInput."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise BadInput(path, 'no such file')
  suffix = _suffix(path)
  if suffix in NPZ_SUFFIXES:
    raw = _read_npz(path)
  elif suffix in FITS_SUFFIXES:
    raw = _read_fits(path)
  else:
    raise BadInput(path, 'unknown format (expected .npz, .fits, .fits.gz or .fit)')
  stamps, mjd, opt = _validate(path, raw, stamp_size, n_w)
  label = raw.get('label')
  if label is not None:
    label = np.asarray(label)
    if label.dtype.kind not in 'US' or label.size != 1:
      raise BadInput(path, f"'label' must be one class name string, got {label.dtype} "
                     f'{label.shape}')
    label = str(label.reshape(()).item())
    label = label.decode() if isinstance(label, bytes) else label
  zp = opt.get('zero_point')
  sky = opt.get('sky_adu')
  seeing = opt.get('seeing_arcsec')
  exp_time = opt.get('exp_time_s')
  return RealSequence(
      name=_stem(path),
      stamps=stamps,
      mjd=mjd,
      sky_adu=(estimate_sky(stamps) if sky is None else sky.astype(np.float32)),
      zero_point=None if zp is None else zp.astype(np.float64),
      sky_estimated=sky is None,
      seeing_arcsec=None if seeing is None else seeing.astype(np.float64),
      label=label, path=path,
      exp_time_s=None if exp_time is None else exp_time.astype(np.float64))


def _folder_entries(folder):
  """(sequence files, one-line problems) of one folder: files with a known suffix that are
  regular files; a known suffix on anything else (a dangling link, a link loop, a folder, an
  unreadable entry) is a problem named by its path."""
  files, problems = [], []
  try:
    names = sorted(os.listdir(folder))
  except OSError as e:
    return [], [BadInput(folder, f'cannot list the folder ({e.strerror or e})')]
  for f in names:
    q = os.path.join(folder, f)
    if not _suffix(f):
      continue
    if os.path.isfile(q):
      files.append(q)
    elif os.path.islink(q):
      problems.append(BadInput(q, 'dangling symbolic link or link loop, skipped'))
    elif os.path.isdir(q):
      problems.append(BadInput(q, 'is a folder with a sequence file suffix, skipped'))
    else:
      problems.append(BadInput(q, 'not a regular file, skipped'))
  return files, problems


def _subfolders(folder):
  try:
    return sorted(os.path.join(folder, d) for d in os.listdir(folder)
                  if os.path.isdir(os.path.join(folder, d)))
  except OSError:
    return []


def list_inputs(paths):
  """(files, problems: one BadInput each): files as given; a folder -> its sequence files
  (*.npz, *.fits, *.fits.gz, *.fit), sorted, or, when it has none but has subfolders (one
  per class, as ``real_labelled_dev/``), theirs in sorted subfolder order. Every entry that
  cannot be used (a missing path, a folder with no sequence file, a dangling link, a link
  loop, an unreadable entry) is one line in ``problems``; the same file given twice is listed
  once."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  out, problems, seen = [], [], set()
  for p in paths:
    p = os.fspath(p)
    if os.path.isdir(p):
      found, bad = _folder_entries(p)
      if not found and not bad:
        for q in _subfolders(p):
          f2, b2 = _folder_entries(q)
          found += f2
          bad += b2
      problems += bad
      if not found and not bad:
        problems.append(BadInput(p, 'folder has no .npz, .fits, .fits.gz or .fit files '
                                     '(nor do its subfolders)'))
    elif os.path.isfile(p):
      found = [p]
    elif os.path.lexists(p):
      problems.append(BadInput(p, 'dangling symbolic link, link loop or not a regular '
                                   'file'))
      found = []
    else:
      problems.append(BadInput(p, 'no such file or folder'))
      found = []
    for f in found:
      key = os.path.normpath(f)
      if key in seen:  # one object, one identity: a file given twice is used once
        continue
      seen.add(key)
      out.append(f)
  return out, problems


def expand_inputs(paths) -> list[str]:
  """``list_inputs``'s files; its first problem raises BadInput (the strict form)."""
  files, problems = list_inputs(paths)
  if problems:
    raise problems[0]
  return files


def load_many(paths, stamp_size=21, n_w=3, fail_fast=False):
  """(good sequences, one-line error messages) over files and folders; fail_fast re-raises
  the first problem as BadInput."""
  files, problems = list_inputs(paths)
  if fail_fast and problems:
    raise problems[0]
  seqs, errors = [], [str(e) for e in problems]
  for f in files:
    try:
      seqs.append(load_sequence(f, stamp_size, n_w))
    except BadInput as e:
      if fail_fast:
        raise
      errors.append(str(e))
  return seqs, errors


def _clipped_median(x, nsigma=3.0, max_iter=10):
  """Median of x after iterative nsigma clipping with sigma = 1.4826 * MAD."""
  keep = x
  for _ in range(max_iter):
    med = np.median(keep)
    sigma = 1.4826 * np.median(np.abs(keep - med))
    if sigma <= 0:
      break
    new = keep[np.abs(keep - med) <= nsigma * sigma]
    if new.size == keep.size or new.size == 0:
      break
    keep = new
  return np.median(keep)


def estimate_sky(stamps) -> np.ndarray:
  """(T,) float32 sky per image: clipped median of the outer 3-pixel ring (3 sigma, MAD)."""
  stamps = np.asarray(stamps, np.float64)
  _, h, w = stamps.shape
  rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
  edge = np.minimum(np.minimum(rows, h - 1 - rows), np.minimum(cols, w - 1 - cols))
  ring = edge < SKY_RING
  return np.array([_clipped_median(s[ring]) for s in stamps], np.float32)


def model_inputs(seq: RealSequence, n_w, max_steps=None) -> dict:
  """Eq. 4 and n_w stacks of all epochs from the first (``preprocess.prepare`` without the
  seeing cut; use ``prepare`` with ``Rules.from_config`` for inputs exactly as in training).

  Returns images (T, S, S, n_w) float32, time_gaps (T, n_w) float32 (days since the first
  image), mask (T,) bool, mjd_last (T,) float64 (each step's last image; NaN where padded) and
  num_steps, with T = max_steps when given (truncated or zero-padded), else E - n_w + 1.
  """
  return preprocess.prepare(seq, preprocess.Rules(n_w=int(n_w), pre_detection=0),
                            start='first', max_steps=max_steps)


# ----------------------------------------------------------------------------------------------
# Labels of real files (evaluate --real, finetune, the hits_real builder)


def _norm_class(x) -> str:
  return ''.join(ch for ch in str(x).lower() if ch.isalnum())


def folder_class(folder, class_names) -> str | None:
  """A folder's class: the class whose name equals the folder's name, case and punctuation
  ignored (``RRLyrae``, ``rr_lyrae``, ``Eclipsing-Binary``); None for any other name. No
  guessing from parts of a name: ``not_a_Supernova`` or ``real_nonvariable_dev`` name no class
  (label such a folder with ``DIR=Class``)."""
  name = _norm_class(os.path.basename(os.path.normpath(os.fspath(folder))))
  exact = [c for c in class_names if _norm_class(c) == name]
  return exact[0] if len(exact) == 1 else None


def split_class_arg(arg) -> tuple[str, str | None]:
  """'DIR=Class' -> ('DIR', 'Class'); a path (even one containing '=') -> (path, None)."""
  arg = os.fspath(arg)
  if '=' in arg and not os.path.exists(arg):
    d, c = arg.rsplit('=', 1)
    return d, c
  return arg, None


def labelled_files(args, class_names):
  """([(path, class from the argument or folder, or None)], [BadInput]) from labelled inputs.

  The declared rule: an argument is ``DIR=Class`` (every file under DIR is ``Class``), ``DIR``
  (a folder of sequence files, each labelled by its ``label`` key or else by the folder's name,
  ``folder_class``), a folder of class folders (each treated as ``DIR``), or a file (its
  ``label`` key, else its folder's name). A file's own ``label`` key wins over its folder. A
  folder that holds sequence files beside folders of them is a mixed layout and refused (one
  line), rather than guessing which of them is meant; so is an unknown ``Class``.
  """
  pairs, problems = [], []
  for arg in args:
    arg, forced = split_class_arg(arg)
    if forced is not None:
      if forced not in class_names:
        problems.append(BadInput(arg, f'unknown class {forced!r} (have: '
                                 f'{", ".join(class_names)})'))
        continue
    if not os.path.isdir(arg):
      files, bad = list_inputs([arg])
      problems += bad
      pairs += [(f, forced or folder_class(os.path.dirname(os.path.abspath(f)), class_names))
                for f in files]
      continue
    files, bad = _folder_entries(arg)
    subs = [q for q in _subfolders(arg) if _folder_entries(q)[0]]
    if (files or bad) and subs:
      names = ', '.join(os.path.basename(q) for q in subs)
      problems.append(BadInput(arg, f'mixed layout: {len(files) + len(bad)} sequence file(s) '
                               f'beside class folders ({names}); refused: give each folder as '
                               'its own argument (DIR or DIR=Class)'))
      continue
    if files or bad:
      problems += bad
      cls = forced or folder_class(arg, class_names)
      pairs += [(f, cls) for f in files]
      continue
    if not subs:
      problems.append(BadInput(arg, 'folder has no sequence files and no class folders'))
      continue
    for q in subs:
      f2, b2 = _folder_entries(q)
      problems += b2
      cls = forced or folder_class(q, class_names)
      pairs += [(f, cls) for f in f2]
  return pairs, problems
