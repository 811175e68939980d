"""Times the jitted simulator (paper config, 256 objects x 22 stamps a call) and prints its
XLA ops by time (summed over XLA's threads), from a jax.profiler trace.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python experiments/speed/sim_profile.py
"""
import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import hits  # pylint: disable=g-import-not-at-top
from rcnn_jax import simulator as sim_lib  # pylint: disable=g-import-not-at-top


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=256)
  ap.add_argument('--calls', type=int, default=20)
  ap.add_argument('--top', type=int, default=25)
  args = ap.parse_args()
  sim = sim_lib.build_simulator(hits.get_config('paper'))
  fn = jax.jit(lambda k: sim_lib.simulate_batch(k, sim, args.batch)['images'])
  key = jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(key))
  print(f'compile {time.perf_counter() - t0:.1f} s')
  for i in range(3):
    jax.block_until_ready(fn(jax.random.fold_in(key, 1000 + i)))
  times = []
  for i in range(args.calls):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(jax.random.fold_in(key, i)))
    times.append(time.perf_counter() - t0)
  stamps = args.batch * sim.num_images
  print(f'median {1e3 * np.median(times):.1f} ms ({stamps / np.median(times):,.0f} stamps/s), '
        f'best {1e3 * min(times):.1f} ms ({stamps / min(times):,.0f} stamps/s)')
  d = tempfile.mkdtemp()
  jax.profiler.start_trace(d)
  n = 5
  for i in range(n):
    jax.block_until_ready(fn(jax.random.fold_in(key, i)))
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
          per_op[ev.name] += ev.duration_ns / 1e6 / n
  print(f'ops total {sum(per_op.values()):.1f} ms per call (summed over threads)')
  where = _source_lines(fn.lower(key).compile().as_text())
  for name, ms in per_op.most_common(args.top):
    print(f'{ms:8.2f} ms  {name:32s} {where.get(name, "")}')
  by_fn = collections.Counter()
  for name, ms in per_op.items():
    by_fn[where.get(name, '?').split(':')[0] + ':' + where.get(name, '?:?').split(':')[1]
          if name in where else '?'] += ms
  print('by function (innermost rcnn_jax frame):')
  for name, ms in by_fn.most_common(args.top):
    print(f'{ms:8.2f} ms  {name}')


def _source_lines(hlo):
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


if __name__ == '__main__':
  main()
