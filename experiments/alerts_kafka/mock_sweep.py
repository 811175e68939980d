"""Why librdkafka's MOCK cluster (not a Kafka broker) looked slow with ~57-kB ZTF packets.

    python experiments/alerts_kafka/mock_sweep.py [--quick]

Starts ``rcnn_jax.serving.alerts.mockkafka`` (librdkafka's mock cluster, confluent-kafka 2.16.1,
a process on loopback) and, for each message size and setting, prints one line (and a JSON
line to mock_sweep.jsonl beside this file):

- ``upfront``: N messages produced and flushed first, then read by a plain consumer (partitions
  assigned from the beginning, ``consume(256)``, no processing): the messages the mock still
  holds (sum of high - low watermark), the messages read and messages/s from the assignment
  to the last one read (then 8 s more waiting for the rest);
- ``paced``: a producer thread that keeps at most ``window`` messages ahead of what the
  consumer (main thread) has read, as a live stream arrives: messages/s over the whole run.

Finding (README.md): the mock keeps at most 5 MiB per partition (``mpart->max_size = 1024 *
1024 * 5`` in ``rd_kafka_mock_partition_init``, src/rdkafka_mock.c, not configurable) and
drops the oldest message sets beyond that. 2,000 x 57 kB on its 4 auto-created partitions is
28 MiB a partition: the first ~82 % are gone before the consumer starts, so it reads ~350
messages at once and then waits for ones that will never come; "~12 alerts/s" was 350 / the
30-s timeout. Nothing on the consumer side changes that; a producer that stays within the
retention (``paced``) loses nothing. Second, the mock answers a fetch that found no data only
after the consumer's ``fetch.wait.max.ms`` (500 ms by default), even when messages arrive in
the meantime (rd_kafka_mock_handle_Fetch: "we should cut the wait short ... too much of a
hassle"): a consumer that keeps up with a live stream waits up to 0.5 s at every catch-up.
``fetch.wait.max.ms=10`` removes that; a real broker answers as soon as data arrives.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import confluent_kafka as ck

ROOT = pathlib.Path(__file__).resolve().parents[2]
RETAINED_BYTES = 5 * 2**20  # the mock's per-partition log cap (rdkafka_mock.c)


def _consumer(bs, topic, cconf):
  c = ck.Consumer(dict({'bootstrap.servers': bs, 'group.id': 'sweep',
                        'enable.auto.commit': False}, **cconf))
  md = c.list_topics(topic, timeout=10).topics[topic]
  c.assign([ck.TopicPartition(topic, q, ck.OFFSET_BEGINNING) for q in md.partitions])
  return c, md


def _topic(bs, pr):
  topic = 'sweep-' + uuid.uuid4().hex[:8]
  pr.produce(topic, value=b'')  # creates it (4 partitions); one empty message
  pr.flush(10)
  return topic


def upfront(bs, size, n, pconf, cconf, timeout=8.0):
  pr = ck.Producer(dict({'bootstrap.servers': bs, 'linger.ms': 5,
                         'queue.buffering.max.kbytes': 2**21}, **pconf))
  topic = _topic(bs, pr)
  val = os.urandom(size)  # incompressible, as the gzipped FITS cutouts nearly are
  for i in range(n):
    pr.produce(topic, key=str(i).encode(), value=val)
    pr.poll(0)
  assert pr.flush(60) == 0
  c, md = _consumer(bs, topic, cconf)
  wm = [c.get_watermark_offsets(ck.TopicPartition(topic, q), timeout=10) for q in md.partitions]
  held = sum(h - lo for lo, h in wm) - (1 if all(lo == 0 for lo, _ in wm) else 0)
  got, t0, last = 0, time.time(), None
  while got < n and time.time() - t0 < timeout:
    for m in c.consume(256, 0.2):
      if not m.error() and m.value():
        got += 1
        last = time.time()
  c.close()
  rate = got / (last - t0) if got else 0.0  # from the assignment to the last message read
  return dict(mode='upfront', held=held, read=got, msgs_per_s=rate)


def paced(bs, size, n, pconf, cconf, window):
  pr = ck.Producer(dict({'bootstrap.servers': bs, 'linger.ms': 5}, **pconf))
  topic = _topic(bs, pr)
  val = os.urandom(size)
  c, _ = _consumer(bs, topic, cconf)
  read = [0]

  def produce():
    for i in range(n):
      while i - read[0] >= window:
        pr.poll(0.001)
      pr.produce(topic, key=str(i).encode(), value=val)
      pr.poll(0)
    pr.flush(60)

  t0 = time.time()
  th = threading.Thread(target=produce, daemon=True)
  th.start()
  idle = time.time()
  while read[0] < n and time.time() - idle < 8.0:
    for m in c.consume(256, 0.05):
      if not m.error() and m.value():
        read[0] += 1
        idle = time.time()
  wall = time.time() - t0
  th.join(10)
  c.close()
  return dict(mode='paced', window=window, read=read[0], msgs_per_s=read[0] / wall)


def main(argv):
  if any(a != '--quick' for a in argv[1:]):
    print(__doc__.split('\n\n')[1], file=sys.stderr)
    return 2
  quick = '--quick' in argv
  mock = subprocess.Popen([sys.executable, '-m', 'rcnn_jax.serving.alerts.mockkafka'],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
  bs = mock.stdout.readline().strip()
  out = open(pathlib.Path(__file__).with_name('mock_sweep.jsonl'), 'a')  # pylint: disable=consider-using-with
  n = 500 if quick else 2000
  cases = []
  for size in (1_000, 16_000, 57_000, 128_000):
    cases.append((size, 'upfront', {}, {}))
  for pconf in ({'linger.ms': 0, 'batch.size': 60_000}, {'linger.ms': 100},
                {'compression.type': 'lz4'}):
    cases.append((57_000, 'upfront', pconf, {}))
  for cconf in ({'fetch.wait.max.ms': 10}, {'fetch.max.bytes': 100_000_000,
                                            'max.partition.fetch.bytes': 20_000_000},
                {'fetch.min.bytes': 1_000_000}, {'queued.min.messages': 10_000_000},
                {'fetch.queue.backoff.ms': 0, 'fetch.error.backoff.ms': 10},
                {'receive.message.max.bytes': 200_000_000,
                 'socket.receive.buffer.bytes': 8_000_000}):
    cases.append((57_000, 'upfront', {}, cconf))
  for size in (1_000, 16_000, 57_000, 128_000):
    cases.append((size, 'paced', {}, {}))
    cases.append((size, 'paced', {}, {'fetch.wait.max.ms': 10}))
  stamp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
  try:
    for size, mode, pconf, cconf in cases:
      if mode == 'upfront':
        r = upfront(bs, size, n, pconf, cconf)
      else:
        # Within the retention with room to spare: 2.5 MiB a partition, 4 partitions.
        r = paced(bs, size, n, pconf, cconf, window=max(8, int(4 * RETAINED_BYTES / 2 / size)))
      r.update(size=size, n=n, producer=pconf, consumer=cconf, time=stamp,
               load_average=[round(x, 2) for x in os.getloadavg()],
               broker="librdkafka's mock cluster (confluent-kafka "
               f'{ck.version()[0]}, librdkafka {ck.libversion()[0]})')
      extra = f" held {r['held']:5d}" if mode == 'upfront' else f" window {r['window']:4d}"
      print(f"{mode:8s} {size:7d} B x {n}: read {r['read']:5d}{extra}  "
            f"{r['msgs_per_s']:8.0f} msg/s {r['msgs_per_s'] * size / 1e6:7.1f} MB/s  "
            f'producer {pconf} consumer {cconf}  load {r["load_average"][0]}', flush=True)
      out.write(json.dumps(r) + '\n')
  finally:
    out.close()
    mock.terminate()
    mock.wait(timeout=30)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
