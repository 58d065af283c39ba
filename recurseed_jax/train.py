"""Train state, the RecurSeed + CertainMix step, the optimiser and the training loop.

The step is a pure function `(state, batch, use_mix) -> (state, metrics)`; the step's random key
lives in the state (fold_in(state.rng, state.step)), so a resumed run draws the same bits.
Everything the config decides enters through `make_train_step`'s closure as Python constants,
never as globals. The loop around it (input, checkpoints, signals, logs) is host code.

Parallel modes (parallel.py): under 'jit' the step sees the global batch; under 'pmap'
(`axis_name='data'`) it sees one device's shard and makes every batch-level quantity global with
collectives, so both give the numbers of a one-device run (see `make_train_step`).
"""

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from recurseed_jax import checkpoint as ckpt_lib
from recurseed_jax import confusion
from recurseed_jax import metrics as metrics_lib
from recurseed_jax import models
from recurseed_jax import objectives
from recurseed_jax import parallel

BATCH_KEYS = ('image', 'mask', 'valid', 'label')


class TrainState(struct.PyTreeNode):
  """Everything a resumed run needs besides the config (the input position is `step`)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array            # base key (raw uint32[2]); step t draws from fold_in(rng, t)
  ema_params: Any           # EMA of params, or None when config.train.ema_decay == 0
  nonfinite: jax.Array      # steps skipped for a non-finite loss or gradient, in total
  nonfinite_run: jax.Array  # ... in a row, up to this step
  # Confusion matrix [C+1, C+1] (truth x training seed) summed over the steps since the last log
  # line: in the state so that a resumed run logs the same seed_miou as an uninterrupted one.
  seed_window: jax.Array
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def saveable(self):
    tree = dict(step=self.step, params=self.params, batch_stats=self.batch_stats,
                opt_state=self.opt_state, rng=self.rng, nonfinite=self.nonfinite,
                nonfinite_run=self.nonfinite_run, seed_window=self.seed_window)
    if self.ema_params is not None:
      tree['ema_params'] = self.ema_params
    return tree

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
  """SGD (Nesterov) with poly decay, `head_lr_mult` on new heads, no decay on BN and biases;
  with `freeze_backbone` the backbone gets no update at all (not even weight decay)."""
  def sgd(lr_mult):
    return optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay, mask=models.decay_mask),
        optax.sgd(_schedule(optim_config, total_steps, lr_mult),
                  momentum=optim_config.momentum, nesterov=optim_config.nesterov))
  backbone = optax.set_to_zero() if optim_config.freeze_backbone else sgd(1.0)
  return optax.multi_transform(
      {'backbone': backbone, 'head': sgd(optim_config.head_lr_mult)}, models.param_groups)


def learning_rate(optim_config, total_steps, step):
  """The backbone's learning rate at `step` (heads run at `head_lr_mult` times it)."""
  return _schedule(optim_config, total_steps)(step)


def _keys(config):
  """(init key, step key) from config.seed."""
  return jax.random.split(jax.random.PRNGKey(config.seed))


def compute_dtype(config):
  name = config.train.dtype
  if name not in models.COMPUTE_DTYPES:
    raise ValueError(f'config.train.dtype={name!r} is not one of: '
                     f'{", ".join(models.COMPUTE_DTYPES)}')
  return models.COMPUTE_DTYPES[name]


def network_builder(config):
  """The builder of config.model.network: RecurSeedNet, DeepLabNet or BoundaryNet."""
  build = models.builder(config.model.network)
  if config.model.network == 'boundary':
    return functools.partial(build, feature_size=config.boundary.feature_size)
  return build


def build_model(config, num_classes, mode=None):
  """The network in config.train.dtype (params stay float32); cross-device BatchNorm under pmap."""
  mode = mode or config.parallel.mode
  return network_builder(config)(config.model, num_classes, dtype=compute_dtype(config),
                                 bn_axis_name=parallel.axis_name(mode))


