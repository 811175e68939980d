"""Per-object stream state that outlives the process: one SQLite file (standard library, WAL).

Tables:

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
  as columns for queries (SQLite stores a NaN REAL as NULL, so the exact values live in the
  blob).
* ``alerts`` (alert_id, object_id, mjd, band, step, status, probs, seq): every alert processed,
  with the row the command writes for it (``probs`` as an np.save blob); ``seq`` is the order
  of processing.

Idempotence and crashes: ``Store.transaction`` wraps one chunk of alerts (read the objects,
run the model, write the objects and the alert rows) in ``BEGIN IMMEDIATE ... COMMIT``. An
alert id already in ``alerts`` is never processed again; a process killed (even with SIGKILL)
inside a chunk leaves the database as it was before the chunk (SQLite's WAL: an uncommitted
transaction is never seen, https://www.sqlite.org/wal.html), so a rerun redoes exactly the
chunks that were not committed. ``synchronous=NORMAL``: a committed chunk survives a process
crash; a power cut may lose the last chunks, which a rerun then redoes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3

import jax
import numpy as np

from rcnn_jax.core.errors import UserError

SCHEMA_VERSION = 1
# One object's slot: the carry's leaves first (carry_0, carry_1, ...), then these.
SLOT_FIELDS = ('window', 'window_t', 'window_band', 'probs', 'num_images', 'mjd0', 'zp0',
               'last_mjd')
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
  object_id TEXT PRIMARY KEY, num_images INTEGER NOT NULL, last_mjd REAL, slot BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
  alert_id TEXT PRIMARY KEY, object_id TEXT NOT NULL, mjd REAL NOT NULL, band TEXT,
  step INTEGER NOT NULL, status TEXT NOT NULL, probs BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_object ON alerts (object_id);
"""


def arrays_to_bytes(arrays) -> bytes:
  """Arrays written one after another with np.save (no pickle)."""
  buf = io.BytesIO()
  for a in arrays:
    np.save(buf, np.asarray(a), allow_pickle=False)
  return buf.getvalue()


def bytes_to_arrays(blob, count) -> list[np.ndarray]:
  """``count`` arrays written by ``arrays_to_bytes``; ValueError if the bytes hold more."""
  buf = io.BytesIO(blob)
  out = [np.load(buf, allow_pickle=False) for _ in range(count)]
  if buf.tell() != len(blob):
    raise ValueError(f'{len(blob) - buf.tell()} bytes after the arrays')
  return out


def slot_names(template) -> list[str]:
  """The slot's arrays in their stored order: the carry's leaves, then ``SLOT_FIELDS``."""
  carry = sorted((n for n in template if n.startswith('carry_')), key=lambda n: int(n[6:]))
  return carry + list(SLOT_FIELDS)


def pack_slot(slot, template) -> bytes:
  """One object's slot as a few plain arrays: its arrays (``slot_names`` order) flattened and
  concatenated per dtype of ``template`` (float32, float64, int32, int64), each group written
  with np.save. Few arrays because np.load's header parse is most of a read."""
  groups = {}
  for name in slot_names(template):
    t = np.asarray(template[name])
    groups.setdefault(t.dtype.str, []).append(np.ravel(np.asarray(slot[name], t.dtype)))
  return arrays_to_bytes([np.concatenate(groups[k]) for k in sorted(groups)])


def unpack_slot(blob, template) -> dict:
  """``pack_slot``'s inverse: arrays of the template's shapes and dtypes."""
  names = slot_names(template)
  keys = sorted({np.asarray(template[n]).dtype.str for n in names})
  try:
    flat = dict(zip(keys, bytes_to_arrays(blob, len(keys))))
  except (ValueError, EOFError, OSError) as e:
    raise UserError(f'a stored object slot cannot be read (damaged state database: {e})') \
        from None
  pos, out = dict.fromkeys(keys, 0), {}
  for name in names:
    t = np.asarray(template[name])
    k, n = t.dtype.str, t.size
    if flat[k].dtype.str != k or pos[k] + n > flat[k].size:
      raise UserError('a stored object slot does not fit this model (damaged state database)')
    out[name] = flat[k][pos[k]:pos[k] + n].reshape(t.shape)
    pos[k] += n
  if any(pos[k] != flat[k].size for k in keys):
    raise UserError('a stored object slot does not fit this model (damaged state database)')
  return out


