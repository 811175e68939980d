"""What every state backend shares: the slot's blob format (plain arrays with ``np.save``, never
a pickle), the model identity a state is bound to, the tables' columns, and the one-line errors
for a state of another model or a database holding tables of another kind."""

from __future__ import annotations

import hashlib
import io
import os

import jax
import numpy as np

from rcnn_jax.core.errors import UserError

SCHEMA_VERSION = 1
# One object's slot: the carry's leaves first (carry_0, carry_1, ...), then these.
SLOT_FIELDS = ('window', 'window_t', 'window_band', 'probs', 'num_images', 'mjd0', 'zp0',
               'last_mjd')
# The tables' columns, in order (both backends; the SQL types are each backend's).
COLUMNS = {
    'meta': ('key', 'value'),
    'objects': ('object_id', 'num_images', 'last_mjd', 'slot'),
    'alerts': ('alert_id', 'object_id', 'mjd', 'band', 'step', 'status', 'probs', 'seq'),
}
ALERT_COLUMNS = 'alert_id, object_id, mjd, band, step, status, probs'


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


def slot_row(object_id, slot, template) -> tuple:
  """(object_id, num_images, last_mjd or None where not finite, packed slot): an objects row."""
  last = float(slot['last_mjd'])
  return (object_id, int(slot['num_images']), last if np.isfinite(last) else None,
          pack_slot(slot, template))


def alert_row(r) -> tuple:
  """(alert_id, object_id, mjd, band, step, status, probs blob) of one engine row."""
  return (r['alert_id'], r['object_id'], float(r['mjd']), r['band'], int(r['step']),
          r['status'], arrays_to_bytes([np.asarray(r['probs'], np.float32)]))


def alert_dict(a, o, m, b, st, status, p) -> dict:
  return dict(alert_id=a, object_id=o, mjd=m, band=b, step=st, status=status,
              probs=bytes_to_arrays(p, 1)[0])


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


def check_identity(old: dict, identity: dict, where: str):
  """The one-line refusal of a state bound to another model."""
  if old != identity:
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    raise UserError(f'{where} was made with another model ({", ".join(diff)} differ): use a '
                    'new --state for this model')


def check_tables(found: dict, want: dict, where: str):
  """A one-line UserError if a table of the state's names holds other columns (or types):
  ``found``/``want`` map table -> ((column, type), ...); a state has all of ``want`` or none
  (then they are created), never some. Nothing of such a database is dropped or altered."""
  for table, cols in want.items():
    have = found.get(table)
    if have is not None and tuple(have) != tuple(cols):
      shown = ', '.join(f'{c} {t}' for c, t in have[:6]) + (', ...' if len(have) > 6 else '')
      raise UserError(f'{where} holds a table {table} ({shown}) that is not an rcnn_jax alert '
                      'state: give another database (or schema) for --state; nothing was '
                      'changed')
  if found and set(found) != set(want):
    raise UserError(f'{where} holds tables {", ".join(sorted(found))} but not '
                    f'{", ".join(sorted(set(want) - set(found)))}: not an rcnn_jax alert state; '
                    'give another database (or schema) for --state; nothing was changed')


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
