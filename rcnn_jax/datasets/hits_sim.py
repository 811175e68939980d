"""``hits_sim``: a frozen, seeded, class-balanced simulated set from any project config.

Splits train / validation / test with ``config.dataset`` sizes (``size='small'``: the
``*_size`` fields; ``'full'``: ``full_size``, the paper's 686,000 / 85,750 / 85,750 of Sec.
3.4). Object i of a split is ``simulator.simulate_batch``'s object i under the key
``fold_in(key(config.seed), offset)`` (label i % 7), with offset ``dataset.train_seed_offset``,
``eval.val_seed_offset`` (the training run's validation set) and ``eval.test_seed_offset``
(``evaluate``'s simulated test set). Every array that ``python -m rcnn_jax.simulate`` writes is
a feature, plus ``zero_point_ref`` (eq. 4's reference) and ``index``; records are in index
order (no shuffling). The resolved config, the seed and the offsets are in the metadata
(``info.metadata``). array_record format.

The builder config's name is ``<variant>_<size>_<digest>`` where the digest covers everything
that changes the data (seed, survey, sim, dataset sizes, seed offsets): two configs that give
different data never share a folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from rcnn_jax.core import utils
from rcnn_jax.sim import batches
from rcnn_jax.sim import simulator as sim_lib

SPLITS = ('train', 'validation', 'test')
# simulate's arrays, plus eq. 4's reference zero point (the light-curve classifier's input
# needs it).
FIELDS = batches.FIELDS + ('zero_point_ref',)


def split_sizes(config) -> dict:
  d = config.dataset
  if d.size == 'small':
    sizes = (d.train_size, d.validation_size, d.test_size)
  elif d.size == 'full':
    sizes = tuple(d.full_size)
  else:
    raise utils.UserError(f"config.dataset.size must be 'small' or 'full', got {d.size!r}")
  if len(sizes) != 3 or any(int(n) < 1 for n in sizes):
    raise utils.UserError(f'config.dataset sizes must be three positive counts, got {sizes}')
  return dict(zip(SPLITS, (int(n) for n in sizes)))


def seed_offsets(config) -> dict:
  return {'train': int(config.dataset.train_seed_offset),
          'validation': int(config.eval.val_seed_offset),
          'test': int(config.eval.test_seed_offset)}


def data_config(config) -> dict:
  """The parts of a config that decide the data (what the builder config's digest covers)."""
  c = json.loads(config.to_json_best_effort())
  return {'seed': c['seed'], 'survey': c['survey'], 'sim': c['sim'],
          'sizes': split_sizes(config), 'seed_offsets': seed_offsets(config)}


def config_name(config) -> str:
  digest = hashlib.sha256(json.dumps(data_config(config), sort_keys=True).encode()).hexdigest()
  return f'{config.get("variant", "custom")}_{config.dataset.size}_{digest[:10]}'


@dataclasses.dataclass
class HitsSimConfig(tfds.core.BuilderConfig):
  config_json: str = ''

  @property
  def project_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(self.config_json))


def builder_config(config) -> HitsSimConfig:
  split_sizes(config)  # checks the sizes before anything is built
  return HitsSimConfig(name=config_name(config), config_json=config.to_json_best_effort(),
                       description=f'rcnn_jax simulation, config variant '
                                   f'{config.get("variant", "custom")}, seed {config.seed}')


def example_shapes(sim) -> dict:
  """Field -> (per-object shape, dtype) of simulate's arrays (nothing is simulated)."""
  out = jax.eval_shape(lambda k: sim_lib.simulate_batch(k, sim, 1), jax.random.key(0))
  shapes = {}
  for name in FIELDS:
    src = out['t_days'] if name == 'mjd' else out[name]
    dtype = np.float64 if name == 'mjd' else np.dtype(src.dtype)
    shapes[name] = (tuple(src.shape[1:]), dtype)
  return shapes


def tensor_feature(shape, dtype):
  """A Tensor feature; float64 as raw bytes (tfds' default encoding keeps only float32)."""
  if np.dtype(dtype) == np.float64:
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
  return tfds.features.Tensor(shape=shape, dtype=dtype)


class HitsSim(tfds.core.GeneratorBasedBuilder):
  """Simulated HiTS-like image sequences (Carrasco-Davis et al. 2018, Sec. 2 and 3.1)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = []  # made from project configs: builder_config(config)

  def __init__(self, *, config=None, **kwargs):
    if isinstance(config, ml_collections.ConfigDict):
      config = builder_config(config)
    self.progress = True
    super().__init__(config=config, **kwargs)

  @property
  def project_config(self):
    return self.builder_config.project_config

  def _info(self):
    config = self.project_config
    sim = sim_lib.build_simulator(config)
    feats = {}
    for name, (shape, dtype) in example_shapes(sim).items():
      if name == 'label':
        feats[name] = tfds.features.ClassLabel(names=list(sim.class_names))
      else:
        feats[name] = tensor_feature(shape, dtype)
    feats['index'] = tfds.features.Scalar(dtype=np.int64)
    meta = tfds.core.MetadataDict(
        config=json.loads(config.to_json_best_effort()), seed=int(config.seed),
        seed_offsets=seed_offsets(config), sizes=split_sizes(config),
        class_names=list(sim.class_names), mjd0=float(sim.survey.mjd0),
        producer='rcnn_jax.datasets.hits_sim')
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=tfds.features.FeaturesDict(feats),
        metadata=meta, disable_shuffling=True,  # record i is object i, as simulate writes
        homepage='https://arxiv.org/abs/1807.03869',
        citation='Carrasco-Davis et al. (2018), PASP 131, 108006')

  def _split_generators(self, dl_manager):
    del dl_manager
    sizes = split_sizes(self.project_config)
    return {s: self._generate_examples(s, sizes[s]) for s in SPLITS}

  def _generate_examples(self, split, num):
    config = self.project_config
    offset = seed_offsets(config)[split]
    sim = sim_lib.build_simulator(config)
    mjd0 = float(sim.survey.mjd0)
    key = jax.random.fold_in(jax.random.key(config.seed), offset)
    chunk = max(1, int(config.dataset.chunk))  # one compile for every split; extra ones dropped
    fn = jax.jit(lambda k, off: sim_lib.simulate_batch(k, sim, chunk, off))
    starts = range(0, num, chunk)
    for off in utils.progress(starts, total=len(starts), desc=f'hits_sim {split} (chunks)',
                              disable=not self.progress):
      out = jax.device_get(fn(key, jnp.int32(off)))
      out['mjd'] = mjd0 + out.pop('t_days').astype(np.float64)
      for j in range(min(chunk, num - off)):
        i = off + j
        ex = {name: out[name][j] for name in FIELDS}
        ex['label'] = int(ex['label'])
        ex['index'] = i
        yield i, ex
