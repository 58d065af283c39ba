"""Seeds step: XLA's memory plan per image, the batch that fits, images/s, bf16, overlap.

    python bench/infer.py                                  # the demo network, 64x64, on CPU
    python bench/infer.py --preset r50 --size 375x500 --bucket 512x512 --batch 2 --images 4 \
        --unrolled --budget-gib 24 --agreement    # docs/benchmarks.md's figures
    python bench/infer.py --config voc12_multistage_v3p --segmenter --bucket 512x512 --plan-only
    python bench/infer.py --overlap --xla-threads 1 --crf-workers 1    # a 2-core machine
    python bench/infer.py --overlap --simulate-ms 250 --size 240x320   # the pipeline alone
    python bench/infer.py --images 96 --streams 2          # two batches at once (infer.streams)

The step is the stage's (infer.step_from_config: multi-scale + flip, seeds of the kept classes, the
config's interpolation and infer.dtype; --segmenter: the predict stage's make_segmenter_step on
config_lib.predict_config's network) with a randomly initialised network (speed and memory do not
depend on the weights), over synthetic images of one size padded to one bucket.

Memory: XLA's plan of each jitted part of the step (infer.memory_plan: compiled ahead of time,
nothing runs, no accelerator needed), at batches 1 and 2: the per-image figures are the
difference, the fixed ones (the variables) the rest; --unrolled plans the one-function step too
(every pass alive at once: the 'before'). live = arguments + outputs - donated + temporaries +
the step's other inputs the caller holds, for the part that peaks. --budget-gib: the largest
batch whose planned live fits (checked by compiling at that batch), and the largest that still
fits with the next batch in flight (run_split dispatches batch k + 1 while batch k runs: its
inputs and running sums are allocated, and batch k - 1's outputs await their copy to the host).
Run: the compile of every part (ahead of time, at --batch) and the first batch apart, then
images/s; on a GPU, memory_stats()'s peak_bytes_in_use over the run. --streams N,...: the same
run with N batches computed at once from N host threads (run_split's streams), and whether its
seeds are bit-identical to one stream's. --agreement: bf16 against
float32 pseudo masks of the bench's network with its segmentation classifier fitted to synthetic
scenes (bench/fitted_seeds.py). Overlap: the same seeds (made into CRF items) alone, the CRF of
those items alone (crf.run_crf), then both at once as the seeds+crf stage runs them; the ratio of
the last to the slower of the first two is what the design promises to keep <= 1.1. On a
CPU-only machine the "device" is the same cores the CRF uses: give each its own (--xla-threads,
--crf-workers), or check the pipeline alone with --simulate-ms.
Prints tables and one JSON line.

The top level stays light (heavy imports happen in `main`): the CRF pool's spawned workers
re-import this file, as they re-import launch.py in a real run.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recurseed_jax import cli  # os and sys only: jax is imported after the XLA flags are set
from recurseed_jax import host_info  # os and sys only

VOC_TRAIN_AUG = 10582
GIB = 2**30
PRESETS = {
    'demo': {},
    'r50': dict(stage_sizes=(3, 4, 6, 3), width=64, output_stride=16, aspp_channels=256,
                aspp_rates=(6, 12, 18), low_level_channels=256, decoder_channels=256),
    'r101': dict(stage_sizes=(3, 4, 23, 3), width=64, output_stride=16, aspp_channels=256,
                 aspp_rates=(6, 12, 18), low_level_channels=256, decoder_channels=256),
}


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='demo', choices=tuple(PRESETS))
  parser.add_argument('--config', default='',
                      help='a configs/ module (e.g. voc12_rs50) instead of --preset')
  parser.add_argument('--segmenter', action='store_true',
                      help="the predict stage's step on the config's segmenter")
  parser.add_argument('--predictions', action='store_true',
                      help="the seeds stage's val / test step (classes by threshold, no labels)")
  parser.add_argument('--classes', type=int, default=0, help="0: 20, or the --config's")
  parser.add_argument('--size', default='64x64', help='image HxW')
  parser.add_argument('--bucket', default='', help='bucket HxW (default: the image size)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--images', type=int, default=32)
  parser.add_argument('--labels', type=int, default=2, help='present classes per image')
  parser.add_argument('--scales', default='', help="e.g. 1.0,0.5,1.5,2.0 (default: config's)")
  parser.add_argument('--dtype', default='', choices=('', 'float32', 'bfloat16'),
                      help="config.infer.dtype (default: the config's)")
  parser.add_argument('--unrolled', action='store_true',
                      help='also plan the one-function step (every pass alive at once)')
  parser.add_argument('--budget-gib', type=float, default=24.0,
                      help='find the largest batch whose plan fits (0: skip)')
  parser.add_argument('--plan-only', action='store_true', help='memory plans only, no run')
  parser.add_argument('--streams', default='', help='e.g. 2,3: also run with that many batches '
                      'computed at once (config.infer.streams)')
  parser.add_argument('--agreement', action='store_true',
                      help='bf16 against float32 pseudo masks on fitted synthetic scenes')
  parser.add_argument('--agreement-sizes', default='150x200,127x200')
  parser.add_argument('--overlap', action='store_true', help='also time seeds + CRF together')
  parser.add_argument('--crf-workers', type=int, default=1)
  parser.add_argument('--crf-iterations', type=int, default=10)
  parser.add_argument('--xla-threads', type=int, default=0,
                      help='CPU backend: intra-op threads (0 = XLA default)')
  parser.add_argument('--simulate-ms', type=float, default=0,
                      help='instead of the network, a device sleeping this long per image')
  args = parser.parse_args(argv)
  if args.overlap and (args.segmenter or args.predictions):
    parser.error('--overlap times the seeds and their CRF: not with --segmenter / --predictions')
  return args


def _modules():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bench import fitted_seeds
  from configs import default
  from data_pipeline import splits
  from recurseed_jax import config_lib
  from recurseed_jax import crf
  from recurseed_jax import infer
  from recurseed_jax import models
  from recurseed_jax import parallel
  return types.SimpleNamespace(jax=jax, jnp=jnp, np=np, default=default, splits=splits, crf=crf,
                               infer=infer, models=models, parallel=parallel,
                               config_lib=config_lib, fitted_seeds=fitted_seeds)


def make_split(m, n, size, num_classes, labels, seed=0):
  rng = m.np.random.default_rng(seed)
  images = rng.integers(0, 256, (n,) + size + (3,), dtype=m.np.uint8)
  lab = m.np.zeros((n, num_classes), m.np.float32)
  for i in range(n):
    lab[i, rng.choice(num_classes, labels, replace=False)] = 1.0
  return m.splits.ArraySplit([f'im{i:05d}' for i in range(n)], images, lab)


def make_config(m, args):
  """The benchmarked config: a preset on the demo config, or a configs/ module's (--config)."""
  if args.config:
    cfg = importlib.import_module(f'configs.{args.config}').get_config()
    if args.segmenter:
      cfg = m.config_lib.predict_config(cfg)
  else:
    cfg = m.default.get_config()
    for key, value in PRESETS[args.preset].items():
      cfg.model[key] = value
    if args.segmenter:
      cfg.model.network = 'deeplab'
      cfg.infer.interpolation = 'bilinear'
  with cfg.unlocked():
    if args.scales:
      cfg.infer.scales = tuple(float(s) for s in args.scales.split(','))
    if args.dtype:
      cfg.infer.dtype = args.dtype
  return cfg


