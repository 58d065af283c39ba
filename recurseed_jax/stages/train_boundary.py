"""Stage train_boundary: the random walk's boundary network on the relation labels.

IRN's class-boundary branch on a frozen ResNet (models/boundary_net.py), trained with IRN's
affinity loss on pixel pairs of the relation labels (objectives.py, 'boundary'), in the same loop
as the other networks (checkpoints, exact resume, jit / pmap, metrics) in <workdir>/boundary.
With config.boundary.init = 'recurseed' its backbone is the trained RecurSeed network's.
"""

import jax

from recurseed_jax import config_lib
from recurseed_jax import train as train_lib
from recurseed_jax.stages import ir_labels

OUTPUTS = (config_lib.BOUNDARY_SUBFOLDER,)


def _recurseed_backbone(ctx):
  """init_fn: the trained RecurSeed network's backbone weights and statistics in place."""
  _, trained = train_lib.restore_variables(ctx.config, ctx.path('train'), ctx.num_classes)

  def init_fn(variables):
    params = dict(variables['params'], backbone=trained['params']['backbone'])
    stats = dict(variables.get('batch_stats', {}), backbone=trained['batch_stats']['backbone'])
    return dict(variables, params=params, batch_stats=stats)

  return init_fn


def run(ctx):
  cfg = config_lib.boundary_config(ctx.config)
  mask_dir = ctx.path(ir_labels.FOLDER)

  def batches(start_step):  # the relation labels stand in for the masks of the stream
    return ctx.data.train_batches(start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count(), config=cfg,
                                  mask_dir=mask_dir)

  init_fn = _recurseed_backbone(ctx) if ctx.config.boundary.init == 'recurseed' else None
  train_lib.train(cfg, ctx.path(config_lib.BOUNDARY_SUBFOLDER), ctx.num_classes,
                  supervision='boundary', desc='train boundary network', data_iter_fn=batches,
                  init_fn=init_fn)
  return dict(steps=int(cfg.train.steps))