def model_identity(classifier) -> dict:
  """What a state is tied to: classes, n_w, stamp size, bands and the weights' SHA-256."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves((classifier.params, classifier.batch_stats)):
    a = np.ascontiguousarray(np.asarray(jax.device_get(leaf), np.float32))
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return {'schema_version': SCHEMA_VERSION, 'class_names': list(classifier.class_names),
          'n_w': int(classifier.n_w), 'stamp_size': int(classifier.stamp_size),
          'bands': list(classifier.bands), 'weights_sha256': h.hexdigest()}


def check_writable(path, what):
  """A one-line UserError unless ``path`` can be created or written (checked before any work)."""
  path = os.path.abspath(os.fspath(path))
  d = os.path.dirname(path)
  if os.path.isdir(path):
    raise UserError(f'{what} {path} is a folder')
  if not os.path.isdir(d):
    raise UserError(f'{what} {path}: folder {d} does not exist')
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise UserError(f'{what} {path} is not writable')
  if not os.access(d, os.W_OK):
    raise UserError(f'{what} {path}: folder {d} is not writable')


class Store:
  """The SQLite state of one process (or of one partition of the objects)."""

  def __init__(self, path):
    check_writable(path, 'state database')
    self.path = os.fspath(path)
    try:
      self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
      self.db.execute('PRAGMA journal_mode=WAL')
      self.db.execute('PRAGMA synchronous=NORMAL')
      self.db.executescript(_TABLES)
    except sqlite3.DatabaseError as e:
      raise UserError(f'state database {self.path}: {e}') from None

  def close(self):
    self.db.close()

  def bind(self, identity: dict):
    """Ties a new database to a model, or refuses one made with another model."""
    row = self.db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
    text = json.dumps(identity, sort_keys=True)
    if row is None:
      self.db.execute("INSERT OR IGNORE INTO meta VALUES ('model', ?)", (text,))
      row = self.db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
    old = json.loads(row[0])
    if old != identity:
      diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
      raise UserError(f'state database {self.path} was made with another model ({", ".join(diff)} '
                      'differ): use a new --state for this model')

  @contextlib.contextmanager
  def transaction(self):
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): one chunk, all or nothing."""
    self.db.execute('BEGIN IMMEDIATE')
    try:
      yield self
    except BaseException:
      self.db.execute('ROLLBACK')
      raise
    self.db.execute('COMMIT')

  # Reads ------------------------------------------------------------------------------------

  def alert_rows(self, alert_ids) -> dict:
    """alert_id -> row dict of the alerts already processed among ``alert_ids``."""
    out = {}
    ids = list(dict.fromkeys(alert_ids))
    for i in range(0, len(ids), 500):
      part = ids[i:i + 500]
      q = ('SELECT alert_id, object_id, mjd, band, step, status, probs FROM alerts WHERE '
           f'alert_id IN ({",".join("?" * len(part))})')
      for a, o, m, b, st, status, p in self.db.execute(q, part):
        out[a] = dict(alert_id=a, object_id=o, mjd=m, band=b, step=st, status=status,
                      probs=bytes_to_arrays(p, 1)[0])
    return out

  def slots(self, object_ids, template) -> dict:
    """object_id -> slot arrays (``unpack_slot`` with ``template``, a fresh slot) of the
    objects already in the state."""
    out = {}
    ids = list(dict.fromkeys(object_ids))
    for i in range(0, len(ids), 500):
      part = ids[i:i + 500]
      q = f'SELECT object_id, slot FROM objects WHERE object_id IN ({",".join("?" * len(part))})'
      for o, blob in self.db.execute(q, part):
        out[o] = unpack_slot(blob, template)
    return out

  def all_alerts(self) -> list[tuple]:
    """Every alert row in processing order (for tests and inspection)."""
    return list(self.db.execute('SELECT alert_id, object_id, mjd, band, step, status, probs '
                                'FROM alerts ORDER BY seq'))

  def all_objects(self) -> list[tuple]:
    return list(self.db.execute('SELECT object_id, num_images, last_mjd, slot FROM objects '
                                'ORDER BY object_id'))

  # Writes (inside ``transaction``) -----------------------------------------------------------

  def put_slots(self, slots: dict, template):
    rows = []
    for o, a in slots.items():
      last = float(a['last_mjd'])
      rows.append((o, int(a['num_images']), last if np.isfinite(last) else None,
                   pack_slot(a, template)))
    self.db.executemany('INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)', rows)

  def put_alerts(self, rows):
    start = self.db.execute('SELECT COALESCE(MAX(seq), 0) FROM alerts').fetchone()[0]
    self.db.executemany(
        'INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        [(r['alert_id'], r['object_id'], float(r['mjd']), r['band'], int(r['step']),
          r['status'], arrays_to_bytes([np.asarray(r['probs'], np.float32)]), start + 1 + i)
         for i, r in enumerate(rows)])
