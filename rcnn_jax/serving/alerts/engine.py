"""Alerts through ``Classifier.update`` with the state in a ``state.Store``, batched across
objects.

A chunk of alerts (at most ``slots`` distinct objects) is one transaction: the objects' slots
are read from the store into a ``stream.StreamState`` of ``slots`` rows (one jitted shape for
every call), the alerts run through ``Classifier.update`` in rounds (round r holds each
object's r-th alert of the chunk, so an object's alerts keep their order and every call has
distinct objects; objects never share a slot), and the slots and the alerts' rows are written
back before COMMIT.

Per alert, ``status``:

* ``classified``: fed to the model; ``probs`` are the object's probabilities after it, ``step``
  its number of complete steps (the stream's ``num_steps``).
* ``warmup``: fed, but the object has fewer than n_w images: no step yet, probabilities NaN.
* ``dropped``: not fed, by the stream's rules (``stream.update``): its seeing is above
  ``config.survey.max_seeing_arcsec`` or unknown (training never holds such an image), or the
  epoch is implausible (``plausibility``: a zero point far outside the survey's, pixels beyond
  what the camera records; the stream says why on stderr); the object's current
  probabilities.
* ``late``: not fed: its MJD is not after the object's newest image already fed (the LSTM
  cannot go back in time). The row keeps the object's current probabilities and step, so a
  late alert is never silently dropped; the object's state is unchanged. Replaying an object
  in time order (a new ``--state``) is the way to include it.
* ``duplicate`` is never written: an alert id already processed is not processed again; its
  stored row is reported instead (the same file twice changes nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.serving import stream

# Tests only: seconds to sleep inside each chunk's transaction, after its writes and before its
# COMMIT, so that a test can SIGKILL the process mid-transaction.
PAUSE_ENV = 'RCNN_JAX_ALERTS_TEST_PAUSE_S'
ROW_MULTIPLE = 16
_SLOT_LINE = re.compile(r'^(.*?)object slot (\d+)(.*)$')


class Timers(dict):
  """Seconds spent per stage (``add``), for the summary and the bench."""

  def add(self, name, seconds):
    self[name] = self.get(name, 0.0) + seconds


@dataclasses.dataclass
class Engine:
  classifier: object
  store: object
  slots: int = 64
  timers: Timers = dataclasses.field(default_factory=Timers)

  def __post_init__(self):
    # One scratch row after the objects' slots: every update call feeds it a plain, plausible
    # epoch, so that a call whose alerts are all dropped (seeing cut, implausible epoch) still
    # holds one image (stream.update's recursive call on zero images fails in plausibility's
    # reshape). Never read back, never stored.
    self._scratch = self.slots
    self._scratch_mjd = 0.0
    rules = self.classifier.rules
    self._scratch_seeing = (1.0 if rules.max_seeing_arcsec is None
                            else 0.5 * float(rules.max_seeing_arcsec))
    s = self.classifier.stamp_size
    self._scratch_stamp = np.full((s, s), 100.0, np.float32)
    # Rows: the slots, the scratch row, then padding to a multiple of ROW_MULTIPLE (the CPU
    # encoder runs 16 sequences at a time: models.resolve_encoder_chunk).
    self._rows = -(-(self.slots + 1) // ROW_MULTIPLE) * ROW_MULTIPLE
    template = self.classifier.new_state(self._rows)
    self._treedef = jax.tree_util.tree_structure(template.carry)
    self._num_carry = self._treedef.num_leaves
    self._fresh = _slot_arrays(template, 0)
    self._pause = float(os.environ.get(PAUSE_ENV, '0') or 0)

  def process(self, epochs) -> list[dict]:
    """One chunk (at most ``slots`` distinct objects) -> one row per epoch, in input order.
    ``self.already`` then holds, per epoch, whether its alert id had been processed before
    (in the state, or earlier in the chunk)."""
    clf, store, t = self.classifier, self.store, self.timers
    objects = list(dict.fromkeys(e.object_id for e in epochs))
    if len(objects) > self.slots:
      raise ValueError(f'{len(objects)} objects in a chunk of {self.slots} slots')
    rows = [None] * len(epochs)
    with store.transaction():
      t0 = time.perf_counter()
      # Waits for any other process holding these objects (PostgreSQL; SQLite's transaction
      # already excludes every other): what it committed is then read below, never redone.
      store.lock_objects(objects)
      done = store.alert_rows([e.alert_id for e in epochs])
      saved = store.slots(objects, self._fresh)
      t.add('state_read', time.perf_counter() - t0)
      t0 = time.perf_counter()
      slot_of = {o: i for i, o in enumerate(objects)}
      state = self._state([saved.get(o, self._fresh) for o in objects])
      # Rounds: each object's alerts in order; an alert id seen before reports its stored row.
      todo, first = [], {}
      self.already, seen = [], set(done)
      for e in epochs:
        self.already.append(e.alert_id in seen)
        seen.add(e.alert_id)
      for i, e in enumerate(epochs):
        if e.alert_id in done:
          rows[i] = done[e.alert_id]
        elif e.alert_id in first:
          rows[i] = first[e.alert_id]  # filled below (a dict, shared)
        else:
          first[e.alert_id] = rows[i] = {}
          todo.append(i)
      rounds, count = [], {}
      for i in todo:
        r = count.get(epochs[i].object_id, 0)
        count[epochs[i].object_id] = r + 1
        if r == len(rounds):
          rounds.append([])
        rounds[r].append(i)
      probs = np.asarray(state.probs)
      new_rows = []
      t.add('assemble', time.perf_counter() - t0)
      for rnd in rounds:
        t0 = time.perf_counter()
        fed = [i for i in rnd if epochs[i].mjd > state.last_mjd[slot_of[epochs[i].object_id]]]
        if fed:
          idx = np.array([slot_of[epochs[i].object_id] for i in fed])
          before = state.num_images[idx].copy()
          self._scratch_mjd += 1.0
          said = io.StringIO()  # the stream's drop warnings name slots: said with alert ids
          compiled = clf.compiled_count()
          with contextlib.redirect_stderr(said):
            probs, state = clf.update(
                state, np.stack([epochs[i].stamp for i in fed] + [self._scratch_stamp]),
                np.array([epochs[i].mjd for i in fed] + [self._scratch_mjd]),
                np.array([epochs[i].zero_point for i in fed] + [np.nan]), None,
                objects=np.append(idx, self._scratch),
                seeing_arcsec=np.array([epochs[i].seeing_arcsec for i in fed]
                                       + [self._scratch_seeing]),
                band=([epochs[i].band for i in fed] + [clf.bands[0]]) if len(clf.bands) > 1
                else None)
          self._relay(said.getvalue(), {slot_of[epochs[i].object_id]: epochs[i] for i in fed})
          grew = dict(zip(fed, state.num_images[idx] > before))
        else:
          grew = {}
        # The call that compiled the update (the first of a process, per row count) is timed
        # apart: the summary's alerts/s is the steady rate, as the bench's.
        t.add('compile' if fed and clf.compiled_count() > compiled else 'model',
              time.perf_counter() - t0)
        steps = state.num_steps
        for i in rnd:
          e, j = epochs[i], slot_of[epochs[i].object_id]
          if i not in grew:
            status = 'late'
          elif not grew[i]:
            status = 'dropped'
          else:
            status = 'classified' if steps[j] > 0 else 'warmup'
          rows[i].update(alert_id=e.alert_id, object_id=e.object_id, mjd=e.mjd, band=e.band,
                         step=int(steps[j]), status=status, probs=probs[j].copy())
          new_rows.append(rows[i])
      t0 = time.perf_counter()
      changed = [o for o in objects
                 if state.num_images[slot_of[o]] != saved.get(o, self._fresh)['num_images']]
      if changed:
        store.put_slots(self._slots_of(state, {o: slot_of[o] for o in changed}), self._fresh)
      store.put_alerts(new_rows)
      t.add('state_write', time.perf_counter() - t0)
      if self._pause:
        time.sleep(self._pause)
      t0 = time.perf_counter()
    t.add('state_write', time.perf_counter() - t0)  # the COMMIT
    return rows

  def _relay(self, text, epoch_of_slot):
    """The stream's stderr lines, 'object slot J' replaced by the alert's ids and file."""
    for line in text.splitlines():
      m = _SLOT_LINE.match(line)
      e = epoch_of_slot.get(int(m.group(2))) if m else None
      if e is not None:
        line = f'{m.group(1)}{e.source} {e.object_id} alert {e.alert_id}{m.group(3)}'
      print(line, file=sys.stderr)

  def _state(self, slots) -> stream.StreamState:
    """A ``StreamState`` of ``self._rows`` rows holding ``slots`` first (the rest fresh)."""
    n = self._rows  # the objects' slots, the scratch row, padding
    slots = list(slots) + [self._fresh] * (n - len(slots))
    stack = lambda name: np.stack([s[name] for s in slots])
    carry = jax.tree_util.tree_unflatten(
        self._treedef, [jnp.asarray(stack(f'carry_{i}')) for i in range(self._num_carry)])
    multi = slots[0]['window_band'].size > 0
    return stream.StreamState(
        carry=carry, window=jnp.asarray(stack('window')), window_t=jnp.asarray(stack('window_t')),
        probs=jnp.asarray(stack('probs')), num_images=stack('num_images').astype(np.int64),
        mjd0=stack('mjd0'), zp0=stack('zp0'), last_mjd=stack('last_mjd'),
        n_w=self.classifier.n_w,
        window_band=jnp.asarray(stack('window_band')) if multi else None)

  def _slots_of(self, state, where) -> dict:
    host = jax.device_get({'carry': jax.tree_util.tree_leaves(state.carry),
                           'window': state.window, 'window_t': state.window_t,
                           'probs': state.probs, 'window_band': state.window_band})
    out = {}
    for o, j in where.items():
      out[o] = _slot_from_host(host, state, j)
    return out


def _slot_arrays(state, j) -> dict:
  host = jax.device_get({'carry': jax.tree_util.tree_leaves(state.carry),
                         'window': state.window, 'window_t': state.window_t,
                         'probs': state.probs, 'window_band': state.window_band})
  return _slot_from_host(host, state, j)


def _slot_from_host(host, state, j) -> dict:
  d = {f'carry_{i}': np.asarray(c[j], np.float32) for i, c in enumerate(host['carry'])}
  d['window'] = np.asarray(host['window'][j], np.float32)
  d['window_t'] = np.asarray(host['window_t'][j], np.float32)
  wb = host['window_band']
  d['window_band'] = (np.zeros(0, np.int32) if wb is None else np.asarray(wb[j], np.int32))
  d['probs'] = np.asarray(host['probs'][j], np.float32)
  d['num_images'] = np.int64(state.num_images[j])
  d['mjd0'] = np.float64(state.mjd0[j])
  d['zp0'] = np.float64(state.zp0[j])
  d['last_mjd'] = np.float64(state.last_mjd[j])
  return d
