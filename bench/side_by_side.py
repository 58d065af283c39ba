"""Two networks' training steps one after another against side by side (two threads), images/s.

    python bench/side_by_side.py [--backbone tiny] [--crop 64] [--batch 16] [--steps 20]
        [--repeats 2] [--mix | --no-mix]

What the train_rs stage's config.train.side_by_side does (recurseed_jax/stages/train_rs.py):
the demo trains three small networks, and on a 2-core CPU one network's step leaves part of the
second core idle. Two train states of bench/train_step.py's network, the same compiled step:
`--steps` steps of the first then of the second, against both at once in two threads; the two
orders alternate `--repeats` times, so the machine's drift falls on both. Then checks that a
state trained in a thread beside another is bit-identical to one trained alone. Prints a table
and, last, one JSON line.
"""

import argparse
import json
import os
import sys
import threading
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step as bench_step  # noqa: E402  (bench/train_step.py: its config and batch)

from recurseed_jax import cli  # noqa: E402
from recurseed_jax import host_info  # noqa: E402
from recurseed_jax import train  # noqa: E402


def _run(step, state, batch, steps):
  for _ in range(steps):
    state, _ = step(state, batch)
  return jax.block_until_ready(state)


def _side_by_side(step, states, batch, steps):
  out = [None] * len(states)

  def go(k):
    out[k] = _run(step, states[k], batch, steps)

  threads = [threading.Thread(target=go, args=(k,)) for k in range(len(states))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  p.add_argument('--backbone', default='tiny', choices=bench_step.BACKBONES)
  p.add_argument('--crop', type=int, default=64)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--steps', type=int, default=20, help='timed steps per network and setting')
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--mix', action=argparse.BooleanOptionalAction, default=False,
                 help='CertainMix on in the step (the RecurSeed network after mix.start_step)')
  args = p.parse_args(argv)
  step_args = bench_step.parse_args(['--backbone', args.backbone, '--crop', str(args.crop),
                                     '--batch', str(args.batch)])
  config = bench_step.make_config(step_args)
  num_classes = bench_step.num_classes_of(step_args, config)
  s = train.setup(config, num_classes, 'weak')
  batch = s.put_batch(bench_step.fake_batch(step_args, num_classes))
  step = s.step(args.mix)
  init = s.init_state()
  fresh = lambda: jax.tree.map(lambda a: a.copy(), init)  # the step donates its state
  t = time.perf_counter()
  states = [_run(step, fresh(), batch, 2) for _ in range(2)]  # compile, then warm up
  setup_s = time.perf_counter() - t
  images = 2 * args.steps * args.batch
  rows = []
  for r in range(args.repeats):
    for mode in (('apart', 'together') if r % 2 == 0 else ('together', 'apart')):
      t = time.perf_counter()
      if mode == 'apart':
        states = [_run(step, st, batch, args.steps) for st in states]
      else:
        states = _side_by_side(step, states, batch, args.steps)
      rows.append(dict(repeat=r, mode=mode,
                       images_per_s=round(images / (time.perf_counter() - t), 1)))
  alone = _run(step, fresh(), batch, 3)
  beside = _side_by_side(step, [fresh(), fresh()], batch, 3)
  same = all(np.array_equal(a, b) for other in beside
             for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(other)))
  rate = {m: [r['images_per_s'] for r in rows if r['mode'] == m] for m in ('apart', 'together')}
  ratio = round(sum(rate['together']) / sum(rate['apart']), 2)
  print(f'\n{args.backbone}, crop {args.crop}, batch {args.batch}, CertainMix '
        f'{"on" if args.mix else "off"}; compile + warm-up {setup_s:.1f} s')
  print('| repeat | two networks | images/s |')
  print('|---|---|---:|')
  for r in rows:
    print(f"| {r['repeat']} | {'one after another' if r['mode'] == 'apart' else 'side by side'} "
          f"| {r['images_per_s']} |")
  print(f'side by side / one after another: {ratio}x; a network trained beside another is '
        f'{"bit-identical to" if same else "DIFFERENT from"} one trained alone')
  print(json.dumps(dict(bench='side_by_side', backbone=args.backbone, crop=args.crop,
                        batch=args.batch, mix=args.mix, steps=args.steps, rows=rows,
                        ratio=ratio, bit_identical=same, machine=host_info.describe())))
  return 0 if same else 1


if __name__ == '__main__':
  cli.run(main)
