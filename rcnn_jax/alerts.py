"""Classify ZTF / Rubin alert packets with a trained RCNN, the per-object state in SQLite.

    python -m rcnn_jax.alerts --workdir MODEL --state DB INPUT... [--out alerts.csv]
        [--batch 64] [--partition K/N] [--step S] [--noprogress]

INPUT: Avro files (``.avro`` container files, as brokers archive a night) or folders of them.
MODEL: a training workdir or a ``pretrained/`` folder whose survey matches the packets (a ZTF
model for ZTF packets, an LSST one for Rubin's). DB: the SQLite state (created if missing;
refused if it was made with another model). One CSV row per alert (``pipeline.py``), a progress
bar on stderr and a summary line; refused packets one line each on stderr (exit status 2, the
good rows still written). ``--partition K/N`` processes only the objects whose CRC-32 of the
object id is K modulo N (one process per partition, each with its own --state). See
docs/alerts.md.
"""

from __future__ import annotations

from absl import app
from absl import flags

from rcnn_jax.core import utils
from rcnn_jax.serving.alerts import pipeline


def _define_flags():
  global _WORKDIR, _STATE, _OUT, _BATCH, _PARTITION, _STEP, _PROGRESS
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir or pretrained folder.')
  _STATE = flags.DEFINE_string('state', None, 'SQLite file of the per-object state.')
  _OUT = flags.DEFINE_string('out', 'alerts.csv', 'Where the CSV goes.')
  _BATCH = flags.DEFINE_integer('batch', 64, 'Objects per model call (slots of the state).')
  _PARTITION = flags.DEFINE_string('partition', '0/1', 'K/N: the objects this process owns.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best).')
  _PROGRESS = flags.DEFINE_bool('progress', True, 'Progress bar on stderr.')


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('give at least one Avro file or folder')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  if not _STATE.value:
    raise app.UsageError('--state is required')
  return pipeline.run_command(_WORKDIR.value, argv[1:], _STATE.value, _OUT.value,
                             slots=_BATCH.value, partition=_PARTITION.value, step=_STEP.value,
                             progress=_PROGRESS.value)


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
