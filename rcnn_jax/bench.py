"""Benchmarks: one JSON object per line (name, value, unit, config), also saved to --out.

    python -m rcnn_jax.bench [simulate|train|inference ...] [--batch 32] [--steps 20]

``simulate``: stamps/s of the jitted simulator (after compilation), and its compile time.
``train``: sequences/s of the full training step (simulation included) for the paper's
architecture (Table 3) at --batch sequences of --steps steps, and its compile time; then the
same step with every step of every sequence valid (the work of a fixed-length implementation),
and the simulation's share of the step (the batch simulated alone).
``inference``: new images/s of the incremental (alert-broker) mode, batched across objects, and
its probabilities' largest difference from full precision (--workdir: a trained model's);
``--backend onnx`` (or ``jax,onnx``) the same stream through the ONNX export and onnxruntime.
``alerts``: real ZTF alert packets end to end (``rcnn_jax.alerts``: Avro decoding, cutouts,
the SQLite state read and written, the model), alerts/s and where the time goes, and the
latency of one alert; against Rubin's largest visit (40,000 alerts in ~30 s: 1,333 alerts/s).
With no name, all of them run.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import hits
from rcnn_jax.core import utils
from rcnn_jax.training import config_check


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _BATCH, _STEPS, _SIM_BATCH, _OBJECTS, _ITERS, _MIN_TIME, _CONFIG_ARG, _OUT, _WORKDIR
  global _ALERT_OBJECTS, _ALERT_EPOCHS, _ALERT_SLOTS, _BACKEND
  global _ALERT_KAFKA, _ALERT_KAFKA_CONFIG, _ALERT_CONSUMERS, _ALERT_POSTGRES
  _BATCH = flags.DEFINE_integer('batch', 32, 'Sequences per training step (train).')
  _STEPS = flags.DEFINE_integer('steps', 20, 'Steps per sequence, N_d cap (train, simulate).')
  _SIM_BATCH = flags.DEFINE_integer('sim_batch', 256, 'Objects per simulator call (simulate).')
  _OBJECTS = flags.DEFINE_integer('objects', 1024, 'Objects updated per call (inference).')
  _ITERS = flags.DEFINE_integer(
      'iters', 10, 'Timed calls, at least (best and median are reported).')
  _MIN_TIME = flags.DEFINE_float(
      'min_time_s', 3.0, 'Timed calls last at least this long, after a warm-up of at least 3 '
      'calls and two thirds of this time.')
  _CONFIG_ARG = flags.DEFINE_string('config_arg', 'paper', 'configs/hits.py variant.')
  _WORKDIR = flags.DEFINE_string(
      'workdir', '', 'inference: the trained RCNN of this training workdir (best checkpoint) '
      'instead of random initial parameters of the config.')
  _OUT = flags.DEFINE_string('out', 'workdirs/bench/latest.jsonl', 'Where the JSON lines go '
                             '(default: under the ignored workdirs/).')
  _ALERT_OBJECTS = flags.DEFINE_integer('alert_objects', 1024, 'alerts: objects in the stream.')
  _ALERT_EPOCHS = flags.DEFINE_integer('alert_epochs', 4, 'alerts: alerts per object.')
  _ALERT_SLOTS = flags.DEFINE_integer('alert_slots', 256, 'alerts: objects per model call.')
  _ALERT_KAFKA = flags.DEFINE_string(
      'kafka', '', 'alerts: end to end through Kafka (consume, decode, cutout, state, model, '
      'produce) with consumer processes of `python -m rcnn_jax.alerts --kafka`. '
      "`--kafka` alone (or --kafka=mock): against librdkafka's mock cluster, started on "
      'loopback (a test double, NOT a broker); --kafka HOST:PORT[,...]: against that cluster '
      '(its topics are created and deleted by the bench).')
  _ALERT_KAFKA_CONFIG = flags.DEFINE_multi_string(
      'kafka_config', [], 'alerts --kafka HOST:PORT: KEY=VALUE librdkafka settings '
      '(security, SASL) for the bench and its consumers.')
  _ALERT_CONSUMERS = flags.DEFINE_list('alert_consumers', ['1', '2'], 'alerts --kafka: '
                                       'consumer processes in the group, one run each.')
  _ALERT_POSTGRES = flags.DEFINE_string('alert_postgres', '', 'alerts --kafka: also a run '
                                        'with the state in this postgresql:// database.')
  _BACKEND = flags.DEFINE_list(
      'backend', ['jax'], "inference: 'jax' (Classifier.update, float32 then bfloat16), 'onnx' "
      '(the ONNX export run by onnxruntime through serving.onnx_stream), or both: jax,onnx.')

_RESULTS = []
_REFERENCE_CALLS = 8  # updates of every object compared with the full-precision reference


def _hardware():
  return {'backend': jax.default_backend(), 'devices': jax.device_count(),
          'cpu_count': os.cpu_count(), 'machine': platform.machine(),
          'processor': _cpu_name(), 'jax': jax.__version__}


def _cpu_name():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def emit(name, value, unit, **extra):
  rec = {'name': name, 'value': round(float(value), 3), 'unit': unit, **extra,
         'hardware': _hardware()}
  _RESULTS.append(rec)
  print(json.dumps(rec), flush=True)


def _time(fn, iters, warmup=3):
  """(best, median, calls): seconds of at least ``iters`` calls lasting --min_time_s, after at
  least ``warmup`` untimed calls lasting two thirds of that. The first calls after compiling
  also pay for the allocator and the kernel setting up huge pages: a 50 ms simulator call
  takes 1.5-2x longer for its first ten or so."""
  min_s = _MIN_TIME.value
  warmup_s = 2.0 * min_s / 3.0
  t_start = time.perf_counter()
  n = 0
  while n < warmup or time.perf_counter() - t_start < warmup_s:
    jax.block_until_ready(fn())
    n += 1
  times = []
  t_start = time.perf_counter()
  while len(times) < iters or time.perf_counter() - t_start < min_s:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times), float(np.median(times)), len(times)


def bench_simulate(config):
  from rcnn_jax.sim import simulator as sim_lib  # lazy: per benchmark
  sim = sim_lib.build_simulator(config)
  b = _SIM_BATCH.value
  fn = jax.jit(lambda k: sim_lib.simulate_batch(k, sim, b)['images'])
  key = jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(key))
  compile_s = time.perf_counter() - t0
  i = [0]

  def call():
    i[0] += 1
    return fn(jax.random.fold_in(key, i[0]))

  best, med, calls = _time(call, _ITERS.value)
  stamps = b * sim.num_images
  cfg = {'batch': b, 'images_per_object': sim.num_images, 'stamp_size': sim.stamp_size,
         'psf': sim.psf_kind, 'poisson': sim.poisson}
  emit('simulate', stamps / med, 'stamps_per_s', best=round(stamps / best, 1), config=cfg,
       compile_s=round(compile_s, 2), calls=calls)


def bench_train(config):
  """The fused training step on simulated batches as they come (their padding steps, about
  43 % of a paper batch, are skipped by the CPU encoder), then with every step valid: the
  work of a fixed-length implementation such as the PyTorch peer's."""
  from rcnn_jax.training import steps as steps_lib  # lazy: per benchmark
  config.train.batch_size = _BATCH.value
  config.sim.max_steps = _STEPS.value
  mesh = steps_lib.make_mesh()
  sim, model, tx = steps_lib.build(config)
  for all_valid in (False, True):
    state = steps_lib.init_state(config, sim, model, tx, mesh)
    step = steps_lib.make_train_step(config, sim, model, tx, mesh, all_steps_valid=all_valid)
    root = jax.random.key(0)
    t0 = time.perf_counter()
    state, m = step(state, root)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    holder = [state]

    def call():
      holder[0], m = step(holder[0], root)
      return m

    best, med, calls = _time(call, _ITERS.value)
    cfg = {'batch': _BATCH.value, 'steps': _STEPS.value, 'n_w': sim.n_w,
           'model': config.model.kind, 'conv_impl': config.model.conv_impl,
           'encoder_chunk': config.model.encoder_chunk,
           'filters': config.model.filters, 'lstm_size': config.model.lstm_size,
           'all_steps_valid': all_valid}
    name = f'train_{config.model.kind}' + ('_all_steps_valid' if all_valid else '')
    emit(name, _BATCH.value / med, 'sequences_per_s', best=round(_BATCH.value / best, 2),
         config=cfg, compile_s=round(compile_s, 2), calls=calls)
    if not all_valid:
      step_med = med
  # The simulation's share of the step: the same batch simulated alone, jitted.
  from rcnn_jax.sim import simulator as sim_lib  # lazy: per benchmark
  sim_fn = jax.jit(lambda k: sim_lib.simulate_batch(k, sim, _BATCH.value)['images'])
  jax.block_until_ready(sim_fn(jax.random.key(1)))
  i = [1]

  def sim_call():
    i[0] += 1
    return sim_fn(jax.random.key(i[0]))

  _, sim_med, _ = _time(sim_call, _ITERS.value)
  emit('train_simulation_share', 100.0 * sim_med / step_med, 'percent',
       simulate_ms=round(1e3 * sim_med, 2), step_ms=round(1e3 * step_med, 1),
       config={'batch': _BATCH.value, 'steps': _STEPS.value})


