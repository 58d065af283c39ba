"""Random walk throughput and peak memory: the sparse local walk against IRN's dense matrix power.

    python bench/random_walk.py                        # VOC's 500x375, 2 kept classes, CPU
    python bench/random_walk.py --classes 3 --batch 1,8 --dense-fractions 0.25,0.5

Both walks run IRN's propagation (radius 5, beta 10, exp_times 8: 256 steps) on a stride-4 map
of the image (375x500 -> 94x125), with synthetic seeds and boundaries (speed does not depend on
the values). Sparse (`random_walk.propagate`): 2**exp_times applications of the 69-neighbour
stencil, O(hw) memory. Dense (`random_walk.propagate_dense`): the [hw, hw] transition squared
exp_times times, O((hw)^2) memory and O(exp_times (hw)^3) time; at full size a 2-core CPU would
take minutes per image, so by default it is timed on smaller maps (`--dense-fractions` of each
side) and its full-size time is extrapolated as (hw)^3 from the largest one, which the table
marks; its full-size peak memory is still measured, from the compiled program. Peak memory is
XLA's compiled memory_analysis() (arguments + outputs + temporaries), which needs no
accelerator. Compile time is reported apart. Prints a table and one JSON line.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from recurseed_jax import host_info

# pylint: disable-next=g-import-not-at-top,wrong-import-position
from recurseed_jax.method import random_walk

MIB = 2**20


def inputs(batch, cells, classes, seed=0):
  """Seeds with a few blobs per class and a noisy boundary map with two walls."""
  rng = np.random.default_rng(seed)
  h, w = cells
  yy, xx = np.mgrid[:h, :w]
  seeds = np.zeros((batch, h, w, classes), np.float32)
  for b in range(batch):
    for c in range(classes):
      cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(h, w) / 4)
      seeds[b, ..., c] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
  edge = (0.3 * rng.random((batch, h, w)) ** 3).astype(np.float32)
  edge[:, :, w // 3] = 0.9
  edge[:, h // 2, :] = 0.9
  return seeds, edge


def peak_bytes(compiled):
  stats = compiled.memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def measure(fn, batch, cells, classes, repeats, run=True):
  """(compile s, peak bytes, seconds per call or None) for one jitted walk."""
  seeds, edge = inputs(batch, cells, classes)
  t0 = time.perf_counter()
  compiled = fn.lower(seeds, edge).compile()
  compile_s = time.perf_counter() - t0
  seconds = None
  if run:
    compiled(seeds, edge).block_until_ready()  # warm-up
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      compiled(seeds, edge).block_until_ready()
      times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
  return compile_s, peak_bytes(compiled), seconds


def row(walk, cells, batch, compile_s, peak, seconds, note=''):
  return dict(walk=walk, cells=list(cells), batch=batch, compile_s=round(compile_s, 2),
              peak_mib=round(peak / MIB, 1), seconds_per_image=round(seconds / batch, 4),
              images_per_s=round(batch / seconds, 3), note=note)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', default='375x500', help='image HxW (the walk runs at stride 4)')
  parser.add_argument('--classes', type=int, default=2, help='kept classes per image')
  parser.add_argument('--batch', default='1,4', help='sparse walk batch sizes')
  parser.add_argument('--dense-fractions', default='0.25,0.5',
                      help='side fractions of the stride-4 map at which the dense walk is timed')
  parser.add_argument('--dense-full', action='store_true',
                      help='also time the dense walk at full size (minutes on a small CPU)')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  h, w = (int(v) for v in args.size.split('x'))
  cells = ((h - 1) // 4 + 1, (w - 1) // 4 + 1)
  rows = []
  for batch in [int(v) for v in args.batch.split(',')]:
    rows.append(row('sparse', cells, batch,
                    *measure(random_walk.propagate, batch, cells, args.classes, args.repeats)))
  timed = None
  for fraction in [float(v) for v in args.dense_fractions.split(',')]:
    small = (max(1, round(cells[0] * fraction)), max(1, round(cells[1] * fraction)))
    rows.append(row('dense', small, 1,
                    *measure(random_walk.propagate_dense, 1, small, args.classes, args.repeats)))
    timed = rows[-1]
  compile_s, peak, seconds = measure(random_walk.propagate_dense, 1, cells, args.classes,
                                     1, run=args.dense_full)
  note = 'measured'
  if seconds is None:
    if timed is None:
      raise SystemExit('no dense size timed: give --dense-fractions or --dense-full')
    ratio = (cells[0] * cells[1]) / (timed['cells'][0] * timed['cells'][1])
    seconds = timed['seconds_per_image'] * ratio ** 3
    note = f"time extrapolated as (hw)^3 from {timed['cells'][0]}x{timed['cells'][1]}"
  rows.append(row('dense', cells, 1, compile_s, peak, seconds, note))

  print(f'\nRandom walk (radius 5, beta 10, 256 steps) for {w}x{h} images -> {cells[1]}x'
        f'{cells[0]} cells, {args.classes} classes, {jax.devices()[0].platform} '
        f'({os.cpu_count()} cores)')
  print('| walk | cells (h x w) | batch | images/s | s per image | peak MiB | compile s | note |')
  print('|---|---|---:|---:|---:|---:|---:|---|')
  for r in rows:
    print(f"| {r['walk']} | {r['cells'][0]}x{r['cells'][1]} | {r['batch']} | "
          f"{r['images_per_s']:.3g} | {r['seconds_per_image']:.3g} | {r['peak_mib']:.1f} | "
          f"{r['compile_s']:.2f} | {r['note']} |")
  full = [r for r in rows if r['cells'] == list(cells)]
  sparse = min((r for r in full if r['walk'] == 'sparse'), key=lambda r: r['batch'])
  dense = [r for r in full if r['walk'] == 'dense'][0]
  speed = dense['seconds_per_image'] / sparse['seconds_per_image']
  print(f"Full size, one image: sparse {speed:.0f}x faster, "
        f"{dense['peak_mib'] / sparse['peak_mib']:.0f}x less memory (dense: {dense['note']}).")
  print(json.dumps(dict(bench='random_walk', image_size=[h, w], cells=list(cells),
                        machine=host_info.describe(),
                        classes=args.classes, platform=jax.devices()[0].platform,
                        rows=rows)))


if __name__ == '__main__':
  main()