def num_classes_of(args, cfg):
  return args.classes or (cfg.data.num_classes if args.config else 20)


def build(m, args, cfg):
  """The model, its abstract variables, and step(unrolled) -> the stage's step."""
  classes = num_classes_of(args, cfg)
  model = m.models.builder(cfg.model.network)(cfg.model, classes)
  shapes = m.jax.eval_shape(lambda k: model.init(k, m.jnp.zeros((1, 64, 64, 3)), train=False),
                            m.jax.random.key(0))

  def step(unrolled=False):
    kept = None if args.segmenter or args.predictions else args.labels
    return m.infer.step_from_config(cfg, model, num_kept=kept, segmenter=args.segmenter,
                                    unrolled=unrolled)

  return model, shapes, step


# --- memory plans ------------------------------------------------------------------------------
def plan(m, step, shapes, batch, bucket, classes, without_labels):
  """infer.memory_plan of `step` for a batch of `batch` images in `bucket`; and its seconds."""
  sd = m.jax.ShapeDtypeStruct
  labels = None if without_labels else sd((batch, classes), m.jnp.float32)
  t0 = time.perf_counter()
  rows = m.infer.memory_plan(step, shapes, sd((batch,) + bucket + (3,), m.jnp.uint8),
                             sd((batch, 2), m.jnp.int32), labels)
  return rows, time.perf_counter() - t0


