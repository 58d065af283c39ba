"""Seeds throughput per device, and the overlap of seed inference with the CRF pool.

    python bench/infer.py                                  # the demo network, 64x64, on CPU
    python bench/infer.py --preset r50 --size 375x500 --bucket 512x512 --batch 16 --images 256
    python bench/infer.py --overlap --xla-threads 1 --crf-workers 1    # a 2-core machine
    python bench/infer.py --overlap --simulate-ms 250 --size 240x320   # the pipeline alone

Seeds: infer.run_split with the stage's step (multi-scale + flip, seeds of the kept classes,
uint8) over synthetic images of one size padded to one bucket, with a randomly initialised
network (speed does not depend on the weights); the compile is timed apart. Overlap: the same
seeds (made into CRF items) alone, the CRF of those items alone (crf.run_crf), then both at once
as the seeds+crf stage runs them (the generator feeding the pool); the ratio of the last to the
slower of the first two is what the design promises to keep <= 1.1. On a CPU-only machine the
"device" is the same cores the CRF uses: give each its own (--xla-threads, --crf-workers), or
check the pipeline alone with --simulate-ms (seeds from a device that sleeps that long per image,
leaving the host free, as an accelerator does).
Prints a table and one JSON line.

The top level stays light (heavy imports happen in `main`): the CRF pool's spawned workers
re-import this file, as they re-import launch.py in a real run.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recurseed_jax import cli  # os and sys only: jax is imported after the XLA flags are set

VOC_TRAIN_AUG = 10582
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
  parser.add_argument('--classes', type=int, default=20)
  parser.add_argument('--size', default='64x64', help='image HxW')
  parser.add_argument('--bucket', default='', help='bucket HxW (default: the image size)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--images', type=int, default=32)
  parser.add_argument('--labels', type=int, default=2, help='present classes per image')
  parser.add_argument('--scales', default='1.0,0.5,1.5,2.0')
  parser.add_argument('--overlap', action='store_true', help='also time seeds + CRF together')
  parser.add_argument('--crf-workers', type=int, default=1)
  parser.add_argument('--crf-iterations', type=int, default=10)
  parser.add_argument('--xla-threads', type=int, default=0,
                      help='CPU backend: intra-op threads (0 = XLA default)')
  parser.add_argument('--simulate-ms', type=float, default=0,
                      help='instead of the network, a device sleeping this long per image')
  return parser.parse_args(argv)


def _modules():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs import default
  from data_pipeline import splits
  from recurseed_jax import crf
  from recurseed_jax import infer
  from recurseed_jax import models
  from recurseed_jax import parallel
  return types.SimpleNamespace(jax=jax, jnp=jnp, np=np, default=default, splits=splits, crf=crf,
                               infer=infer, models=models, parallel=parallel)


def make_split(m, n, size, num_classes, labels, seed=0):
  rng = m.np.random.default_rng(seed)
  images = rng.integers(0, 256, (n,) + size + (3,), dtype=m.np.uint8)
  lab = m.np.zeros((n, num_classes), m.np.float32)
  for i in range(n):
    lab[i, rng.choice(num_classes, labels, replace=False)] = 1.0
  return m.splits.ArraySplit([f'im{i:05d}' for i in range(n)], images, lab)


def build(m, args):
  """The config, the seeds step, variables, the batch sharding and the device count."""
  cfg = m.default.get_config()
  for key, value in PRESETS[args.preset].items():
    cfg.model[key] = value
  model = m.models.build_model(cfg.model, args.classes)
  size = cli.parse_hw(args.size)
  variables = m.jax.jit(lambda k: model.init(k, m.jnp.zeros((1,) + size + (3,)), train=False))(
      m.jax.random.key(0))
  scales = tuple(float(s) for s in args.scales.split(','))
  predict = m.infer.make_predict_fn(model, scales, True, align=cfg.model.output_stride)
  step = m.infer.make_infer_step(predict, cfg.data.mean, cfg.data.std, num_kept=args.labels)
  mesh = m.parallel.make_mesh()
  sharding = m.parallel.batch_sharding(mesh) if mesh.size > 1 else None
  if sharding is not None:
    variables = m.parallel.replicate(variables, mesh)
  return cfg, step, variables, sharding, mesh.size


def simulated_items(m, split, batch, ms, labels, bg_power=2.0):
  """Seeds from a device that takes `ms` per image and leaves the host free (a sleep)."""
  rng = m.np.random.default_rng(0)
  for start in range(0, len(split), batch):
    time.sleep(ms / 1000 * batch)
    for i in range(start, min(start + batch, len(split))):
      image = split.image(i)
      scores = rng.integers(0, 256, image.shape[:2] + (labels,), dtype=m.np.uint8)
      yield split.ids[i], image, m.infer.host_seed(scores, bg_power), m.np.arange(labels + 1)


def seed_items(m, step, variables, split, bucket, batch, sharding, bg_power=2.0, args=None):
  """The seeds stage's stream: run_split -> CRF items (id, image, seed, keys)."""
  if args is not None and args.simulate_ms:
    yield from simulated_items(m, split, batch, args.simulate_ms, args.labels, bg_power)
    return
  for i, image, out in m.infer.run_split(step, {'rs': variables}, split, range(len(split)),
                                         [bucket], batch, with_labels=True, sharding=sharding):
    res = out['rs']
    labels = m.np.concatenate([[0], res['classes'] + 1])  # background + the kept classes
    yield split.ids[i], image, m.infer.host_seed(res['seg'], bg_power), labels


