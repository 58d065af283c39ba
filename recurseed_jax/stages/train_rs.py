"""Stage train_rs: the RecurSeed network (and, when the config asks, its plain-CAM baseline and
fully supervised upper bound), each in its own workdir subfolder, resumable from checkpoints."""

import jax

from recurseed_jax import train as train_lib
from recurseed_jax.stages import products

OUTPUTS = ('train', 'cam_baseline', 'upper_bound')


def run(ctx):
  def batches(start_step):  # this process's slice of every global batch (multi-host)
    return ctx.data.train_batches(start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count())

  runs = products.enabled_runs(ctx.config)
  for name, supervision in runs:
    train_lib.train(ctx.config, ctx.path(name), ctx.num_classes, supervision=supervision,
                    desc=f'train {products.RUN_TITLES[name]}', data_iter_fn=batches)
  return dict(runs=[name for name, _ in runs])