def _unlabelled(args):
  """The step runs without labels: the segmenter's, or the val / test predictions."""
  return args.segmenter or args.predictions


def peak_part(rows):
  return max(rows, key=lambda r: r['live'])


def in_flight(rows):
  """Bytes the pipeline adds beside the running batch: the next batch's inputs, normalised
  images and running sums, and the previous batch's outputs (see the module docstring)."""
  by = {r['part']: r for r in rows}
  passes = [r for r in rows if r['part'].startswith('pass')]
  sums = passes[0]['alias'] or passes[0]['output']
  return (by['normalise']['argument'] + by['normalise']['output'] + sums +
          by['products']['output'])


def summary(rows1, rows2):
  """Per-image and fixed bytes of the peaking part (from batches 1 and 2), and in flight."""
  name = peak_part(rows2)['part']
  r1, r2 = (next(r for r in rows if r['part'] == name) for rows in (rows1, rows2))
  keys = ('temp', 'argument', 'output', 'alias', 'held', 'live')
  per = {k: r2[k] - r1[k] for k in keys}
  fixed = {k: r1[k] - per[k] for k in keys}
  flight = in_flight(rows2) - in_flight(rows1)
  return dict(part=name, per_image=per, fixed=fixed, in_flight_per_image=flight,
              max_temp_per_image=max(r['temp'] for r in rows2) / 2)


