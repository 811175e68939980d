"""Avro decoding per alert (issue 41): ms per alert for ZTF and Rubin, from a file and as a
Kafka message (an Avro container per message; the Confluent wire format), and the whole
packet -> Epoch (decoding + cutout) from a file. Prints one line per case.

    python experiments/alerts/bench_decode.py [--repeat N]

Packets: the shared samples (/work/shared/data/alerts or $RCNN_JAX_ALERTS): ZTF19acihgng.avro
(77 kB, schema 3.3) and the Fink Rubin sample (lsst.v10_0, 7 alerts, ~270 kB each). Each case:
the best of 5 runs of N calls (the least disturbed by the other processes on the machine).
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import pathlib
import struct
import sys
import time

import fastavro

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from configs import lsst  # noqa: E402
from configs import ztf  # noqa: E402
from rcnn_jax.serving.alerts import packets  # noqa: E402
from rcnn_jax.serving.alerts import reader  # noqa: E402
from rcnn_jax.serving.alerts import sources  # noqa: E402

ALERTS = pathlib.Path(os.environ.get('RCNN_JAX_ALERTS', ROOT.parent / 'shared' / 'data' / 'alerts'))
ZTF1 = ALERTS / 'ztf' / 'ZTF19acihgng.avro'
RUBIN = ALERTS / 'rubin' / 'part-2-918301.avro'


def _best(fn, n, per):
  """ms per alert: the best of 5 runs of ``n`` calls of ``fn`` (each ``per`` alerts)."""
  fn()
  best = float('inf')
  for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(n):
      fn()
    best = min(best, (time.perf_counter() - t0) / (n * per))
  return 1e3 * best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--repeat', type=int, default=40)
  n = ap.parse_args().repeat
  zspec = reader.StampSpec.from_config(ztf.get_config('smoke'))
  lspec = reader.StampSpec.from_config(lsst.get_config('smoke'))
  ztf_msg = ZTF1.read_bytes()
  with open(RUBIN, 'rb') as f:
    r = fastavro.reader(f)
    writer, recs = r.writer_schema, list(r)
  parsed = fastavro.parse_schema(packets.plain(copy.deepcopy(writer)))
  wire = []
  for rec in recs:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, rec)
    wire.append(b'\x00' + struct.pack('>I', 4242) + body.getvalue())
  nr = len(recs)
  schemas = sources.Schemas({4242: writer})
  by_id = {4242: writer}
  cases = [
      ('ZTF   file  reader.read_records', lambda: list(reader.read_records(ZTF1)), 1),
      ('ZTF   file  reader.read_epochs', lambda: list(reader.read_epochs(ZTF1, zspec)), 1),
      ('ZTF   msg   sources.decode_message (container)',
       lambda: sources.decode_message(ztf_msg, schemas, 'm'), 1),
      ('ZTF   msg   reader.decode_message (container)',
       lambda: reader.decode_message(ztf_msg), 1),
      ('Rubin file  reader.read_records', lambda: list(reader.read_records(RUBIN)), nr),
      ('Rubin file  reader.read_epochs', lambda: list(reader.read_epochs(RUBIN, lspec)), nr),
      ('Rubin wire  sources.decode_message',
       lambda: [sources.decode_message(m, schemas, 'm') for m in wire], nr),
      ('Rubin wire  reader.decode_message',
       lambda: [reader.decode_message(m, schemas=by_id) for m in wire], nr),
  ]
  for name, fn, per in cases:
    reps = max(1, n // per) if per > 1 else n
    print(f'{name:50s} {_best(fn, reps, per):8.3f} ms/alert', flush=True)


if __name__ == '__main__':
  main()
