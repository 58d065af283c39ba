"""DenseCRF throughput: images/s per worker count and label count, and the VOC train_aug projection.

    python bench/crf.py                       # 500x375, 3 and 21 labels, 1 and 2 workers
    python bench/crf.py --images 16 --cores 8,16,64

3 labels is background + the present classes of a typical VOC image (what the crf stage runs);
21 is every VOC label (what a CRF over all classes would cost). Each run goes through
crf.run_crf (process pool, PNG writing), pool start-up included. Prints a table and one JSON line.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default
from recurseed_jax import cli
from recurseed_jax import crf
from recurseed_jax import host_info

VOC_TRAIN_AUG = 10582


def scene(seed, h=375, w=500, labels=3):
  """An image of flat regions with noise and a blurred, noisy seed over `labels` labels."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  truth = np.zeros((h, w), np.int64)
  for k in range(1, labels):
    cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 8, h // 3)
    truth[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
  colours = rng.integers(0, 256, (labels, 3)).astype(np.float32)
  image = np.clip(colours[truth] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
  seed_map = np.full((h, w, labels), 0.2, np.float32)
  seed_map[yy, xx, truth] = 0.6
  seed_map += rng.uniform(0, 0.8, seed_map.shape).astype(np.float32)
  return image, seed_map / seed_map.sum(-1, keepdims=True)


def run_case(labels, workers, images, size):
  h, w = size
  items = [(f'img{i:04d}',) + scene(i, h, w, labels) + (np.arange(labels),)  # bg + classes
           for i in range(images)]
  params = crf.crf_params_from_config(default.get_config().crf)
  with tempfile.TemporaryDirectory() as out:
    t0 = time.perf_counter()
    stats = crf.run_crf(items, out, params=params, workers=workers, desc=f'{labels} labels')
    seconds = time.perf_counter() - t0
  assert stats['written'] == images
  return images / seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=8, help='images per case')
  parser.add_argument('--size', default='375x500', help='HxW')
  parser.add_argument('--labels', default='3,21')
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--cores', default='1,2,8,16,32', help='core counts for the projection')
  args = parser.parse_args(argv)
  size = cli.parse_hw(args.size)
  rows = []
  for labels in [int(v) for v in args.labels.split(',')]:
    for workers in [int(v) for v in args.workers.split(',')]:
      rate = run_case(labels, workers, args.images, size)
      rows.append(dict(labels=labels, workers=workers, images_per_s=round(rate, 3),
                       seconds_per_image_per_worker=round(max(workers, 1) / rate, 3)))
  print(f'\nDenseCRF at {size[1]}x{size[0]} ({os.cpu_count()} cores on this machine)')
  print('| labels | workers | images/s | s per image per worker |')
  print('|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['labels']} | {r['workers']} | {r['images_per_s']:.2f} | "
          f"{r['seconds_per_image_per_worker']:.2f} |")
  # Projection from the one-worker rate (a worker per core scales linearly until memory
  # bandwidth binds, which a 2-core machine cannot show).
  projection = {}
  for r in rows:
    if r['workers'] == 1:
      projection[r['labels']] = {
          n: round(VOC_TRAIN_AUG / (r['images_per_s'] * n) / 3600, 2)
          for n in [int(v) for v in args.cores.split(',')]}
  for labels, hours in projection.items():
    text = ', '.join(f'{n} cores {h:.2f} h' for n, h in hours.items())
    print(f'VOC train_aug ({VOC_TRAIN_AUG} images), {labels} labels: {text}')
  print(json.dumps(dict(bench='crf', size=size, rows=rows, voc_train_aug_hours=projection,
                        machine=host_info.describe())))


if __name__ == '__main__':
  cli.run(main)
