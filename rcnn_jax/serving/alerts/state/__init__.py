"""Per-object stream state that outlives the process, behind one small interface with two
backends: an SQLite file (``state.sqlite.Store``, standard library, WAL: the embedded default
for one process) and a PostgreSQL database (``state.postgres.PostgresStore``, psycopg 3: the
state every member of a Kafka consumer group reaches). ``open_store(spec)`` picks by the
``--state`` value: a ``postgresql://`` (or ``postgres://``) URL, else a file path.

Tables (the same in both; the SQL types are each backend's):

* ``meta`` (key, value): the model the state belongs to (class names, n_w, stamp size, bands
  and the SHA-256 of its weights). A state made with another model is refused: its LSTM
  carries mean nothing to a different network.
* ``objects`` (object_id, num_images, last_mjd, slot): each object's ``stream.StreamState``
  slot: the LSTM carry (c, h) [H] float32, the window of the last n_w - 1 eq. 4 images
  [n_w - 1, S, S] float32, their times [n_w - 1] float32 and bands [n_w - 1] int32, the
  latest probabilities [C] float32, num_images int64 and mjd0, zp0, last_mjd float64
  (``slot_names`` order), flattened and concatenated per dtype, each group written with
  ``np.save(..., allow_pickle=False)`` and read back with ``np.load(..., allow_pickle=False)``
  (plain arrays, never a pickle; ``pack_slot``). ``num_images`` and ``last_mjd`` are repeated
  as columns for queries (NULL where last_mjd is not finite: the exact values live in the
  blob).
* ``alerts`` (alert_id, object_id, mjd, band, step, status, probs, seq): every alert processed,
  with the row the command writes for it (``probs`` as an np.save blob); ``seq`` is the order
  of processing.

The interface (``Store`` and ``PostgresStore``): ``bind(identity)``, ``transaction(object_ids=())``
(a context manager: one chunk, all or nothing), ``lock_objects(object_ids)`` (inside a
transaction, before its reads: serialises the chunks that touch an object; SQLite's ``BEGIN
IMMEDIATE`` already serialises every chunk), ``alert_rows(alert_ids)``,
``slots(object_ids, template)``, ``put_slots(slots, template)``, ``put_alerts(rows)``,
``all_alerts()``, ``all_objects()``, ``close()``.

Idempotence and crashes: a chunk of alerts (read the objects, run the model, write the objects
and the alert rows) is one transaction. An alert id already in ``alerts`` is never processed
again (the ids are read inside the chunk's transaction, after its locks); a process killed
(even with SIGKILL) inside a chunk leaves the state as it was before the chunk (SQLite's WAL:
an uncommitted transaction is never seen, https://www.sqlite.org/wal.html; PostgreSQL rolls
back the transaction of a lost connection), so a rerun redoes exactly the chunks that were not
committed. SQLite runs ``synchronous=NORMAL``: a committed chunk survives a process crash; a
power cut may lose the last chunks, which a rerun then redoes.

A file or database holding tables of these names with other columns (or only some of them) is
refused in one line before any work, and left untouched.
"""

from __future__ import annotations

import os

from rcnn_jax.core.errors import UserError
from rcnn_jax.serving.alerts.state import common
from rcnn_jax.serving.alerts.state import postgres
from rcnn_jax.serving.alerts.state import sqlite
from rcnn_jax.serving.alerts.state.common import arrays_to_bytes
from rcnn_jax.serving.alerts.state.common import bytes_to_arrays
from rcnn_jax.serving.alerts.state.common import check_writable
from rcnn_jax.serving.alerts.state.common import model_identity
from rcnn_jax.serving.alerts.state.common import pack_slot
from rcnn_jax.serving.alerts.state.common import SCHEMA_VERSION
from rcnn_jax.serving.alerts.state.common import SLOT_FIELDS
from rcnn_jax.serving.alerts.state.common import slot_names
from rcnn_jax.serving.alerts.state.common import unpack_slot
from rcnn_jax.serving.alerts.state.postgres import PostgresStore
from rcnn_jax.serving.alerts.state.sqlite import Store

__all__ = ['PostgresStore', 'SCHEMA_VERSION', 'SLOT_FIELDS', 'Store', 'UserError',
           'arrays_to_bytes', 'bytes_to_arrays', 'check_writable', 'common', 'is_url',
           'model_identity', 'open_store', 'pack_slot', 'postgres', 'slot_names', 'sqlite',
           'unpack_slot']


def is_url(spec) -> bool:
  """Whether ``--state`` names a PostgreSQL database (else an SQLite file)."""
  return postgres.is_url(spec)


def open_store(spec):
  """The state named by ``spec`` (``--state``): a ``postgresql://`` or ``postgres://`` URL ->
  ``PostgresStore``; a filesystem path -> the SQLite ``Store``. Opens (creates if missing) and
  checks the tables; a one-line UserError for an unreachable server, refused credentials, a
  database of other tables, an unwritable path. ``bind`` next, before any work."""
  if isinstance(spec, str) and '://' in spec and not is_url(spec):
    raise UserError(f'--state {postgres.redact(spec)}: give an SQLite file path or a '
                    'postgresql:// URL')
  if is_url(spec):
    return PostgresStore(spec)
  return Store(os.fspath(spec))