def fit_batch(plan_at, s, budget, extra_per_image=0):
  """The largest batch whose plan (+ extra_per_image each) fits `budget` bytes, checked at it."""
  per = s['per_image']['live'] + extra_per_image
  batch = max(int((budget - s['fixed']['live']) // per), 0)
  while batch > 0:
    rows = plan_at(batch)
    live = peak_part(rows)['live'] + extra_per_image * batch
    if live <= budget:
      return batch, live
    batch -= 1
  return 0, None


def print_plans(label, rows, batch):
  print(f'\n{label}: XLA memory plan at batch {batch} (GiB; temp per image = temp / {batch})')
  print('| part | temporaries | per image | arguments | outputs | donated | held | live |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['part']} | {r['temp'] / GIB:.3f} | {r['temp'] / batch / GIB:.3f} | "
          f"{r['argument'] / GIB:.3f} | {r['output'] / GIB:.3f} | {r['alias'] / GIB:.3f} | "
          f"{r['held'] / GIB:.3f} | {r['live'] / GIB:.3f} |")


def memory_section(m, args, cfg, shapes, step_of, bucket):
  """Plans of the step (and the unrolled one), per image, and the batches that fit."""
  classes = num_classes_of(args, cfg)
  out = {}
  variants = [('in sequence', False)] + ([('one function', True)] if args.unrolled else [])
  for label, unrolled in variants:
    step = step_of(unrolled)
    rows1, compile_s = plan(m, step, shapes, 1, bucket, classes, _unlabelled(args))
    rows2, _ = plan(m, step, shapes, 2, bucket, classes, _unlabelled(args))
    print_plans(label, rows2, 2)
    s = summary(rows1, rows2)
    s['compile_s'] = round(compile_s, 2)  # every part, ahead of time, at batch 1
    if args.budget_gib:
      def plan_at(b, step=step):
        return plan(m, step, shapes, b, bucket, classes, _unlabelled(args))[0]
      budget = args.budget_gib * GIB
      s['batch_fits'], s['live_at_fit'] = fit_batch(plan_at, s, budget)
      s['batch_fits_pipelined'], s['live_pipelined'] = fit_batch(
          plan_at, s, budget, s['in_flight_per_image'])
    out[label] = s
  print(f'\nper image at the {bucket[0]}x{bucket[1]} bucket (GiB; the part that peaks; fixed: '
        'the variables and whatever does not grow with the batch)')
  print('| step | peaks in | temporaries | arguments | outputs | live | fixed | in flight | '
        f'batch fitting {args.budget_gib:g} GiB (pipelined) | compile s |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for label, s in out.items():
    p = s['per_image']
    fits = (f"{s['batch_fits']} ({s['batch_fits_pipelined']})" if args.budget_gib else 'n/a')
    print(f"| {label} | {s['part']} | {p['temp'] / GIB:.3f} | "
          f"{(p['argument'] - p['alias']) / GIB:.3f} | {(p['output'] - p['alias']) / GIB:.3f} | "
          f"{p['live'] / GIB:.3f} | {s['fixed']['live'] / GIB:.3f} | "
          f"{s['in_flight_per_image'] / GIB:.3f} | {fits} | {s['compile_s']:.1f} |")
  return out


BYTE_KEYS = ('temp', 'argument', 'output', 'alias', 'held', 'live', 'in_flight_per_image',
             'max_temp_per_image', 'live_at_fit', 'live_pipelined')


def _gib(tree):
  """The byte counts (BYTE_KEYS) of a nested dict in GiB, rounded, for the JSON line."""
  return {k: _gib(v) if isinstance(v, dict) else
          round(v / GIB, 4) if k in BYTE_KEYS and v is not None else v for k, v in tree.items()}


# --- agreement ---------------------------------------------------------------------------------
def agreement(m, args, cfg):
  """bf16 against float32 pseudo masks of the bench's network, its classifier fitted."""
  fs = m.fitted_seeds
  sizes = [cli.parse_hw(s, '--agreement-sizes') for s in args.agreement_sizes.split(',')]
  classes = max(num_classes_of(args, cfg), 3)
  acfg = cfg.copy_and_resolve_references()
  with acfg.unlocked():
    acfg.infer.buckets = (tuple(max(s[d] for s in sizes) for d in (0, 1)),)
    acfg.infer.batch_size = len(sizes)
    acfg.model.network = 'recurseed'
  model = m.models.build_model(acfg.model, classes)
  variables = m.jax.jit(lambda k: model.init(k, m.jnp.zeros((1, 64, 64, 3)), train=False))(
      m.jax.random.key(0))
  images, maps, labels = fs.scenes(sizes, classes)
  variables = fs.fit_seg_classifier(model, variables, images, maps, acfg.data.mean,
                                    acfg.data.std)
  t0 = time.perf_counter()
  res = fs.compare_dtypes(acfg, model, variables, fs.split_of(images, maps, labels))
  res['seconds'] = round(time.perf_counter() - t0, 1)
  res['sizes'] = sizes
  print(f"\nbf16 vs float32 pseudo masks ({len(sizes)} fitted scenes, {res['pixels']} pixels): "
        f"{100 * res['agreement']:.3f} % identical; against the scenes' masks float32 "
        f"{100 * res['truth']['float32']:.2f} %, bf16 {100 * res['truth']['bfloat16']:.2f} %; "
        f"largest seed difference {res['seed_diff']:.4f}")
  return res


# --- runs --------------------------------------------------------------------------------------
def simulated_items(m, split, batch, ms, labels, bg_power=2.0):
  """Seeds from a device that takes `ms` per image and leaves the host free (a sleep)."""
  rng = m.np.random.default_rng(0)
  for start in range(0, len(split), batch):
    time.sleep(ms / 1000 * batch)
    for i in range(start, min(start + batch, len(split))):
      image = split.image(i)
      scores = rng.integers(0, 256, image.shape[:2] + (labels,), dtype=m.np.uint8)
      yield split.ids[i], image, m.infer.host_seed(scores, bg_power), m.np.arange(labels + 1)


def seed_items(m, step, variables, split, bucket, batch, sharding, bg_power=2.0, args=None,
               streams=1):
  """The seeds stage's stream: run_split -> CRF items (id, image, seed, keys)."""
  if args is not None and args.simulate_ms:
    yield from simulated_items(m, split, batch, args.simulate_ms, args.labels, bg_power)
    return
  labelled = args is None or not _unlabelled(args)
  for i, image, out in m.infer.run_split(step, {'rs': variables}, split, range(len(split)),
                                         [bucket], batch, with_labels=labelled,
                                         sharding=sharding, streams=streams):
    res = out['rs']
    if 'probs' in res:  # the segmenter: its kept labels' mean softmax
      yield split.ids[i], image, res['probs'], res['channels']
      continue
    if 'pred' in res:  # val / test predictions: no seed
      yield split.ids[i], image, None, res['keep'] + 1
      continue
    labels = m.np.concatenate([[0], res['classes'] + 1])  # background + the kept classes
    yield split.ids[i], image, m.infer.host_seed(res['seg'], bg_power), labels


def time_step(m, args, step, variables, sharding, size, bucket, classes, streams=1):
  """Compile (every part, ahead of time), the first batch, then images/s and the GPU peak."""
  compile_s = None
  if step is not None and streams == 1:
    _, compile_s = plan(m, step, variables, args.batch, bucket, classes, _unlabelled(args))
  warm = make_split(m, args.batch, size, classes, args.labels, seed=1)
  t0 = time.perf_counter()
  for _ in seed_items(m, step, variables, warm, bucket, args.batch, sharding, args=args):
    pass
  first_s = time.perf_counter() - t0
  split = make_split(m, args.images, size, classes, args.labels)
  t0 = time.perf_counter()
  items = list(seed_items(m, step, variables, split, bucket, args.batch, sharding, args=args,
                          streams=streams))
  seconds = time.perf_counter() - t0
  device = m.jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  peak = stats.get('peak_bytes_in_use') if stats else None
  return dict(compile_s=None if compile_s is None else round(compile_s, 2),
              first_batch_s=round(first_s, 2), seconds=seconds,
              images_per_s=round(args.images / seconds, 3),
              gpu_peak_gib=None if peak is None else round(peak / GIB, 3)), split, items


def run_section(m, args, cfg, model, step_of, size, bucket, result):
  """time_step of the step (and, with --unrolled, then of the one-function step: the GPU peak
  only grows, so the second's is its own only when larger); the optional overlap."""
  if args.simulate_ms:
    variables, sharding, devices = None, None, 1
  else:
    variables = m.jax.jit(lambda k: model.init(k, m.jnp.zeros((1, 64, 64, 3)), train=False))(
        m.jax.random.key(0))
    mesh = m.parallel.make_mesh()
    sharding = m.parallel.batch_sharding(mesh) if mesh.size > 1 else None
    devices = mesh.size
    if sharding is not None:
      variables = m.parallel.replicate(variables, mesh)
  if args.batch % devices:
    raise ValueError(f'--batch={args.batch} must be a multiple of the {devices} devices')
  classes = num_classes_of(args, cfg)
  streams = [int(n) for n in args.streams.split(',') if n and int(n) > 1]
  variants = ([('in sequence', False, 1)] + [(f'{n} streams', False, n) for n in streams] +
              ([('one function', True, 1)] if args.unrolled else []))
  runs, seq = {}, None
  for label, unrolled, n in variants:  # n > 1 reuses one stream's step (compiled already)
    step = None if args.simulate_ms else step_of(unrolled) if n == 1 else seq[0]
    runs[label], split, items = time_step(m, args, step, variables, sharding, size, bucket,
                                          classes, streams=n)
    if label == 'in sequence':
      seq = (step, split, items, runs[label]['seconds'])
    elif n > 1 and not args.simulate_ms:  # the same batches: the same seeds, bit for bit
      runs[label]['bit_identical'] = all(
          a[0] == b[0] and m.np.array_equal(a[2], b[2]) for a, b in zip(items, seq[2]))
      runs[label]['speedup'] = round(seq[3] / runs[label]['seconds'], 2)
      print(f"{label}: {runs[label]['speedup']}x one stream's images/s, seeds "
            f"{'bit-identical' if runs[label]['bit_identical'] else 'DIFFERENT'}")
  device = m.jax.devices()[0]
  kind = device.device_kind if not args.simulate_ms else f'simulated {args.simulate_ms:g} ms/image'
  rate = runs['in sequence']['images_per_s']
  result.update(device=kind, devices=devices, run=runs, compile_s=runs['in sequence']['compile_s'],
                seeds_images_per_s=rate, seeds_images_per_s_per_device=round(rate / devices, 3),
                voc_train_aug_seed_hours=round(VOC_TRAIN_AUG / rate / 3600, 3),
                gpu_peak_gib=runs['in sequence']['gpu_peak_gib'])
  print(f'\nrun: {args.images} images of {size[0]}x{size[1]} in the {bucket[0]}x{bucket[1]} '
        f'bucket, batch {args.batch}, {devices} x {kind}')
  print('| step | compile s (every part) | first batch s | images/s | per device | '
        'VOC train_aug seeds h | GPU peak GiB |')
  print('|---|---|---|---|---|---|---|')
  for label, r in runs.items():
    peak = 'n/a (CPU)' if r['gpu_peak_gib'] is None else f"{r['gpu_peak_gib']:.2f}"
    print(f"| {label} | {_fmt(r['compile_s'])} | {r['first_batch_s']:.1f} | "
          f"{r['images_per_s']:.3f} | {r['images_per_s'] / devices:.3f} | "
          f"{VOC_TRAIN_AUG / r['images_per_s'] / 3600:.2f} | {peak} |")
  if args.overlap:
    step, split, items, seeds_s = seq
    overlap(m, args, cfg, step, variables, split, bucket, sharding, items, seeds_s, result)


def _fmt(value):
  return 'n/a' if value is None else f'{value:.1f}'


def overlap(m, args, cfg, step, variables, split, bucket, sharding, items, seeds_s, result):
  """Seeds alone, the CRF alone, then both at once as the seeds+crf stage runs them."""
  params = m.crf.crf_params_from_config(cfg.crf)
  params['iterations'] = args.crf_iterations
  kw = dict(params=params, workers=args.crf_workers, queue_size=cfg.crf.queue_size)
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    m.crf.run_crf(items, os.path.join(d, 'alone'), desc='crf alone', **kw)
    crf_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m.crf.run_crf(seed_items(m, step, variables, split, bucket, args.batch, sharding, args=args),
                  os.path.join(d, 'together'), desc='seeds+crf', total=args.images, **kw)
    both_s = time.perf_counter() - t0
  ratio = both_s / max(seeds_s, crf_s)
  result.update(seeds_alone_s=round(seeds_s, 2), crf_alone_s=round(crf_s, 2),
                together_s=round(both_s, 2), overlap_ratio=round(ratio, 3),
                crf_workers=args.crf_workers)
  print(f'  seeds alone {seeds_s:.1f} s, CRF alone ({args.crf_workers} workers) {crf_s:.1f} s, '
        f'together {both_s:.1f} s: {ratio:.2f} x the slower (target <= 1.1)')


def main(args):
  if args.xla_threads:  # before jax is imported
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen='
                               f'false intra_op_parallelism_threads={args.xla_threads}')
  m = _modules()
  size = cli.parse_hw(args.size)
  bucket = cli.parse_hw(args.bucket, '--bucket') if args.bucket else size
  cfg = make_config(m, args)
  model, shapes, step_of = build(m, args, cfg)
  result = dict(bench='infer', preset=args.config or args.preset, segmenter=args.segmenter,
                platform=m.jax.devices()[0].platform, size=size, bucket=bucket,
                batch=args.batch, scales=list(cfg.infer.scales), dtype=cfg.infer.dtype,
                interpolation=cfg.infer.interpolation, cores=os.cpu_count(),
                machine=host_info.describe())
  print(f"\nseeds step: {result['preset']}{' segmenter' if args.segmenter else ''}, bucket "
        f"{bucket[0]}x{bucket[1]}, scales {tuple(cfg.infer.scales)} + flip, "
        f"{cfg.infer.interpolation}, {cfg.infer.dtype}")
  if not args.plan_only:  # first: on a GPU the plans' compiles (autotuning) would raise the peak
    run_section(m, args, cfg, model, step_of, size, bucket, result)
  if not args.simulate_ms:
    result['memory'] = _gib(memory_section(m, args, cfg, shapes, step_of, bucket))
  if args.agreement:
    result['agreement'] = agreement(m, args, cfg)
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(lambda argv: main(_parse()))