def alert_stream(n, s, pool=16, seed=0):
  """Synthetic alert images for ``n`` objects: (pool, images [pool, n, s, s], MJD jitter
  [pool, n], zero points [pool, n], sky [n]). Call i observes set i % pool, at MJD
  57070 + i + jitter: a Gaussian star of up to 2,000 ADU on a 120 ADU sky with 10 ADU noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:s, :s] - s // 2
  psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
  images = (120.0 + rng.uniform(0, 2000.0, (pool, n, 1, 1)) * psf
            + rng.normal(0.0, 10.0, (pool, n, s, s))).astype(np.float32)
  jitter = rng.uniform(0.0, 0.5, (pool, n))
  zp = 25.0 + rng.normal(0.0, 0.1, (pool, n))
  return pool, images, jitter, zp, np.full((n,), 120.0)


def bench_inference(config):
  """Incremental (alert-broker) update of --objects objects, one new image each per call.

  Random initial parameters of the config's model, or with --workdir a trained model's; the
  timed call includes the host side of ``Classifier.update`` (cropping, eq. 4) and returns the
  probabilities. float32, then bfloat16 convolutions and dense layers (LSTM in float32), each
  with its largest probability difference from full precision (the plain float32 layers: XLA's
  convolution over the whole batch) over the first updates of the same image stream.
  """
  from rcnn_jax import models  # lazy: per benchmark
  from rcnn_jax.serving.classifier import Classifier  # lazy: per benchmark
  backends = list(dict.fromkeys(_BACKEND.value))
  unknown = sorted(set(backends) - {'jax', 'onnx'})
  if unknown or not backends:
    raise utils.UserError(f'--backend {",".join(unknown)}: choose jax, onnx or jax,onnx')
  if 'onnx' in backends:
    from rcnn_jax.serving import export_onnx  # lazy: per benchmark (optional extra [onnx])
    export_onnx.import_converter()  # installed, before any compile
  n, iters = _OBJECTS.value, _ITERS.value
  if _WORKDIR.value:
    trained = Classifier.from_workdir(_WORKDIR.value)
    config, params, batch_stats = trained.config, trained.params, trained.batch_stats
  else:
    model = models.build_model(config.model, len(config.sim.class_names))
    s = int(config.sim.stamp_size)
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 1, s, s, config.sim.n_w)),
                                        jnp.zeros((1, 1, config.sim.n_w)),
                                        jnp.ones((1, 1), bool)))
    variables = init(jax.random.key(0))
    params, batch_stats = variables['params'], variables['batch_stats']
  s, n_w = int(config.sim.stamp_size), int(config.sim.n_w)
  pool, images, jitter, zp, sky = alert_stream(n, s)

  def run(clf, num_calls=None, timed=False):
    """Calls clf.update on the image stream; (probabilities from call n_w - 1 on, timing)."""
    holder = [clf.new_state(n), 0, []]

    def call():
      i = holder[1]
      j = i % pool
      p, holder[0] = clf.update(holder[0], images[j], 57070.0 + i + jitter[j], zp[j], sky)
      holder[1] += 1
      if i >= n_w - 1:
        holder[2].append(p)
      return p

    t0 = time.perf_counter()
    call()  # compiles; the same jitted call serves every later image
    compile_s = time.perf_counter() - t0
    if timed:
      for _ in range(n_w - 2):
        call()
      timing = _time(call, iters) + (compile_s,)
      while len(holder[2]) < _REFERENCE_CALLS:  # enough updates to compare (untimed)
        call()
    else:
      for _ in range(num_calls - 1):
        call()
      timing = None
    return np.stack(holder[2]), timing

  probs, timings = {}, {}
  for dtype in ('float32', 'bfloat16') if 'jax' in backends else ():
    clf = Classifier(config, params, batch_stats, dtype=dtype)
    probs[dtype], timings[dtype] = run(clf, timed=True)
  if 'onnx' in backends:
    onnx_clf = _onnx_classifier(Classifier(config, params, batch_stats))
    probs['onnx'], timings['onnx'] = run(onnx_clf, timed=True)
  # Full precision: the plain float32 layers (XLA's convolution over the whole batch, no
  # Winograd, no chunks), on the stream's first images.
  ref_config = copy.deepcopy(config)
  ref_config.model.conv_impl, ref_config.model.encoder_chunk = 'xla', 0
  ref_clf = Classifier(ref_config, params, batch_stats, dtype='float32')
  reference, _ = run(ref_clf, num_calls=n_w - 1 + _REFERENCE_CALLS)
  for dtype in timings:
    best, med, calls, compile_s = timings[dtype]
    cfg = {'objects': n, 'stamp_size': s, 'n_w': n_w, 'dtype': dtype,
           'conv_impl': config.model.conv_impl, 'filters': config.model.filters,
           'lstm_size': config.model.lstm_size,
           'parameters': f'trained ({_WORKDIR.value})' if _WORKDIR.value else 'random'}
    if dtype == 'onnx':
      import onnxruntime  # lazy: per benchmark (optional extra [onnx])
      cfg.update(dtype='float32', backend='onnxruntime ' + onnxruntime.__version__,
                 conv_impl='onnxruntime', rows_per_call=onnx_clf.batch,
                 workers=onnx_clf.workers)
    ours = probs[dtype][:len(reference)]
    diff = float(np.abs(ours - reference).max())
    same_top = float(np.mean(ours.argmax(-1) == reference.argmax(-1)))
    name = 'inference' if dtype == 'float32' else f'inference_{dtype}'
    emit(name, n / med, 'images_per_s', best=round(n / best, 1), config=cfg,
         compile_s=round(compile_s, 2), calls=calls,
         max_abs_prob_diff_vs_full_precision=round(diff, 7),
         top_class_agreement_vs_full_precision=round(same_top, 5),
         compared_updates=len(reference))


def _onnx_classifier(clf):
  """The classifier exported to ONNX (a temporary folder) and loaded by onnx_stream."""
  import tempfile  # pylint: disable=g-import-not-at-top

  from rcnn_jax.serving import export_onnx  # lazy: per benchmark (optional extra [onnx])
  from rcnn_jax.serving import onnx_stream  # lazy: per benchmark (optional extra [onnx])
  with tempfile.TemporaryDirectory(prefix='bench_onnx_') as tmp:
    export_onnx.export_onnx(clf, tmp, float(clf.config.survey.max_seeing_arcsec))
    return onnx_stream.load(tmp)


ALERT_SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..',
                             'shared', 'data', 'alerts', 'ztf', 'avro_multi_alerts.avro')
RUBIN_VISIT_RATE = 40_000 / 30.0  # alerts/s: Rubin's largest visit (issue 32)


def alert_files(folder, num_objects, num_epochs, per_file=2048):
  """ZTF Avro files of ``num_objects`` x ``num_epochs`` alerts made from the shared samples'
  real packets (their cutouts; ids, times, bands rewritten), objects interleaved as a night's
  stream interleaves them; returns the paths."""
  import fastavro  # pylint: disable=g-import-not-at-top
  schema, recs = alert_records(num_objects, num_epochs)
  paths = []
  for i in range(0, len(recs), per_file):
    paths.append(os.path.join(folder, f'alerts_{i // per_file:04d}.avro'))
    with open(paths[-1], 'wb') as f:
      fastavro.writer(f, schema, recs[i:i + per_file])
  return paths


def alert_records(num_objects, num_epochs, prefix='ZTFbench', first=10**15):
  """(parsed writer schema, records) of ``alert_files``' stream."""
  import fastavro  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(ALERT_SAMPLES):
    raise utils.UserError(f'bench alerts reads real packets from {ALERT_SAMPLES}: not found')
  with open(ALERT_SAMPLES, 'rb') as f:
    r = fastavro.reader(f)
    schema = fastavro.parse_schema(r.writer_schema)
    templates = [t for t in r if _finite_stamp(t)]
  recs = []
  for e in range(num_epochs):
    for o in range(num_objects):
      rec = copy.deepcopy(templates[(o + e) % len(templates)])
      rec['objectId'] = f'{prefix}{o:07d}'
      rec['candid'] = rec['candidate']['candid'] = first + num_epochs * o + e
      c = rec['candidate']
      c['jd'], c['fid'], c['fwhm'] = 2459000.5 + 0.7 * e + 1e-5 * o, 1 + e % 2, 2.0
      recs.append(rec)
  return schema, recs


