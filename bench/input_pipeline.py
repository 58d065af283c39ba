"""Training input pipeline throughput (images/s) on generated VOC-sized JPEGs, per CPU core.

    python bench/input_pipeline.py [--images 96] [--steps 10] [--threads 1,2] [--sources files,tfds]

Writes a small VOC tree (500x375 JPEGs of textured shapes, masks, XML) into a temp folder, then
times configs/voc12_rs50.py's training stream (long side 320-640, flip, colour jitter, crop 512,
normalisation; batch 16) with tf.data limited to 1, 2, ... threads, from the files and from the
TFDS records. Prints a table and, last, one JSON line. Numbers depend on the machine and its
load: compare runs made on the same machine.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import voc12_rs50
from data_pipeline import providers
from data_pipeline import voc
from recurseed_jax import cli
from recurseed_jax import host_info


def make_tree(root, n, seed=0):
  """VOCdevkit/VOC2012 with n train_aug images of 500x375 (or 375x500) and 2 val images."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, 'VOCdevkit', 'VOC2012')
  for sub in ('JPEGImages', 'SegmentationClassAug', 'SegmentationClass', 'Annotations',
              os.path.join('ImageSets', 'Segmentation')):
    os.makedirs(os.path.join(base, sub), exist_ok=True)
  ids = [f'2008_{i:06d}' for i in range(n + 2)]
  for k, image_id in enumerate(ids):
    h, w = (375, 500) if k % 3 else (500, 375)
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([(xx + k * 7) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.float32)
    image += rng.normal(0, 12, image.shape)
    mask = np.zeros((h, w), np.uint8)
    c = int(rng.integers(20))
    cy, cx, r = rng.integers(100, 275), rng.integers(100, 275), rng.integers(40, 100)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    mask[inside] = c + 1
    image[inside] = rng.uniform(0, 255, 3)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
        os.path.join(base, 'JPEGImages', f'{image_id}.jpg'), quality=90)
    folder = 'SegmentationClassAug' if k < n else 'SegmentationClass'
    Image.fromarray(mask).save(os.path.join(base, folder, f'{image_id}.png'))
    with open(os.path.join(base, 'Annotations', f'{image_id}.xml'), 'w') as f:
      f.write(f'<annotation><object><name>{voc.CLASS_NAMES[c]}</name></object></annotation>')
  with open(os.path.join(base, 'ImageSets', 'Segmentation', 'val.txt'), 'w') as f:
    f.write('\n'.join(ids[n:]) + '\n')
  return root


def measure(provider, batch, steps, warmup=2):
  it = provider.train_batches()
  for _ in range(warmup):  # graph building, thread start-up, first file reads
    next(it)
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  return steps * batch / (time.perf_counter() - t0)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=96)
  parser.add_argument('--steps', type=int, default=10, help='timed batches per setting')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--threads', default='', help='comma-separated (default: 1 .. cores)')
  parser.add_argument('--sources', default='files,tfds')
  args = parser.parse_args(argv)
  cores = os.cpu_count() or 1
  threads = [int(t) for t in args.threads.split(',') if t] or sorted({1, cores})
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = make_tree(os.path.join(tmp, 'voc'), args.images)
    for source in [s for s in args.sources.split(',') if s]:
      for t in threads:
        cfg = voc12_rs50.get_config()
        cfg.data.root, cfg.data.source, cfg.data.threads = root, source, t
        cfg.data.cache_dir = os.path.join(tmp, 'cache')
        cfg.train.batch_size = args.batch
        provider = providers.build(cfg, os.path.join(tmp, 'work'))
        rate = measure(provider, args.batch, args.steps)
        rows.append(dict(source=source, threads=t, images_per_s=round(rate, 1),
                         images_per_s_per_thread=round(rate / t, 1)))
  print()
  print('| source | tf.data threads | images/s | images/s per thread |')
  print('|---|---|---|---|')
  for r in rows:
    print(f"| {r['source']} | {r['threads']} | {r['images_per_s']} | "
          f"{r['images_per_s_per_thread']} |")
  one = [r['images_per_s_per_thread'] for r in rows if r['threads'] == 1]
  print(json.dumps(dict(bench='input_pipeline', image_size='500x375', crop=512,
                        machine=host_info.describe(),
                        long_side=[320, 640], batch=args.batch, cores=cores, results=rows,
                        images_per_s_per_core=max(one) if one else None)))


if __name__ == '__main__':
  cli.run(main)