def init_state(config, params, batch_stats, num_classes):
  """A step-0 TrainState around given variables (optimiser, EMA and guard counters fresh)."""
  tx = make_optimizer(config.optim, config.train.steps)
  ema = params if config.train.ema_decay > 0 else None
  zero = jnp.zeros((), jnp.int32)
  window = jnp.zeros((num_classes + 1, num_classes + 1), jnp.float32)
  return TrainState(step=zero, params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                    rng=_keys(config)[1], ema_params=ema, nonfinite=zero, nonfinite_run=zero,
                    seed_window=window, tx=tx)


def _classes(model):
  """The network's class count (the training seed's confusion window); 0 for the boundary
  network, which has no classes."""
  return getattr(model, 'num_classes', 0)


def create_state(config, model, rng, input_shape, init_fn=None):
  # An 'rbg' key compiles init in a fraction of threefry's time (one RNG kernel per shape).
  key = jax.random.key(int(jax.random.randint(rng, (), 0, 2**31 - 1)), impl='rbg')
  variables = jax.jit(functools.partial(model.init, train=False))(
      {'params': key}, jnp.zeros(input_shape, jnp.float32))
  # config.model.init: scratch, or ImageNet / RS+EPM / DeepLab weights (models/weights.py).
  variables = models.apply_init(config.model.init, variables,
                                strict=config.model.init_strict)
  if init_fn is not None:  # e.g. the boundary network's backbone from a trained run
    variables = init_fn(variables)
  # One compiled program instead of an eager op (and compile) per parameter shape.
  return jax.jit(functools.partial(init_state, config, num_classes=_classes(model)))(
      variables['params'], variables.get('batch_stats', {}))


def abstract_state(config, model, input_shape, sharding=None):
  """The TrainState's shapes and dtypes (nothing computed), with `sharding` on every leaf."""
  def make():
    variables = model.init({'params': jax.random.key(0, impl='rbg')},
                           jnp.zeros(input_shape, jnp.float32), train=False)
    return init_state(config, variables['params'], variables.get('batch_stats', {}),
                      _classes(model))
  shapes = jax.eval_shape(make)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _where(cond, new, old):
  return jax.tree.map(lambda n, o: jnp.where(cond, n, o), new, old)


