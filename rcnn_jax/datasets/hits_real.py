"""``hits_real``: labelled real image sequences from folders in the project's real npz format.

Every file under the given folders (``realdata`` formats: .npz, FITS) becomes one record with
its whole sequence as observed (variable length, bad-seeing epochs included): raw ``stamps``
[E, S, S] (ADU, sky included, centre-cropped), ``mjd``, ``zero_point``, ``sky_adu``,
``seeing_arcsec``, ``exp_time_s`` [E] (NaN where the file has none; ``sky_estimated`` says the
sky came from the stamps' outer ring), ``label``, ``name`` (file stem) and ``path`` (relative to
its folder's parent). The label is the file's ``label`` key when present, else the class of a
``DIR=Class`` argument, else its folder's name when that is exactly a class name (case and
punctuation ignored; ``realdata.folder_class``: ``real_nonvariable_dev`` needs
``real_nonvariable_dev=NonVariable``). A file that cannot be read or labelled is left out with
one line (``build``: exit status 2, the list in ``refused.json``); the others are written.
Records are sorted by path; one split (``dev`` by default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from rcnn_jax.core import utils
from rcnn_jax.inputs import realdata

ARRAYS = ('mjd', 'zero_point', 'sky_adu', 'seeing_arcsec', 'exp_time_s')


def folder_label(folder, class_names) -> str | None:
  """The folder's class by the project's one rule (``realdata.folder_class``: its name is
  exactly a class name, case and punctuation ignored), else None."""
  return realdata.folder_class(folder, class_names)


def list_files(folders) -> list[tuple[str, str, str | None]]:
  """(file, relative path, forced class or None) of every sequence file under ``folders``
  (each ``DIR`` or ``DIR=Class``; recursively), sorted by relative path."""
  out = []
  for arg in folders:
    root, forced = realdata.split_class_arg(arg)
    root = os.path.normpath(root)
    if not os.path.isdir(root):
      raise utils.UserError(f'{root}: not a folder')
    base = os.path.dirname(root)
    for d, _, files in os.walk(root):
      for f in files:
        if realdata._suffix(f):  # pylint: disable=protected-access
          p = os.path.join(d, f)
          out.append((p, os.path.relpath(p, base), forced))
  if not out:
    raise utils.UserError(f'no .npz or FITS sequence files under {", ".join(map(str, folders))}')
  return sorted(out, key=lambda x: x[1])


def file_label(seq, class_names, forced=None) -> str:
  """A read file's own ``label`` (npz key), else ``forced`` (``DIR=Class``), else its folder's
  exact class name; BadInput naming the file if none names a class."""
  label = seq.label or forced or folder_label(os.path.dirname(seq.path), class_names)
  if label not in class_names:
    raise realdata.BadInput(seq.path, f'label {label!r} is not a class '
                            f'({", ".join(class_names)}); give it a label key, name its folder '
                            'after its class, or pass DIR=Class')
  return label


@dataclasses.dataclass
class HitsRealConfig(tfds.core.BuilderConfig):
  folders: tuple = ()
  class_names: tuple = ()
  stamp_size: int = 21
  n_w: int = 3
  split: str = 'dev'


def builder_config(folders, class_names, stamp_size=21, n_w=3, split='dev',
                   name=None) -> HitsRealConfig:
  folders = tuple(_abs_arg(f) for f in folders)
  digest = hashlib.sha256(json.dumps([folders, list(class_names), stamp_size, n_w, split])
                          .encode()).hexdigest()[:10]
  return HitsRealConfig(name=name or f'{split}_{digest}', folders=folders,
                        class_names=tuple(class_names), stamp_size=int(stamp_size),
                        n_w=int(n_w), split=split,
                        description=f'real sequences from {", ".join(folders)}')


def _abs_arg(arg) -> str:
  d, c = realdata.split_class_arg(arg)
  return os.path.abspath(d) + (f'={c}' if c else '')


class HitsReal(tfds.core.GeneratorBasedBuilder):
  """Real labelled HiTS image sequences (or any survey's, in the project's real format)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = []  # made from folders: builder_config(folders, class_names)

  def _info(self):
    c = self.builder_config
    s = c.stamp_size
    feats = {
        'stamps': tfds.features.Tensor(shape=(None, s, s), dtype=np.float32),
        'label': tfds.features.ClassLabel(names=list(c.class_names)),
        'name': tfds.features.Text(),
        'path': tfds.features.Text(),
        'sky_estimated': tfds.features.Scalar(dtype=np.bool_),
        'num_epochs': tfds.features.Scalar(dtype=np.int64),
    }
    for k in ARRAYS:
      feats[k] = tfds.features.Tensor(shape=(None,), dtype=np.float64,  # float64 kept exactly
                                      encoding=tfds.features.Encoding.BYTES)
    meta = tfds.core.MetadataDict(folders=list(c.folders), class_names=list(c.class_names),
                                  stamp_size=s, n_w=c.n_w, producer='rcnn_jax.datasets.hits_real')
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=tfds.features.FeaturesDict(feats), metadata=meta,
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {self.builder_config.split: self._generate_examples()}

  def _generate_examples(self):
    """One record per usable file; a file that cannot be read or labelled is one line in
    ``self.refused`` (``build.build_real`` reports them and writes ``refused.json``)."""
    c = self.builder_config
    self.refused = []
    for i, (path, rel, forced) in enumerate(list_files(c.folders)):
      try:
        seq = realdata.load_sequence(path, c.stamp_size, c.n_w)
        label = file_label(seq, c.class_names, forced)
      except realdata.BadInput as e:
        self.refused.append(str(e))
        continue
      e = seq.num_epochs
      nan = np.full(e, np.nan)
      ex = {'stamps': seq.stamps, 'label': label, 'name': seq.name, 'path': rel,
            'sky_estimated': bool(seq.sky_estimated), 'num_epochs': e,
            'mjd': seq.mjd, 'sky_adu': np.asarray(seq.sky_adu, np.float64),
            'zero_point': nan if seq.zero_point is None else seq.zero_point,
            'seeing_arcsec': nan if seq.seeing_arcsec is None else seq.seeing_arcsec,
            'exp_time_s': nan if seq.exp_time_s is None else seq.exp_time_s}
      yield i, ex


def to_sequence(ex) -> realdata.RealSequence:
  """A record back to the RealSequence that ``realdata.load_sequence`` gave."""
  zp, seeing = np.asarray(ex['zero_point']), np.asarray(ex['seeing_arcsec'])
  name = ex['name'].decode() if isinstance(ex['name'], bytes) else str(ex['name'])
  return realdata.RealSequence(
      name=name, stamps=np.asarray(ex['stamps'], np.float32), mjd=np.asarray(ex['mjd']),
      sky_adu=np.asarray(ex['sky_adu'], np.float32),
      zero_point=None if np.isnan(zp).all() else zp, sky_estimated=bool(ex['sky_estimated']),
      seeing_arcsec=None if np.isnan(seeing).all() else seeing)
