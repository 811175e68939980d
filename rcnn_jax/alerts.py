"""Classify ZTF / Rubin alert packets with a trained RCNN, the per-object state kept between runs.

From files (Avro container files, as brokers archive a night):

    python -m rcnn_jax.alerts --workdir MODEL --state DB INPUT... [--out alerts.csv]
        [--batch 64] [--partition K/N] [--step S] [--noprogress]

From a live Kafka stream (confluent-kafka), until SIGTERM/SIGINT:

    python -m rcnn_jax.alerts --workdir MODEL --state DB_OR_URL --kafka HOST:PORT --topic T
        --group G --out_topic OUT [--dead_letter_topic DLQ] [--out_kafka HOST:PORT]
        [--schema ID=FILE.avsc] [--kafka_config KEY=VALUE] [--batch 64]

INPUT: Avro files or folders of them. MODEL: a training workdir or a ``pretrained/`` folder
whose survey matches the packets (a ZTF model for ZTF packets, an LSST one for Rubin's). DB: the
SQLite state (created if missing; refused if it was made with another model); with --kafka also
a ``postgresql://`` URL, the state that every member of a consumer group reaches. Files: one
CSV row per alert (``pipeline.py``), a progress bar on stderr and a summary line; refused
packets one line each on stderr (exit status 2, the good rows still written). ``--partition
K/N`` processes only the objects whose CRC-32 of the object id is K modulo N (files only: a
Kafka group splits the topic's partitions instead). Kafka: one Avro record per alert to
--out_topic (``serving/alerts/schemas/classification.avsc``), refused messages to the
dead-letter topic, offsets committed after each chunk's state transaction, a progress line with
alerts/s and the consumer lag. See docs/alerts.md.
"""

from __future__ import annotations

from absl import app
from absl import flags

from rcnn_jax.core import errors
from rcnn_jax.core import utils


def _define_flags():
  global _WORKDIR, _STATE, _OUT, _BATCH, _PARTITION, _STEP, _PROGRESS
  global _KAFKA, _TOPIC, _GROUP, _OUT_TOPIC, _DLQ, _OUT_KAFKA, _SCHEMA, _KAFKA_CONFIG
  global _SESSION_TIMEOUT, _OFFSET_RESET, _IDLE_EXIT, _LINGER, _PROGRESS_EVERY, _CONNECT
  global _STATS_JSON
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir or pretrained folder.')
  _STATE = flags.DEFINE_string('state', None, 'The per-object state: an SQLite file, or (with '
                               '--kafka, several consumers) a postgresql:// URL.')
  _OUT = flags.DEFINE_string('out', None, 'Files: where the CSV (or .parquet) goes (default '
                             'alerts.csv).')
  _BATCH = flags.DEFINE_integer('batch', 64, 'Objects per model call (slots of the state).')
  _PARTITION = flags.DEFINE_string('partition', '0/1', 'Files: K/N, the objects this process '
                                   'owns.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best).')
  _PROGRESS = flags.DEFINE_bool('progress', True, 'Progress bar (files) or line (Kafka).')
  _KAFKA = flags.DEFINE_string('kafka', None, 'HOST:PORT[,HOST:PORT]: consume a Kafka topic '
                               '(bootstrap servers) instead of files.')
  _TOPIC = flags.DEFINE_string('topic', None, 'Kafka: the alert topic.')
  _GROUP = flags.DEFINE_string('group', None, 'Kafka: the consumer group (processes with the '
                               "same group share the topic's partitions).")
  _OUT_TOPIC = flags.DEFINE_string('out_topic', None, 'Kafka: the topic of the '
                                   'classifications (one Avro record per alert).')
  _DLQ = flags.DEFINE_string('dead_letter_topic', None, 'Kafka: where refused messages go '
                             '(default OUT_TOPIC.dead_letter).')
  _OUT_KAFKA = flags.DEFINE_string('out_kafka', None, 'Kafka: the cluster of --out_topic and '
                                   'the dead-letter topic (default: --kafka).')
  _SCHEMA = flags.DEFINE_multi_string('schema', [], 'Kafka: ID=FILE.avsc, the writer schema of '
                                      'Confluent wire-format messages of that schema id '
                                      "(default: Rubin's pinned schemas).")
  _KAFKA_CONFIG = flags.DEFINE_multi_string('kafka_config', [], 'Kafka: KEY=VALUE, a '
                                            'librdkafka setting (security.protocol, sasl.*).')
  _SESSION_TIMEOUT = flags.DEFINE_integer('session_timeout_ms', None, 'Kafka: the consumer '
                                          'session timeout (default 45000, or '
                                          'RCNN_JAX_KAFKA_SESSION_TIMEOUT_MS).')
  _OFFSET_RESET = flags.DEFINE_string('offset_reset', 'earliest', 'Kafka: where a new group '
                                      'starts: earliest or latest.')
  _IDLE_EXIT = flags.DEFINE_float('idle_exit', 0.0, 'Kafka: exit after this many seconds '
                                  'without a message (0: run until SIGTERM/SIGINT).')
  _LINGER = flags.DEFINE_float('linger', 0.5, 'Kafka: the most seconds a partial chunk waits '
                               'for more alerts.')
  _PROGRESS_EVERY = flags.DEFINE_float('progress_every', 10.0, 'Kafka: seconds between '
                                       'progress lines.')
  _CONNECT = flags.DEFINE_float('connect_timeout', 10.0, 'Kafka: seconds to wait for a broker '
                                'before giving up.')
  _STATS_JSON = flags.DEFINE_string('stats_json', None, 'Kafka: write the summary as JSON here '
                                    '(bench alerts --kafka).')