def make_train_step(config, model, supervision='weak', axis_name=None):
  """Builds the pure step `(state, batch, use_mix=False) -> (state, metrics)`.

  supervision picks the objective (objectives.py): 'weak' (RecurSeed, image labels only), 'cam'
  (the plain-CAM baseline), 'full' (the true masks: the upper bound) or 'seg' (a DeepLabNet,
  config.model.network='deeplab', on the batch masks: the multi-stage segmenter). The step runs
  the network, the objective and the update; it is the same for every supervision.
  Under 'weak' and 'cam' the metrics hold `seed_confusion` (truth x training seed, summed since the
  last log line; see TrainState.seed_window), which the loop turns into `seed_miou`.
  axis_name: None when the step sees the global batch (one device, or jit over a mesh); the
  pmap axis when it sees one device's shard. Then (the model must use the same axis for its
  BatchNorm): every loss and metric is a ratio whose numerator stays per device and whose
  denominator is summed over devices, so the per-device shares add up (psum) to the global
  value; gradients are summed over devices; CertainMix pairs images over the gathered global
  batch with the same key on every device. Only dropout differs: each device draws its own mask.

  A step whose loss or gradient is not finite changes nothing but the step and the guard
  counters (state.nonfinite, state.nonfinite_run; metrics 'finite').
  """
  objective = objectives.make_objective(config, supervision)
  unread = objectives.UNREAD_MODULES.get(supervision, ())
  ema_decay = float(config.train.ema_decay)

  def share(parts):
    total, count = parts
    return total / jnp.maximum(parallel.psum(jax.lax.stop_gradient(count), axis_name), 1.0)

  def step_fn(state, batch, use_mix=False):
    rng = jax.random.fold_in(state.rng, state.step)
    r_drop, r_mix, r_drop2 = jax.random.split(rng, 3)
    r_drop, r_drop2 = (parallel.device_key(k, axis_name) for k in (r_drop, r_drop2))

    def loss_fn(params):
      stats = [state.batch_stats]  # each training-mode pass chains on the previous statistics

      def forward(images, key):
        out, mutated = model.apply({'params': params, 'batch_stats': stats[-1]}, images,
                                   train=True, mutable=['batch_stats'], rngs={'dropout': key})
        # A module the objective never reads keeps its statistics, so XLA drops its pass.
        stats.append({k: stats[-1][k] if k in unread else v
                      for k, v in mutated['batch_stats'].items()})
        return out

      out = forward(batch['image'], r_drop)
      ctx = objectives.StepContext(step=state.step, share=share,
                                   forward=lambda images: forward(images, r_drop2),
                                   mix_rng=r_mix, use_mix=use_mix, axis_name=axis_name)
      loss, metrics = objective(out, batch, ctx)
      return loss, (stats[-1], metrics)

    grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads, metrics = parallel.psum((grads, metrics), axis_name)
    # One reduction over the gradient norm, not an isfinite per leaf: the per-leaf form tripled
    # the full step's compile time. (A finite gradient whose squared norm overflows is skipped too.)
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(optax.global_norm(grads))
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      # Warm-up of the decay (as TF's ExponentialMovingAverage with num_updates): early EMA
      # weights do not stay stuck near the random init.
      t = state.step.astype(jnp.float32)
      d = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
      ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
    # A non-finite step keeps the old state (the optimiser's schedule counts applied updates).
    params, opt_state, stats, ema = _where(
        finite, (params, opt_state, stats, ema),
        (state.params, state.opt_state, state.batch_stats, state.ema_params))
    bad = (~finite).astype(jnp.int32)
    nonfinite_run = jnp.where(finite, 0, state.nonfinite_run + 1)
    # The window restarts after each log line (log steps are multiples of log_every).
    window = jnp.where(state.step % config.train.log_every == 0, 0.0, state.seed_window)
    if 'seed_confusion' in metrics:
      window = window + jnp.where(finite, metrics['seed_confusion'], 0.0)
      metrics['seed_confusion'] = window
    metrics['lr'] = learning_rate(config.optim, config.train.steps, state.step)
    metrics['finite'] = finite.astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=stats,
                              opt_state=opt_state, ema_params=ema,
                              nonfinite=state.nonfinite + bad, nonfinite_run=nonfinite_run,
                              seed_window=window)
    metrics['nonfinite'] = new_state.nonfinite
    metrics['nonfinite_run'] = nonfinite_run
    return new_state, metrics

  return step_fn


@dataclasses.dataclass
class Setup:
  """One config's model, mesh and compiled steps: what the loop and the benchmarks use.

  `setup()` builds it. `state = s.init_state()` is a replicated step-0 state; `s.step(use_mix)`
  is the compiled f(state, batch) -> (state, metrics) (state donated; `.lower(state, batch)`
  compiles ahead of time); `s.put_batch(numpy_batch)` places this process's batch slice.
  """
  config: Any
  model: Any
  mesh: Any
  mode: str
  supervision: str
  step_fn: Any
  init_fn: Any = None  # variables -> variables, after config.model.init (train's init_fn)
  _compiled: dict = dataclasses.field(default_factory=dict)

  @property
  def input_shape(self):
    crop = self.config.data.crop_size
    return (1, crop, crop, 3)

  def step(self, use_mix=False):
    if use_mix not in self._compiled:
      self._compiled[use_mix] = parallel.compile_step(self.step_fn, self.mesh, self.mode, use_mix)
    return self._compiled[use_mix]

  def init_state(self):
    init_rng, _ = _keys(self.config)
    state = create_state(self.config, self.model, init_rng, self.input_shape, self.init_fn)
    return parallel.replicate(state, self.mesh)

  def abstract_state(self):
    return abstract_state(self.config, self.model, self.input_shape,
                          parallel.replicated(self.mesh))

  def put_batch(self, batch):
    return parallel.shard_batch({k: batch[k] for k in BATCH_KEYS}, self.mesh, self.mode)