def _finite_stamp(rec):
  import gzip  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top

  from astropy.io import fits  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    d = fits.open(io.BytesIO(gzip.decompress(rec['cutoutScience']['stampData'])))[0].data
  return bool(np.all(np.isfinite(d)))


def bench_alerts(_):
  """End to end over real ZTF packets: ``serving.alerts.pipeline.classify_files`` (Avro decoding,
  cutouts, SQLite state read and write in one transaction per chunk, ``Classifier.update``
  batched over --alert_slots objects) on --alert_objects x --alert_epochs alerts, after a
  warm-up run that compiles the update; then the latency of one alert (decode, one-alert
  transaction, model call) for an object with history, at --alert_slots and at 1 slot.
  Random initial parameters of configs/ztf.py (--config_arg variant), or --workdir's model."""
  import io  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  from configs import ztf  # pylint: disable=g-import-not-at-top
  from rcnn_jax import models  # lazy: per benchmark
  from rcnn_jax.serving.alerts import engine as engine_lib  # lazy: per benchmark
  from rcnn_jax.serving.alerts import pipeline  # lazy: per benchmark
  from rcnn_jax.serving.alerts import reader  # lazy: per benchmark
  from rcnn_jax.serving.alerts import state as state_lib  # lazy: per benchmark
  from rcnn_jax.serving.classifier import Classifier  # lazy: per benchmark
  if _WORKDIR.value:
    clf = Classifier.from_workdir(_WORKDIR.value)
  else:
    config = ztf.get_config(_CONFIG_ARG.value)
    model = models.build_model(config.model, len(config.sim.class_names))
    s, n_w, nb = int(config.sim.stamp_size), int(config.sim.n_w), len(config.survey.bands)
    width = n_w + (n_w * nb if nb > 1 else 0)
    v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 1, s, s, n_w)),
                                     jnp.zeros((1, 1, width)), jnp.ones((1, 1), bool)))(
                                         jax.random.key(0))
    clf = Classifier(config, v['params'], v['batch_stats'])
  if _ALERT_KAFKA.value:
    return bench_alerts_kafka(clf, v if not _WORKDIR.value else None)
  slots, n_obj, n_ep = _ALERT_SLOTS.value, _ALERT_OBJECTS.value, _ALERT_EPOCHS.value
  with tempfile.TemporaryDirectory(prefix='bench_alerts_') as tmp:
    # Warm-up: n_w alerts per object, so that both jitted calls compile (the window shift of
    # the warm-up alerts, the model's update of the n_w-th).
    warm = alert_files(os.path.join(tmp), min(n_obj, slots), clf.n_w)
    t0 = time.perf_counter()
    store = state_lib.Store(os.path.join(tmp, 'warm.db'))
    pipeline.classify_files(clf, store, warm, os.path.join(tmp, 'warm.csv'), slots=slots,
                           progress=False, stderr=io.StringIO())
    store.close()
    compile_s = time.perf_counter() - t0
    data = os.path.join(tmp, 'stream')
    os.makedirs(data)
    files = alert_files(data, n_obj, n_ep)
    store = state_lib.Store(os.path.join(tmp, 'state.db'))
    store.bind(state_lib.model_identity(clf))
    summ = pipeline.classify_files(clf, store, files, os.path.join(tmp, 'out.csv'),
                                  slots=slots, progress=False, stderr=io.StringIO())
    wall = summ['seconds']
    timers = dict(summ['timers'])
    timers['csv_and_other'] = wall - sum(timers.values())
    rate = summ['rows'] / wall
    db_bytes = os.path.getsize(os.path.join(tmp, 'state.db'))
    cfg = {'objects': n_obj, 'alerts_per_object': n_ep, 'slots': slots,
           'stamp_size': clf.stamp_size, 'n_w': clf.n_w, 'filters': clf.config.model.filters,
           'lstm_size': clf.config.model.lstm_size, 'conv_impl': clf.config.model.conv_impl,
           'parameters': f'trained ({_WORKDIR.value})' if _WORKDIR.value else 'random',
           'statuses': summ['counts']}
    emit('alerts', rate, 'alerts_per_s', config=cfg, compile_s=round(compile_s, 2),
         seconds=round(wall, 2), rows=summ['rows'],
         breakdown_s={k: round(v, 3) for k, v in timers.items()},
         breakdown_ms_per_alert={k: round(1e3 * v / summ['rows'], 4) for k, v in timers.items()},
         vs_rubin_largest_visit=round(rate / RUBIN_VISIT_RATE, 4),
         state_db_bytes_per_object=round(db_bytes / n_obj))
    # Latency: one alert of an object with history, from its own file (Avro decoding, cutout,
    # one transaction, the model call), at --alert_slots slots and at 1.
    spec = reader.StampSpec.from_config(clf.config)
    os.makedirs(os.path.join(tmp, 'one'))
    one = alert_files(os.path.join(tmp, 'one'), 1, n_ep + 30, per_file=1)
    for k in (slots, 1):
      st = state_lib.Store(os.path.join(tmp, f'latency_{k}.db'))
      eng = engine_lib.Engine(clf, st, slots=k)
      eng.process([next(reader.read_epochs(f, spec)) for f in one[:n_ep]])  # history, compile
      times = []
      for f in one[n_ep:]:
        t0 = time.perf_counter()
        eng.process([next(reader.read_epochs(f, spec))])
        times.append(time.perf_counter() - t0)
      st.close()
      emit('alerts_latency', 1e3 * float(np.median(times[5:])), 'ms',
           config={'slots': k, 'history_alerts': n_ep}, best_ms=round(1e3 * min(times), 2),
           alerts=len(times) - 5)


