"""The embedded state: one SQLite file (standard library, WAL mode), for one process (or a few
on one host, serialised by ``BEGIN IMMEDIATE``)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3

from rcnn_jax.core.errors import UserError
from rcnn_jax.serving.alerts.state import common

_TABLES = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
  object_id TEXT PRIMARY KEY, num_images INTEGER NOT NULL, last_mjd REAL, slot BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
  alert_id TEXT PRIMARY KEY, object_id TEXT NOT NULL, mjd REAL NOT NULL, band TEXT,
  step INTEGER NOT NULL, status TEXT NOT NULL, probs BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_object ON alerts (object_id);
COMMIT;
"""
_TYPES = {
    'meta': ('TEXT', 'TEXT'),
    'objects': ('TEXT', 'INTEGER', 'REAL', 'BLOB'),
    'alerts': ('TEXT', 'TEXT', 'REAL', 'TEXT', 'INTEGER', 'TEXT', 'BLOB', 'INTEGER'),
}
WANT = {t: tuple(zip(common.COLUMNS[t], _TYPES[t])) for t in common.COLUMNS}


class Store:
  """The SQLite state of one process (or of one partition of the objects)."""

  def __init__(self, path):
    common.check_writable(path, 'state database')
    self.path = os.fspath(path)
    self.where = f'state database {self.path}'
    self.db = None
    try:
      self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
      # Checked before anything is written (WAL mode included): a file of other tables is
      # refused untouched. The tables are created in one transaction: all three or none.
      found = {}
      for table in WANT:
        cols = self.db.execute(f'PRAGMA table_info({table})').fetchall()
        if cols:
          found[table] = tuple((c[1], str(c[2]).upper()) for c in cols)
      common.check_tables(found, WANT, self.where)
      if not found:
        other = [n for n, in self.db.execute("SELECT name FROM sqlite_master WHERE type = "
                                             "'table' AND name NOT LIKE 'sqlite%'")]
        if other:
          shown = ', '.join(sorted(other)[:6]) + (', ...' if len(other) > 6 else '')
          raise UserError(f'{self.where} holds other tables ({shown}), not an rcnn_jax alert '
                          'state: give a new file for --state; nothing was changed')
      self.db.execute('PRAGMA journal_mode=WAL')
      self.db.execute('PRAGMA synchronous=NORMAL')
      if not found:
        self.db.executescript(_TABLES)
    except (sqlite3.DatabaseError, UserError) as e:
      if self.db is not None:
        self.db.close()
      if isinstance(e, UserError):
        raise
      raise UserError(f'{self.where}: {e}') from None

  def __repr__(self):
    return f'Store({self.path!r})'

  def close(self):
    self.db.close()

  def bind(self, identity: dict):
    """Ties a new database to a model, or refuses one made with another model."""
    row = self.db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
    if row is None:
      self.db.execute("INSERT OR IGNORE INTO meta VALUES ('model', ?)",
                      (json.dumps(identity, sort_keys=True),))
      row = self.db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
    common.check_identity(json.loads(row[0]), identity, self.where)

  @contextlib.contextmanager
  def transaction(self, object_ids=()):
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): one chunk, all or nothing.
    ``BEGIN IMMEDIATE`` takes the database's write lock, so chunks of every process on this
    file run one after another whatever ``object_ids`` (accepted for the interface)."""
    del object_ids
    self.db.execute('BEGIN IMMEDIATE')
    try:
      yield self
    except BaseException:
      self.db.execute('ROLLBACK')
      raise
    self.db.execute('COMMIT')

  def lock_objects(self, object_ids):
    """Inside ``transaction``: nothing to do (``BEGIN IMMEDIATE`` already serialises)."""
    del object_ids

  # Reads ------------------------------------------------------------------------------------

  def alert_rows(self, alert_ids) -> dict:
    """alert_id -> row dict of the alerts already processed among ``alert_ids``."""
    out = {}
    ids = list(dict.fromkeys(alert_ids))
    for i in range(0, len(ids), 500):
      part = ids[i:i + 500]
      q = (f'SELECT {common.ALERT_COLUMNS} FROM alerts WHERE '
           f'alert_id IN ({",".join("?" * len(part))})')
      for row in self.db.execute(q, part):
        out[row[0]] = common.alert_dict(*row)
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
        out[o] = common.unpack_slot(blob, template)
    return out

  def all_alerts(self) -> list[tuple]:
    """Every alert row in processing order (for tests and inspection)."""
    return list(self.db.execute(f'SELECT {common.ALERT_COLUMNS} FROM alerts ORDER BY seq'))

  def all_objects(self) -> list[tuple]:
    return list(self.db.execute('SELECT object_id, num_images, last_mjd, slot FROM objects '
                                'ORDER BY object_id'))

  # Writes (inside ``transaction``) -----------------------------------------------------------

  def put_slots(self, slots: dict, template):
    self.db.executemany('INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)',
                        [common.slot_row(o, a, template) for o, a in slots.items()])

  def put_alerts(self, rows):
    start = self.db.execute('SELECT COALESCE(MAX(seq), 0) FROM alerts').fetchone()[0]
    self.db.executemany('INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                        [common.alert_row(r) + (start + 1 + i,) for i, r in enumerate(rows)])