def _pipeline():
  """Imported after the flags are checked, not at the top: ``utils.run`` re-executes the
  command once (huge pages) before main, and jax's import (~2.4 s on a 2-core CPU) is then
  paid once, and not at all for a bad flag."""
  from rcnn_jax.serving.alerts import pipeline  # lazy: after utils.run's re-exec (jax is slow)
  return pipeline


def main(argv):
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  if not _STATE.value:
    raise app.UsageError('--state is required')
  if _KAFKA.value:
    if len(argv) > 1:
      raise errors.UserError('--kafka reads a topic: give no input files')
    if _OUT.value:
      raise errors.UserError('--kafka writes to --out_topic (--out is for files)')
    if _PARTITION.value != '0/1':
      raise errors.UserError('--partition is for files: with --kafka, the consumer group splits '
                           "the topic's partitions (run N processes with the same --group)")
    return _pipeline().run_kafka_command(
        _WORKDIR.value, _KAFKA.value, _TOPIC.value, _GROUP.value, _STATE.value, _OUT_TOPIC.value,
        dead_letter_topic=_DLQ.value, out_kafka=_OUT_KAFKA.value, schemas=_SCHEMA.value,
        kafka_config=_KAFKA_CONFIG.value, slots=_BATCH.value, step=_STEP.value,
        session_timeout_ms=_SESSION_TIMEOUT.value, offset_reset=_OFFSET_RESET.value,
        idle_exit_s=_IDLE_EXIT.value, linger_s=_LINGER.value,
        progress_every_s=_PROGRESS_EVERY.value if _PROGRESS.value else 0.0,
        connect_timeout_s=_CONNECT.value, stats_json=_STATS_JSON.value)
  for name in ('topic', 'group', 'out_topic', 'dead_letter_topic', 'out_kafka'):
    if flags.FLAGS[name].value:
      raise errors.UserError(f'--{name} needs --kafka HOST:PORT')
  if len(argv) < 2:
    raise app.UsageError('give at least one Avro file or folder (or --kafka HOST:PORT)')
  return _pipeline().run_command(_WORKDIR.value, argv[1:], _STATE.value,
                                 _OUT.value or 'alerts.csv', slots=_BATCH.value,
                                 partition=_PARTITION.value, step=_STEP.value,
                                 progress=_PROGRESS.value)


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
