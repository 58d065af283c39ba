"""Train state, the RecurSeed + CertainMix step, the optimiser and the training loop.

The step is a pure function `(state, batch, rng) -> (state, metrics)`; everything the config
decides enters through `make_train_step`'s closure as Python constants, never as globals. The
loop around it (input, checkpoints, logs) is host code.
"""

import functools
import json
import os
import time
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

from recurseed_jax import checkpoint as ckpt_lib
from recurseed_jax import io_utils
from recurseed_jax import method
from recurseed_jax import models


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def saveable(self):
    return dict(step=self.step, params=self.params, batch_stats=self.batch_stats,
                opt_state=self.opt_state)

  def replace_saved(self, tree):
    return self.replace(**tree)


def poly_schedule(base_lr, total_steps, power, warmup_steps=0):
  """Poly decay lr * (1 - t/T)^power after an optional linear warmup."""
  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    frac = jnp.clip(1.0 - t / max(total_steps, 1), 0.0, 1.0)
    lr = base_lr * frac ** power
    if warmup_steps:
      lr = lr * jnp.minimum(1.0, (t + 1) / warmup_steps)
    return lr
  return schedule


def _schedule(optim_config, total_steps, lr_mult=1.0):
  return poly_schedule(optim_config.lr * lr_mult, total_steps, optim_config.poly_power,
                       optim_config.warmup_steps)


def make_optimizer(optim_config, total_steps):
  """SGD (Nesterov) with poly decay, `head_lr_mult` on new heads, no decay on BN and biases."""
  def sgd(lr_mult):
    return optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay, mask=models.decay_mask),
        optax.sgd(_schedule(optim_config, total_steps, lr_mult),
                  momentum=optim_config.momentum, nesterov=optim_config.nesterov))
  return optax.multi_transform(
      {'backbone': sgd(1.0), 'head': sgd(optim_config.head_lr_mult)}, models.param_groups)


def learning_rate(optim_config, total_steps, step):
  """The backbone's learning rate at `step` (heads run at `head_lr_mult` times it)."""
  return _schedule(optim_config, total_steps)(step)


def create_state(config, model, rng, input_shape):
  # An 'rbg' key compiles init in a fraction of threefry's time (one RNG kernel per shape).
  key = jax.random.key(int(jax.random.randint(rng, (), 0, 2**31 - 1)), impl='rbg')
  variables = jax.jit(functools.partial(model.init, train=False))(
      {'params': key}, jnp.zeros(input_shape, jnp.float32))
  params = variables['params']
  tx = make_optimizer(config.optim, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params), tx=tx)


def _supervised_losses(config, out, hard, labels, crop):
  """cls + cam + seg losses of one forward pass against a hard label map."""
  seg_up = method.resize(out['seg'], crop)
  cls = method.multilabel_soft_margin(out['logits'], labels)
  seg = method.seg_cross_entropy(seg_up, hard)
  seg_probs = jax.nn.softmax(out['seg'], axis=-1)[..., 1:]
  cam = method.cam_loss(out['cam'], seg_probs, labels, kind=config.loss.cam_kind)
  total = config.loss.cls * cls + config.loss.cam * cam + config.loss.seg * seg
  return total, dict(cls=cls, cam=cam, seg=seg)


def _scg_kwargs(config):
  return {k: v for k, v in config.rs.scg.to_dict().items() if k != 'levels'}