# What the bench produces ahead of the group's commits, a partition, against librdkafka's mock
# (which keeps 5 MiB a partition, rdkafka_mock.c; the consumers' prefetch holds the rest).
MOCK_BACKLOG_BYTES = 12 * 2**20


def _produce_paced(producer, topic, group, messages, budget, conf):
  """Produces ``messages`` to ``topic`` in order; returns the seconds it took. Without
  ``budget``: at once (librdkafka's partitioner). With ``budget`` (bytes): each message to
  partition CRC-32(key) mod P, and only while that partition's bytes past ``group``'s committed
  offset plus the bytes not yet acknowledged (of any partition: bursts stay small) stay within
  ``budget``; else the stream waits for the consumers' commits."""
  import collections  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top

  import confluent_kafka  # pylint: disable=g-import-not-at-top
  held = collections.defaultdict(collections.deque)  # partition -> (offset, bytes) uncommitted
  ahead = collections.defaultdict(int)  # partition -> bytes acknowledged and not committed
  pending = [0]  # bytes produced, not acknowledged yet

  def delivered(err, msg):
    pending[0] -= len(msg.value())
    if err is None:
      held[msg.partition()].append((msg.offset(), len(msg.value())))
      ahead[msg.partition()] += len(msg.value())

  def produce(k, v, **kw):
    while True:
      try:
        producer.produce(topic, key=k, value=v, on_delivery=delivered, **kw)
        pending[0] += len(v)
        return
      except BufferError:
        producer.poll(0.05)

  t0 = time.time()
  if not budget:
    for k, v in messages:
      produce(k, v)
    producer.flush(600)
    return time.time() - t0
  watcher = confluent_kafka.Consumer(dict(conf, **{'group.id': group}))
  try:
    md = watcher.list_topics(topic, timeout=10).topics[topic]
    parts = [confluent_kafka.TopicPartition(topic, q) for q in sorted(md.partitions)]
    for k, v in messages:
      q = zlib.crc32(k) % len(parts)
      since = time.time()
      while True:
        producer.poll(0)
        if ahead[q] + pending[0] + len(v) <= budget or ahead[q] + pending[0] == 0:
          break
        if time.time() - since > 300:
          raise utils.UserError(f'bench alerts --kafka: group {group} committed nothing for '
                                '300 s (are its consumers running?)')
        for tp in watcher.committed(parts, timeout=10):
          done = held[tp.partition]
          while done and tp.offset >= 0 and done[0][0] < tp.offset:
            ahead[tp.partition] -= done.popleft()[1]
        time.sleep(0.005)
      produce(k, v, partition=q)
    producer.flush(600)
  finally:
    watcher.close()
  return time.time() - t0