def setup(config, num_classes, supervision='weak', mesh=None, init_fn=None):
  """Checks the batch against the devices (before any compute) and builds the step."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  mode = config.parallel.mode
  parallel.check_batch_size(config.train.batch_size, mesh)
  parallel.check_rng_partitionable()
  model = build_model(config, num_classes, mode)
  step_fn = make_train_step(config, model, supervision, axis_name=parallel.axis_name(mode))
  return Setup(config=config, model=model, mesh=mesh, mode=mode, supervision=supervision,
               step_fn=step_fn, init_fn=init_fn)


# --- the loop ----------------------------------------------------------------------------------


class Interrupted(Exception):
  """SIGTERM / SIGINT (or a multi-host preemption notice): the state was saved, rerun to resume."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum


class NonFiniteError(RuntimeError):
  """Too many steps in a row had a non-finite loss or gradient."""


class Signals:
  """Records SIGTERM / SIGINT instead of dying, so the loop can save at a step boundary.

  Single-process runs only: in a multi-host run, JAX's preemption service owns SIGTERM and the
  loop asks the checkpoint manager for the common stop step instead. A second SIGINT while the
  flag is set raises KeyboardInterrupt (a user insisting). Handlers can only be set from the main
  thread: networks trained side by side (train_side_by_side) share the main thread's Signals,
  and `stop()` ends them all at their next step (one of them failed).
  """

  def __init__(self):
    self.received = None
    self._old = {}

  def _handler(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum

  def stop(self):
    if self.received is None:
      self.received = signal.SIGTERM

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)
    self._old = {}


def _use_mix(config, supervision, step):
  return supervision == 'weak' and config.mix.kind != 'none' and step >= config.mix.start_step


class _Logger:
  """Per-step host bookkeeping of fetched metrics: guard, JSONL / TensorBoard, progress bar."""

  def __init__(self, config, writer, bar, start):
    self.config, self.writer, self.bar = config, writer, bar
    self.every = config.train.log_every
    self.total = config.train.steps
    self.max_nonfinite = config.train.max_nonfinite
    self.t0 = self.t_last = time.time()
    self.step_last = start

  def __call__(self, step, metrics):
    m = dict(jax.device_get(metrics))
    conf = m.pop('seed_confusion', None)
    m = {k: float(v) for k, v in m.items()}
    self.bar.update(1)
    if not m.pop('finite'):
      run = int(m['nonfinite_run'])
      tqdm.write(f'step {step}: non-finite loss or gradient, update skipped '
                 f'({run} in a row, {int(m["nonfinite"])} in total)', file=sys.stderr)
      if run >= self.max_nonfinite:
        raise NonFiniteError(
            f'training stopped at step {step}: steps {step - run + 1}..{step} had a non-finite '
            f'loss or gradient (config.train.max_nonfinite={self.max_nonfinite}); lower '
            'config.optim.lr or check the input. The last checkpoint holds the state before.')
    if step % self.every and step != self.total:
      return
    now = time.time()
    m['img_per_s'] = round((step - self.step_last) * self.config.train.batch_size /
                           max(now - self.t_last, 1e-9), 2)
    m['seconds'] = round(now - self.t0, 2)
    if conf is not None and conf.sum() > 0:
      m['seed_miou'] = float(confusion.scores(conf)['miou'])
    self.t_last, self.step_last = now, step
    self.writer.write(step, m)
    post = dict(loss=f"{m['loss']:.3f}", img_s=f"{m['img_per_s']:.1f}")
    if 'seed_coverage' in m:
      post['cover'] = f"{m['seed_coverage']:.2f}"
    self.bar.set_postfix(**post)