def main(args):
  if args.xla_threads:  # before jax is imported
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen='
                               f'false intra_op_parallelism_threads={args.xla_threads}')
  m = _modules()
  size = cli.parse_hw(args.size)
  bucket = cli.parse_hw(args.bucket, '--bucket') if args.bucket else size
  cfg, step, variables, sharding, devices = build(m, args)
  if args.batch % devices:
    raise ValueError(f'--batch={args.batch} must be a multiple of the {devices} devices')
  warm = make_split(m, args.batch, size, args.classes, args.labels, seed=1)
  t0 = time.perf_counter()
  for _ in seed_items(m, step, variables, warm, bucket, args.batch, sharding, args=args):
    pass
  compile_s = time.perf_counter() - t0
  split = make_split(m, args.images, size, args.classes, args.labels)

  t0 = time.perf_counter()
  items = list(seed_items(m, step, variables, split, bucket, args.batch, sharding, args=args))
  seeds_s = time.perf_counter() - t0
  rate = args.images / seeds_s
  kind = m.jax.devices()[0].device_kind
  if args.simulate_ms:
    kind = f'simulated {args.simulate_ms:g} ms/image'
  result = dict(bench='infer', preset=args.preset, device=kind, devices=devices, size=size,
                bucket=bucket, batch=args.batch, scales=args.scales,
                compile_s=round(compile_s, 2), seeds_images_per_s=round(rate, 3),
                seeds_images_per_s_per_device=round(rate / devices, 3),
                voc_train_aug_seed_hours=round(VOC_TRAIN_AUG / rate / 3600, 3))
  print(f'\nseeds: {args.preset} net, {size[1]}x{size[0]} in a {bucket[1]}x{bucket[0]} bucket, '
        f'batch {args.batch}, scales {args.scales} + flip, {devices} x {kind}')
  print(f'  compile + first batch {compile_s:.1f} s; {rate:.2f} images/s '
        f'({rate / devices:.2f} per device); VOC train_aug seeds '
        f'{result["voc_train_aug_seed_hours"]:.2f} h')

  if args.overlap:
    params = m.crf.crf_params_from_config(cfg.crf)
    params['iterations'] = args.crf_iterations
    kw = dict(params=params, workers=args.crf_workers, queue_size=cfg.crf.queue_size)
    with tempfile.TemporaryDirectory() as d:
      t0 = time.perf_counter()
      m.crf.run_crf(items, os.path.join(d, 'alone'), desc='crf alone', **kw)
      crf_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      m.crf.run_crf(seed_items(m, step, variables, split, bucket, args.batch, sharding,
                               args=args),
                    os.path.join(d, 'together'), desc='seeds+crf', total=args.images, **kw)
      both_s = time.perf_counter() - t0
    ratio = both_s / max(seeds_s, crf_s)
    result.update(seeds_alone_s=round(seeds_s, 2), crf_alone_s=round(crf_s, 2),
                  together_s=round(both_s, 2), overlap_ratio=round(ratio, 3),
                  crf_workers=args.crf_workers)
    print(f'  seeds alone {seeds_s:.1f} s, CRF alone ({args.crf_workers} workers) {crf_s:.1f} s, '
          f'together {both_s:.1f} s: {ratio:.2f} x the slower (target <= 1.1)')
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(lambda argv: main(_parse()))