def bench_alerts_kafka(clf, variables):
  """``bench alerts --kafka``: the --alert_objects x --alert_epochs stream of ``alert_files``
  as one Avro container per message keyed by object id, consumed by --alert_consumers
  processes of ``python -m rcnn_jax.alerts --kafka`` in one group (consume, decode, cutout,
  state, model, produce the classifications), the state in SQLite (one file shared by the
  group's processes) and, with --alert_postgres, in PostgreSQL. Each run first sends n_w alerts
  of 64 other objects and waits for their classifications (the processes have then joined the
  group and compiled), then times from the first produce of the stream to the last chunk
  written. alerts/s beside Rubin's largest visit; ms per alert per stage (summed over the
  processes: with two processes on two cores, per-stage times add up to twice the wall time).

  ``--kafka`` alone: librdkafka's mock cluster (``serving.alerts.mockkafka``: a process on
  loopback, not a real broker). It keeps only 5 MiB a partition and deletes older messages
  (experiments/alerts_kafka/), so the stream is produced at most MOCK_BACKLOG_BYTES a partition
  ahead of the group's committed offsets (``_produce_paced``; the consumers prefetch what is
  produced within milliseconds, so nothing unread is deleted: the run checks that every alert
  came out), and
  the consumers set fetch.wait.max.ms=10 (the mock answers an empty long poll only after it,
  even when messages arrive). ``--kafka HOST:PORT``: a real cluster; the stream is produced at
  once (a backlog) to topics of 4 partitions the bench creates and deletes."""
  import io  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import uuid  # pylint: disable=g-import-not-at-top

  import confluent_kafka  # pylint: disable=g-import-not-at-top
  from confluent_kafka import admin as kafka_admin  # pylint: disable=g-import-not-at-top
  import fastavro  # pylint: disable=g-import-not-at-top

  from rcnn_jax.serving import shipped  # lazy: per benchmark
  from rcnn_jax.serving.alerts import sources  # lazy: per benchmark
  slots, n_obj, n_ep = _ALERT_SLOTS.value, _ALERT_OBJECTS.value, _ALERT_EPOCHS.value
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, RCNN_JAX_KAFKA_SESSION_TIMEOUT_MS='10000')
  on_mock = _ALERT_KAFKA.value == 'mock'
  nonce = int.from_bytes(os.urandom(2), 'big') % 9000  # this invocation's object and alert ids
  extra = ['fetch.wait.max.ms=10'] if on_mock else list(_ALERT_KAFKA_CONFIG.value)

  def messages(prefix, num_objects, num_epochs, first):
    schema, recs = alert_records(num_objects, num_epochs, prefix=prefix, first=first)
    out = []
    for r in recs:
      buf = io.BytesIO()
      fastavro.writer(buf, schema, [r])
      out.append((r['objectId'].encode(), buf.getvalue()))
    return out

  def count(conf, topic, want, timeout, procs):
    c = confluent_kafka.Consumer(dict(conf, **{'group.id': 'bench-reader'}))
    t0, n = time.time(), 0
    while time.time() - t0 < timeout:
      md = c.list_topics(topic, timeout=10).topics.get(topic)
      if md is not None and md.partitions and md.error is None:
        c.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                  for p in md.partitions])
        break
      time.sleep(0.2)
    while n < want and time.time() - t0 < timeout and all(p.poll() is None for p in procs):
      n += sum(1 for m in c.consume(500, timeout=0.5) if not m.error())
    c.close()
    return n

  with tempfile.TemporaryDirectory(prefix='bench_alerts_kafka_') as tmp:
    workdir = _WORKDIR.value
    if not workdir:
      workdir = os.path.join(tmp, 'model')
      shipped.save(workdir, clf.config, variables['params'], variables['batch_stats'], step=0,
                   source='random init (bench alerts --kafka)', dtype='float32')
    mock = admin = None
    if on_mock:
      mock = subprocess.Popen([sys.executable, '-m', 'rcnn_jax.serving.alerts.mockkafka'],
                              cwd=root, env=env, stdout=subprocess.PIPE, text=True)
      bootstrap = mock.stdout.readline().strip()
      conf = {'bootstrap.servers': bootstrap}
    else:
      bootstrap = _ALERT_KAFKA.value
      conf = sources.kafka_config(bootstrap, extra)
      sources.check_reachable(conf, None, 10.0)
      admin = kafka_admin.AdminClient(conf)
    made = []
    try:
      producer = confluent_kafka.Producer(dict(conf, **{'linger.ms': 5,
                                                        'queue.buffering.max.kbytes': 2**21}))
      backends = [('sqlite', None)] + ([('postgresql', _ALERT_POSTGRES.value)]
                                       if _ALERT_POSTGRES.value else [])
      for run, (backend, n_proc) in enumerate((b, int(n)) for b, _ in backends
                                              for n in _ALERT_CONSUMERS.value):
        state = dict(backends)[backend] or os.path.join(tmp, f'state_{run}.db')
        topic, out_topic = f'alerts-{uuid.uuid4().hex[:8]}', f'out-{uuid.uuid4().hex[:8]}'
        if admin is not None:
          made += [topic, out_topic, f'{out_topic}.dead_letter']
          for t, f in admin.create_topics([kafka_admin.NewTopic(t, 4)
                                           for t in made[-3:]]).items():
            try:
              f.result(timeout=15)
            except (confluent_kafka.KafkaException, TimeoutError) as e:
              print(f'warning: bench alerts --kafka: topic {t} not created ({e!r}); relying '
                    "on the cluster's automatic topic creation", file=sys.stderr)
        # Ids new to any state (a PostgreSQL database given again, run after run): alerts
        # already in a state are not published again, and the warm-up would wait for nothing.
        base = 10**9 * (100 * nonce + run)
        warm = messages(f'ZTFwarm{nonce:04d}r{run:02d}', 64, clf.n_w, 10**15 + base)
        main = messages(f'ZTFbench{nonce:04d}r{run:02d}', n_obj, n_ep, 2 * 10**15 + base)
        for k, v in warm:
          producer.produce(topic, key=k, value=v)
        producer.flush(60)
        stats = [os.path.join(tmp, f'stats_{run}_{i}.json') for i in range(n_proc)]
        procs = [subprocess.Popen(
            [sys.executable, '-m', 'rcnn_jax.alerts', '--workdir', workdir, '--state', state,
             '--kafka', bootstrap, '--topic', topic, '--group', f'bench{run}', '--out_topic',
             out_topic, '--batch', str(slots), '--idle_exit', '6', '--stats_json', s,
             '--progress_every', '0'] + [f'--kafka_config={kv}' for kv in extra], cwd=root,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for s in stats]
        got = count(conf, out_topic, len(warm), 600, procs)
        if got < len(warm):
          raise utils.UserError(f'bench alerts --kafka: {got} of {len(warm)} warm-up '
                                'classifications: ' + procs[0].stderr.read()[-500:])
        t0 = time.time()
        produced_s = _produce_paced(producer, topic, f'bench{run}', main,
                                    MOCK_BACKLOG_BYTES if on_mock else 0, conf)
        for p in procs:
          _, err = p.communicate(timeout=3600)
          if p.returncode != 0:
            raise utils.UserError(f'bench alerts --kafka: a consumer failed: {err[-500:]}')
        summ = []
        for s in stats:
          with open(s) as f:
            summ.append(json.load(f))
        rows = sum(x['rows'] for x in summ)
        wall = max(x['t_last_rows'] for x in summ) - t0
        done = rows - len(warm)  # the stream's alerts handled
        if done != len(main):
          print(f'warning: bench alerts --kafka: {done} of the stream\'s {len(main)} alerts '
                'came out (the rate below is of those)', file=sys.stderr)
        rate = done / wall
        timers = {}
        for x in summ:
          for k, v in x['timers'].items():
            timers[k] = timers.get(k, 0.0) + v
        compile_s = timers.pop('compile', 0.0)
        idle_s = timers.pop('wait', 0.0)  # empty polls (the stream not there yet), summed
        emit('alerts_kafka', rate, 'alerts_per_s',
             config={'objects': n_obj, 'alerts_per_object': n_ep, 'slots': slots,
                     'consumers': n_proc, 'state': backend, 'stamp_size': clf.stamp_size,
                     'n_w': clf.n_w, 'lstm_size': clf.config.model.lstm_size,
                     'parameters': f'trained ({_WORKDIR.value})' if _WORKDIR.value
                     else 'random',
                     'broker': "librdkafka's mock cluster (loopback), not a Kafka broker"
                     if on_mock else bootstrap, 'kafka_config': extra,
                     'produced': f'in order, at most {MOCK_BACKLOG_BYTES >> 20} MiB '
                     'a partition (unacknowledged included) past the committed offsets'
                     if on_mock else 'at once',
                     'message_bytes_mean': round(sum(len(v) for _, v in main) / len(main))},
             seconds=round(wall, 2), produce_s=round(produced_s, 2), rows=rows,
             stream_alerts=len(main), stream_alerts_handled=done,
             compile_s=round(compile_s, 2), idle_wait_s=round(idle_s, 2),
             breakdown_ms_per_alert={k: round(1e3 * v / rows, 4) for k, v in timers.items()},
             vs_rubin_largest_visit=round(rate / RUBIN_VISIT_RATE, 4),
             load_average=[round(x, 2) for x in os.getloadavg()])
      del producer  # before the cluster goes: no reconnection messages
    finally:
      if admin is not None and made:
        for f in admin.delete_topics(made, operation_timeout=10).values():
          try:
            f.result(timeout=15)
          except (confluent_kafka.KafkaException, TimeoutError):
            pass  # a cluster that refuses deletions keeps the bench's topics
      if mock is not None:
        mock.terminate()
        mock.wait(timeout=30)


BENCHES = {'simulate': bench_simulate, 'train': bench_train, 'inference': bench_inference,
           'alerts': bench_alerts}


def main(argv):
  names = argv[1:] or list(BENCHES)
  for n in names:
    if n not in BENCHES:
      raise utils.UserError(f'unknown benchmark {n!r}; choose from {", ".join(BENCHES)}')
  config_check.validate(hits.get_config(_CONFIG_ARG.value))
  for n in names:
    BENCHES[n](hits.get_config(_CONFIG_ARG.value))
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in _RESULTS)


def _bare_kafka(argv):
  """``--kafka`` with no value (the last word, or followed by a flag or a benchmark name) is
  ``--kafka=mock``: the flag takes HOST:PORT, and alone means the mock cluster."""
  out = list(argv)
  for i, a in enumerate(out):
    if a == '--kafka' and (i + 1 == len(out) or out[i + 1].startswith('-') or
                           out[i + 1] in BENCHES):
      out[i] = '--kafka=mock'
  return out


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  sys.argv = _bare_kafka(sys.argv)
  _define_flags()
  utils.run(main)