def make_seed(config, out, images, labels, valid, step):
  """The RecurSeed seed of a clean forward pass: recursion switch, refinement, certainty filter.

  Returns (soft seed at crop size [B,H,W,C], hard labels [B,H,W]). Everything is stop-gradient.
  """
  out = jax.lax.stop_gradient(out)
  crop = images.shape[1:3]
  stride = config.rs.refine_stride
  size = (crop[0] // stride, crop[1] // stride)
  cs = method.resize(method.cam_seed(out['cam'], labels), size)
  ss = method.resize(method.seg_seed(out['seg'], labels), size)
  seed = method.select_seed(step, cs, ss, config.rs.cam_only_steps, config.rs.seed_mix)
  kind = config.rs.refine
  if kind == 'scg':
    feats = [method.resize(out['features'][f'stage{level}'].astype(jnp.float32), size)
             for level in config.rs.scg.levels]
    seed = method.refine_seed('scg', seed, features=feats, scg_kwargs=_scg_kwargs(config))
  elif kind == 'pamr':
    small = method.resize(images, size)
    seed = method.refine_seed('pamr', seed, image=small, pamr_kwargs=config.rs.pamr.to_dict())
  else:
    seed = method.refine_seed(kind, seed)
  seed = method.resize(seed, crop) * labels[:, None, None, :]
  hard = method.hard_labels(seed, config.rs.certain, config.rs.uncertain, valid=valid)
  return seed, hard


SUPERVISIONS = ('weak', 'cam', 'full')


def make_train_step(config, model, supervision='weak'):
  """Builds the pure step.

  supervision: 'weak' (RecurSeed, image labels only), 'cam' (the plain-CAM baseline: the
  classification loss alone) or 'full' (the true masks: the upper bound).
  """
  if supervision not in SUPERVISIONS:
    raise ValueError(f'supervision={supervision!r} is not one of {SUPERVISIONS}')

  def forward(params, batch_stats, images, rng):
    out, mutated = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                               train=True, mutable=['batch_stats'], rngs={'dropout': rng})
    return out, mutated['batch_stats']

  def step_fn(state, batch, rng, use_mix=False):
    if use_mix and supervision != 'weak':
      raise ValueError('mixing needs seeds: use_mix only with supervision="weak"')
    rng = jax.random.fold_in(rng, state.step)
    r_drop, r_mix, r_drop2 = jax.random.split(rng, 3)
    images, labels, valid = batch['image'], batch['label'], batch['valid']
    crop = images.shape[1:3]

    def loss_fn(params):
      out, stats = forward(params, state.batch_stats, images, r_drop)
      if supervision == 'cam':
        cls = method.multilabel_soft_margin(out['logits'], labels)
        return cls, (stats, dict(cls=cls, loss=cls))
      metrics = {}
      if supervision == 'full':
        hard = batch['mask']
      else:
        seed, hard = make_seed(config, out, images, labels, valid, state.step)
      total, terms = _supervised_losses(config, out, hard, labels, crop)
      metrics.update(terms)
      if supervision != 'full':
        certain = hard != 255
        metrics['seed_coverage'] = certain.mean()
        gt = batch['mask']
        ok = certain & (gt != 255)
        metrics['seed_precision'] = jnp.sum((hard == gt) & ok) / jnp.maximum(jnp.sum(ok), 1)
      if use_mix:
        if config.mix.kind == 'classmix':
          mix_src = method.argmax_labels(seed, valid=valid)
        else:
          mix_src = hard
        mixed_x, mixed_hard, mixed_y, _ = method.mix_batch(
            r_mix, images, mix_src, labels, kind=config.mix.kind,
            class_prob=config.mix.class_prob, min_area=config.mix.min_area)
        out2, stats = forward(params, stats, mixed_x, r_drop2)
        total2, terms2 = _supervised_losses(config, out2, mixed_hard, mixed_y, crop)
        total = total + total2
        metrics.update({f'mix_{k}': v for k, v in terms2.items()})
      metrics['loss'] = total
      return total, (stats, metrics)

    grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['lr'] = learning_rate(config.optim, config.train.steps, state.step)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=stats,
                              opt_state=opt_state)
    return new_state, metrics

  return step_fn


def train(config, workdir, data, *, supervision='weak', desc='train', data_iter_fn=None):
  """Runs (or resumes) training into `workdir`; returns the final variables.

  `data` is the training split (numpy arrays); `data_iter_fn(start_step)` returns the batch
  iterator. Checkpoints: `<workdir>/checkpoints`; metrics: `<workdir>/metrics.jsonl`.
  """
  num_classes = data['labels'].shape[1]
  model = models.build_model(config.model, num_classes)
  crop = config.data.crop_size
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = create_state(config, model, init_rng, (1, crop, crop, 3))
  total = config.train.steps
  os.makedirs(workdir, exist_ok=True)
  with ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints,
                            every=config.train.checkpoint_every) as ckpts:
    start = ckpts.latest_step() or 0
    if start:
      state = state.replace_saved(ckpts.restore(state.saveable()))
    if start >= total:
      return {'params': state.params, 'batch_stats': state.batch_stats}
    step_fn = make_train_step(config, model, supervision)
    jit_step = jax.jit(step_fn, static_argnames=('use_mix',), donate_argnums=(0,))
    batches = data_iter_fn(start)
    log_path = os.path.join(workdir, 'metrics.jsonl')
    _truncate_log(log_path, start)
    t0 = time.time()
    bar = tqdm(range(start, total), desc=desc, initial=start, total=total, dynamic_ncols=True)
    for step in bar:
      batch = next(batches)
      batch = {k: batch[k] for k in ('image', 'mask', 'valid', 'label')}
      use_mix = supervision == 'weak' and config.mix.kind != 'none' and step >= config.mix.start_step
      state, metrics = jit_step(state, batch, step_rng, use_mix=use_mix)
      done = step + 1
      if done % config.train.log_every == 0 or done == total:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        m.update(step=done, seconds=round(time.time() - t0, 2))
        with open(log_path, 'a') as f:
          f.write(json.dumps(m) + '\n')
        bar.set_postfix(loss=f"{m['loss']:.3f}", **({'cover': f"{m['seed_coverage']:.2f}"}
                                                    if 'seed_coverage' in m else {}))
      ckpts.save(done, state.saveable(), force=done == total)
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _truncate_log(path, step):
  """Drops log lines past the checkpoint a run resumes from (they will be logged again)."""
  if not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)['step'] <= step:
          keep.append(line)
      except (ValueError, KeyError):  # a line cut short by a kill
        pass
  io_utils.atomic_write_bytes(path, ''.join(keep).encode())


def restore_variables(config, workdir, num_classes):
  """The final variables of a finished training run in `workdir` (for inference)."""
  model = models.build_model(config.model, num_classes)
  crop = config.data.crop_size
  state = create_state(config, model, jax.random.PRNGKey(0), (1, crop, crop, 3))
  with ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints')) as ckpts:
    tree = ckpts.restore(state.saveable())
  return model, {'params': tree['params'], 'batch_stats': tree['batch_stats']}


def is_finished(config, workdir):
  path = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(path):
    return False
  steps = [int(d) for d in os.listdir(path) if d.isdigit()]
  return bool(steps) and max(steps) >= config.train.steps
