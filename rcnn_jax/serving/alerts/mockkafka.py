"""librdkafka's mock Kafka cluster as a process of its own: a test and bench utility, NOT a
Kafka broker.

    python -m rcnn_jax.serving.alerts.mockkafka [--brokers 1]

prints the cluster's bootstrap servers (``127.0.0.1:PORT``) on its first stdout line, then
serves until SIGTERM/SIGINT. The cluster is librdkafka's own test double
(``test.mock.num.brokers``; librdkafka's docs, "Mock cluster"): it speaks the Kafka protocol
on loopback to other processes, with consumer groups, committed offsets and rebalances, and
creates a topic with 4 partitions on its first produce (CreateTopics from an admin client is
not answered). It lives inside this process's client (a producer that keeps polling) and dies
with it: nothing is persisted. The tests (tests/test_kafka.py) and ``bench alerts --kafka``
run the consumers against it because no Kafka broker distribution installs here (neither
Debian nor PyPI packages one). Against a real cluster, the same command takes the cluster's
bootstrap servers in ``--kafka`` (docs/alerts.md).
"""

from __future__ import annotations

import signal
import sys
import time


def start(num_brokers=1):
  """(producer holding the mock cluster, bootstrap servers 'host:port,...')."""
  import confluent_kafka  # lazy: only the Kafka tests and bench need librdkafka
  p = confluent_kafka.Producer({'test.mock.num.brokers': int(num_brokers),
                                'bootstrap.servers': '', 'log_level': 3})
  md = p.list_topics(timeout=10)
  bootstrap = ','.join(f'{b.host}:{b.port}' for _, b in sorted(md.brokers.items()))
  return p, bootstrap


def main(argv):
  n = 1
  if len(argv) == 3 and argv[1] == '--brokers':
    n = int(argv[2])
  elif len(argv) != 1:
    print('usage: python -m rcnn_jax.serving.alerts.mockkafka [--brokers N]', file=sys.stderr)
    return 2
  stop = []
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.append(1))
  p, bootstrap = start(n)
  print(bootstrap, flush=True)
  while not stop:
    p.poll(0.2)
  del p
  time.sleep(0.1)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