def train(config, workdir, num_classes, *, supervision='weak', desc='train', data_iter_fn=None,
          mesh=None, init_fn=None, signals=None, bar_position=None):
  """Runs (or resumes) training into `workdir`; returns the final variables.

  `data_iter_fn(start_step)` returns this process's batch iterator from global step start_step
  on (numpy dicts with image, mask, valid, label; a process's slice of the global batch).
  Checkpoints: `<workdir>/checkpoints` (every train.checkpoint_every steps, at the end, and on
  SIGTERM / SIGINT, after which Interrupted is raised); metrics: `<workdir>/metrics.jsonl` and
  TensorBoard events in `<workdir>` (process 0 only). Raises NonFiniteError after
  train.max_nonfinite non-finite steps in a row. `init_fn(variables) -> variables` runs after
  config.model.init on a fresh start (not on resume). `signals`: a Signals the caller entered
  (shared by networks trained side by side; None: the loop's own); `bar_position`: the progress
  bar's line (tqdm's position).
  """
  total = config.train.steps
  if total == 0:  # inference from config.model.init only (see restore_variables)
    return None
  s = setup(config, num_classes, supervision, mesh, init_fn)
  lead = jax.process_index() == 0
  if lead:
    os.makedirs(workdir, exist_ok=True)
  with ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                            keep=config.train.keep_checkpoints,
                            every=config.train.checkpoint_every,
                            async_save=config.train.async_checkpoints) as ckpts:
    start = ckpts.latest_step() or 0
    if start:
      state = s.abstract_state()
      state = state.replace_saved(ckpts.restore(state.saveable()))
    else:
      state = s.init_state()
    if start >= total:
      return _variables(state)
    batches = data_iter_fn(start)
    writer = metrics_lib.MetricWriter(workdir, start, enabled=lead,
                                      tensorboard=config.train.tensorboard)
    bar = tqdm(desc=desc, initial=start, total=total, dynamic_ncols=True, disable=not lead,
               position=bar_position)
    log = _Logger(config, writer, bar, start)
    pending = None  # (step, metrics) not yet fetched: fetching lags one step behind dispatch
    own = Signals() if signals is None else contextlib.nullcontext(signals)
    with writer, bar, own as signals:
      for step in range(start, total):
        batch = s.put_batch(next(batches))
        state, metrics = s.step(_use_mix(config, supervision, step))(state, batch)
        done = step + 1
        if pending:
          log(*pending)
        pending = (done, metrics)
        preempted = ckpts.reached_preemption(done)
        stop = signals.received is not None or preempted
        if ckpts.due(done) or done == total or stop:
          log(*pending)  # The log never lags behind a checkpoint (resume truncates to it).
          pending = None
          ckpts.save(done, state.saveable())
        if stop and done < total:
          ckpts.wait()
          signum = signals.received or signal.SIGTERM
          raise Interrupted(
              f'{signal.Signals(signum).name} received: stopped after step {done} of {total} and '
              f'saved checkpoint {done} in {ckpts.directory}; rerun the same command to resume',
              signum)
  return _variables(state)


def _variables(state):
  return {'params': state.params, 'batch_stats': state.batch_stats}


def restore_variables(config, workdir, num_classes):
  """The final variables of a finished training run in `workdir` (for inference).

  With config.rs.seed_from_ema (and an EMA in the checkpoint) the params are the EMA params.
  """
  model = network_builder(config)(config.model, num_classes)
  crop = config.data.crop_size
  if config.train.steps == 0:  # no training: infer straight from the imported weights
    shapes = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0, impl='rbg'), jnp.zeros((1, crop, crop, 3)))
    like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
    return model, models.apply_init(config.model.init, like,
                                    strict=config.model.init_strict)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = abstract_state(config, model, (1, crop, crop, 3), device)
  with ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints')) as ckpts:
    tree = ckpts.restore(state.saveable())
  params = tree['params']
  if config.rs.seed_from_ema:
    if 'ema_params' not in tree:
      raise ValueError(f'config.rs.seed_from_ema is set but {workdir} was trained without an '
                       'EMA (config.train.ema_decay=0)')
    params = tree['ema_params']
  return model, {'params': params, 'batch_stats': tree['batch_stats']}


def is_finished(config, workdir):
  path = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(path):
    return False
  steps = [int(d) for d in os.listdir(path) if d.isdigit()]
  return bool(steps) and max(steps) >= config.train.steps
