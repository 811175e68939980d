"""Shared by the speed scripts: per-op times from a jax.profiler trace, and each op's source.

``ops_by_time(run, reps)`` traces ``reps`` calls of ``run()`` and returns {op name: ms per call},
summed over XLA's threads (thunk-executor bookkeeping left out); ``source_lines(hlo)`` maps the
optimised HLO's instruction names to 'file:function:line' of their innermost ``rcnn_jax`` frame,
from the HLO text's stack-frame tables.
"""
import collections
import glob
import os
import re
import tempfile

import jax


def ops_by_time(run, reps=5):
  d = tempfile.mkdtemp()
  jax.profiler.start_trace(d)
  for _ in range(reps):
    jax.block_until_ready(run())
  jax.profiler.stop_trace()
  data = jax.profiler.ProfileData.from_file(
      glob.glob(os.path.join(d, '**', '*.xplane.pb'), recursive=True)[0])
  per_op = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name == 'python':
        continue
      for ev in line.events:
        if not any(s in ev.name for s in ('ThunkExecutor', 'Threadpool', 'end: ')):
          per_op[ev.name] += ev.duration_ns / 1e6 / reps
  return per_op


def source_lines(hlo):
  """Instruction name -> 'file:function:line' of its innermost rcnn_jax/ stack frame."""
  section, tables = None, collections.defaultdict(dict)
  for line in hlo.splitlines():
    if line in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      section = line
      continue
    m = re.match(r'^(\d+) (.*)$', line) if section else None
    if m:
      tables[section][int(m.group(1))] = m.group(2)

  def fields(text):
    return {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', text)}

  def frame_str(fid, depth=0):
    if fid not in tables['StackFrames'] or depth > 50:
      return ''
    f = fields(tables['StackFrames'][fid])
    loc = fields(tables['FileLocations'][f['file_location_id']])
    file = tables['FileNames'][loc['file_name_id']].strip('"')
    if '/rcnn_jax/' in file:
      func = tables['FunctionNames'][loc['function_name_id']].strip('"')
      return f'{os.path.basename(file)}:{func}:{loc["line"]}'
    parent = f.get('parent_frame_id', 0)
    return frame_str(parent, depth + 1) if parent != fid else ''

  out = {}
  for m in re.finditer(r'^\s*(?:ROOT )?%(\S+) = .*?stack_frame_id=(\d+)', hlo, re.M):
    out[m.group(1)] = frame_str(int(m.group(2)))
  return out


def print_ops(per_op, hlo=None, top=25):
  """The ``top`` ops by time, with their source lines when ``hlo`` is given."""
  where = source_lines(hlo) if hlo else {}
  print(f'ops total {sum(per_op.values()):.1f} ms per call (summed over threads)')
  for name, ms in per_op.most_common(top):
    print(f'{ms:8.2f} ms  {name:36s} {where.get(name, "")}')
  return where
