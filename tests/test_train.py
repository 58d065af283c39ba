"""Tests for recurseed_jax.train, in the spirit of flax's examples/imagenet train_test.py.

A tiny config (width 8, 32 x 32 crops, batch 4) keeps every compile short. Compiling train steps
is the whole cost of this file, so each step variant is compiled once and covers one refinement
kind: weak + CertainMix without refinement, weak + PAMR, full supervision, and weak + SCG (the
default) inside the two `train()` runs; XLA's slow optimisation passes are off, as in every
test (conftest.py's `fast_compiles`).
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from recurseed_jax import checkpoint as ckpt_lib
from recurseed_jax import models
from recurseed_jax import objectives
from recurseed_jax import train
import reference

NUM_CLASSES = 5
CROP = 32
BATCH = 4
GUARD_KEYS = {'finite', 'nonfinite', 'nonfinite_run'}
METRIC_KEYS = {'cls', 'cam', 'seg', 'loss', 'lr', 'seed_coverage', 'seed_precision'} | GUARD_KEYS
# Logged per step: the metrics (the guard's 'finite' only as a warning) and the host's timings.
# seed_miou: of the seed confusion matrix summed since the last line (metrics' seed_confusion).
LOG_KEYS = METRIC_KEYS - {'finite'} | {'step', 'seconds', 'img_per_s', 'seed_miou'}


def _config(**overrides):
  cfg = default.get_config()
  cfg.model.width = 8
  cfg.data.crop_size = CROP
  cfg.rs.refine_stride = 4
  cfg.train.steps = 2
  cfg.train.log_every = 1
  cfg.train.checkpoint_every = 1
  cfg.train.ema_decay = 0.9  # every step below also updates the EMA
  return reference.override(cfg, overrides)


def _batch(seed=0):
  return reference.fake_batch(seed, BATCH, CROP, NUM_CLASSES)


def _fake_out(seed=0):
  """Random model outputs of the tiny net's shapes (OS8 CAM, stride-4 seg, SCG features)."""
  rng = np.random.default_rng(seed)
  os8, os4 = CROP // 8, CROP // 4
  return dict(
      cam=jnp.asarray(3 * rng.normal(size=(BATCH, os8, os8, NUM_CLASSES)), jnp.float32),
      seg=jnp.asarray(4 * rng.normal(size=(BATCH, os4, os4, NUM_CLASSES + 1)), jnp.float32),
      logits=jnp.zeros((BATCH, NUM_CLASSES), jnp.float32),
      features={f'stage{k}': jnp.asarray(rng.normal(size=(BATCH, os8, os8, 8 * k)), jnp.float32)
                for k in (2, 3, 4, 5)})


def _tree_allfinite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(tree)))


def _differs(a, b):
  """Per leaf: whether two trees differ anywhere (numpy, so no per-shape op compiles)."""
  return jax.tree.map(lambda x, y: bool(np.any(x != y)), jax.device_get(a), jax.device_get(b))


@functools.lru_cache(maxsize=None)
def _model_and_state():
  """The tiny net and a step-0 TrainState, He-initialised in numpy.

  Shapes come from tracing the init, so no init is compiled here (train() compiles its own
  through create_state).
  """
  cfg = _config()
  model = models.build_model(cfg.model, NUM_CLASSES)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0, impl='rbg'), jnp.zeros((1, CROP, CROP, 3)))
  rng = np.random.default_rng(0)

  def init(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
    return np.ones(s.shape) if name.endswith("['scale']") or name.endswith("['var']") else (
        np.zeros(s.shape))

  variables = jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(init(p, s), jnp.float32), shapes)
  return model, train.init_state(cfg, variables['params'], variables['batch_stats'],
                                 model.num_classes)


def _one_step(cfg, supervision='weak', use_mix=False):
  """(state, new state, metrics, the jitted step: reuse it to avoid a compile)."""
  model, state = _model_and_state()
  step = jax.jit(train.make_train_step(cfg, model, supervision), static_argnames=('use_mix',))
  new_state, metrics = step(state, _batch(), use_mix=use_mix)
  return state, new_state, _floats(metrics), step


def _floats(metrics):
  """The scalar metrics (seed_confusion, a matrix, is checked on its own)."""
  return {k: float(v) for k, v in jax.device_get(metrics).items() if k != 'seed_confusion'}


def _assert_params_changed(old, new):
  changed = _differs(old, new)
  assert all(jax.tree.leaves(changed['backbone'])), 'a backbone parameter did not move'
  assert all(jax.tree.leaves(changed['classifier']))
  assert any(jax.tree.leaves(changed['seg_head']))


# --- the train step ----------------------------------------------------------------------------


@pytest.mark.slow
def test_weak_step_with_mix_no_refinement():
  cfg = _config(**{'rs.refine': 'none', 'mix.kind': 'certainmix'})
  state, new_state, m, _ = _one_step(cfg, use_mix=True)
  assert set(m) == METRIC_KEYS | {'mix_cls', 'mix_cam', 'mix_seg'}
  assert all(np.isfinite(v) for v in m.values()), m
  np.testing.assert_allclose(
      m['loss'], m['cls'] + m['cam'] + m['seg'] + m['mix_cls'] + m['mix_cam'] + m['mix_seg'],
      rtol=1e-5)
  assert 0.0 < m['seed_coverage'] <= 1.0 and 0.0 <= m['seed_precision'] <= 1.0
  np.testing.assert_allclose(m['lr'], cfg.optim.lr, rtol=1e-6)  # step 0 of the poly decay
  assert int(new_state.step) == int(state.step) + 1 == 1
  _assert_params_changed(state.params, new_state.params)
  assert _tree_allfinite(new_state.params) and _tree_allfinite(new_state.batch_stats)
  # Train-mode BatchNorm updated every running statistic.
  assert all(jax.tree.leaves(_differs(state.batch_stats, new_state.batch_stats)))


@pytest.mark.slow
def test_weak_step_with_edgepredictmix():
  # edge_threshold 0 makes every pixel an edge pixel, so the band is surely ignored somewhere.
  cfg = _config(**{'rs.refine': 'none', 'mix.kind': 'edgepredictmix', 'mix.edge_threshold': 0.0,
                   'mix.edge_band': 1})
  state, new_state, m, _ = _one_step(cfg, use_mix=True)
  assert set(m) == METRIC_KEYS | {'mix_cls', 'mix_cam', 'mix_seg'}
  assert all(np.isfinite(v) for v in m.values()), m
  assert m['finite'] == 1 and m['mix_seg'] > 0
  _assert_params_changed(state.params, new_state.params)


@pytest.mark.slow
def test_weak_step_pamr_and_seed_window():
  cfg = _config(**{'rs.refine': 'pamr', 'train.log_every': 2})
  state, new_state, m, step = _one_step(cfg)
  assert set(m) == METRIC_KEYS
  assert all(np.isfinite(v) for v in m.values()), m
  np.testing.assert_allclose(m['loss'], m['cls'] + m['cam'] + m['seg'], rtol=1e-5)
  assert int(new_state.step) == 1
  _assert_params_changed(state.params, new_state.params)
  # The seed confusion window: every valid labelled pixel once per step, summed over the steps
  # since the last log line (log_every=2: steps 0-1, then from step 2 afresh), kept in the state.
  per_step = int(_batch()['valid'].sum())
  windows = [np.asarray(new_state.seed_window)]
  s = new_state
  for k in (1, 2):
    s, metrics = step(s, _batch(k), use_mix=False)
    windows.append(np.asarray(s.seed_window))
    np.testing.assert_array_equal(np.asarray(metrics['seed_confusion']), windows[-1])
  assert windows[0].shape == (NUM_CLASSES + 1, NUM_CLASSES + 1)
  assert [w.sum() for w in windows] == [per_step, 2 * per_step, per_step]
  assert (windows[1] >= windows[0]).all()


@pytest.mark.slow
def test_full_supervision_step_ema_and_nonfinite_guard():
  state, new_state, m, step = _one_step(_config(), supervision='full')
  assert set(m) == {'cls', 'cam', 'seg', 'loss', 'lr'} | GUARD_KEYS
  assert all(np.isfinite(v) for v in m.values()), m
  np.testing.assert_allclose(m['loss'], m['cls'] + m['cam'] + m['seg'], rtol=1e-5)
  assert int(new_state.step) == 1 and m['finite'] == 1 and m['nonfinite'] == 0
  _assert_params_changed(state.params, new_state.params)
  # EMA with the decay's warm-up: min(0.9, (1 + 0) / (10 + 0)) = 0.1 at step 0.
  expected = jax.tree.map(lambda p0, p1: 0.1 * p0 + 0.9 * p1, jax.device_get(state.params),
                          jax.device_get(new_state.params))
  for e, x in zip(jax.tree.leaves(expected), jax.tree.leaves(jax.device_get(new_state.ema_params))):
    np.testing.assert_allclose(x, e, rtol=1e-5, atol=1e-7)
  # A NaN pixel: the step is skipped (state kept, counters up), with the same compiled step.
  bad = _batch()
  bad['image'][1, 3, 3, 0] = np.nan
  kept = jax.device_get(new_state)
  after, m = step(new_state, bad, use_mix=False)  # as compiled (a default would recompile)
  m, after = _floats(m), jax.device_get(after)
  assert m['finite'] == 0 and m['nonfinite'] == 1 and m['nonfinite_run'] == 1
  assert int(after.step) == 2 and int(after.nonfinite) == 1
  for name in ('params', 'batch_stats', 'opt_state', 'ema_params'):
    assert not any(jax.tree.leaves(_differs(getattr(kept, name), getattr(after, name)))), name
  after2, m = step(after, _batch(3), use_mix=False)
  assert float(m['finite']) == 1 and int(after2.nonfinite_run) == 0 and int(after2.nonfinite) == 1


@pytest.mark.slow  # over 5 s; the module keeps fast tests
def test_bfloat16_computes_in_bf16_with_fp32_params_and_losses():
  cfg = _config(**{'train.dtype': 'bfloat16'})
  model = train.build_model(cfg, NUM_CLASSES)
  assert model.dtype == jnp.bfloat16
  _, state = _model_and_state()
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       {'params': state.params, 'batch_stats': state.batch_stats},
                       _batch()['image'])
  assert out['features']['stage5'].dtype == jnp.bfloat16
  assert out['cam'].dtype == out['seg'].dtype == out['logits'].dtype == jnp.float32
  new_state, metrics = jax.eval_shape(
      functools.partial(train.make_train_step(cfg, model), use_mix=True), state, _batch())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
  assert all(metrics[k].dtype == jnp.float32 for k in ('loss', 'cls', 'seg', 'cam', 'mix_seg'))


@pytest.mark.slow  # over 5 s; the module keeps fast tests
def test_cam_baseline_step_trains_only_the_cam_path(monkeypatch):
  state, new_state, m, step = _one_step(_config(), supervision='cam')
  assert set(m) == {'cls', 'loss', 'lr'} | GUARD_KEYS  # and seed_confusion (its CAM seed)
  assert m['loss'] == m['cls'] and np.isfinite(m['loss'])
  assert float(new_state.seed_window.sum()) == _batch()['valid'].sum()
  changed = _differs(state.params, new_state.params)
  assert all(jax.tree.leaves(changed['classifier']))
  # The classification loss never reaches the segmentation head: only weight decay moves it.
  grads_free = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-2), state.params['seg_head'],
                            new_state.params['seg_head'])
  assert all(jax.tree.leaves(grads_free))
  # Nor does the step run it (objectives.UNREAD_MODULES): its statistics stay, the backbone's move.
  stats_changed = _differs(state.batch_stats, new_state.batch_stats)
  assert not any(jax.tree.leaves(stats_changed['seg_head']))
  assert all(jax.tree.leaves(stats_changed['backbone']))
  # Against the step that runs the head, as the other supervisions do: the same update of all
  # the objective reads, for under 80 % of the FLOPs.
  monkeypatch.setitem(objectives.UNREAD_MODULES, 'cam', ())
  model, _ = _model_and_state()
  with_head = jax.jit(train.make_train_step(_config(), model, 'cam'), static_argnames=('use_mix',))
  with_head = with_head.lower(state, _batch()).compile()
  assert (reference.compiled_flops(step.lower(state, _batch()).compile())
          < 0.8 * reference.compiled_flops(with_head))
  reference_state, _ = with_head(state, _batch())
  for part, name in (('params', 'backbone'), ('params', 'classifier'),
                     ('batch_stats', 'backbone')):
    for a, b in zip(jax.tree.leaves(getattr(new_state, part)[name]),
                    jax.tree.leaves(getattr(reference_state, part)[name])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(b))))


@pytest.mark.slow  # over 5 s; the module keeps fast tests
def test_unknown_supervision_and_mix_without_seeds():
  model, _ = _model_and_state()
  with pytest.raises(ValueError, match='supervision'):
    train.make_train_step(_config(), model, 'pixels')
  with pytest.raises(ValueError, match='use_mix'):
    _one_step(_config(), supervision='full', use_mix=True)


# --- make_seed ---------------------------------------------------------------------------------


@pytest.mark.parametrize('refine', ['scg', 'pamr', 'none'])
def test_make_seed_hard_labels(refine):
  cfg = _config(**{'rs.refine': refine, 'rs.cam_only_steps': 5})
  batch = _batch(1)
  labels, valid = batch['label'], batch['valid']
  fn = jax.jit(lambda out, images, labels, valid, step: objectives.seed_of(
      cfg, out, images, labels, valid, step))
  for step in (0, 10):  # CAM seed, then segmentation seed
    seed, hard = jax.device_get(fn(_fake_out(step), batch['image'], labels, valid, step))
    assert seed.shape == (BATCH, CROP, CROP, NUM_CLASSES)
    assert hard.shape == (BATCH, CROP, CROP) and hard.dtype == np.int32
    assert np.all(np.isfinite(seed))
    assert set(np.unique(hard).tolist()) <= set(range(NUM_CLASSES + 1)) | {255}
    assert np.all(hard[~valid] == 255)
    for i in range(BATCH):
      assert not seed[i][..., labels[i] == 0].any()  # absent classes have no seed
      fg = {int(v) - 1 for v in np.unique(hard[i]) if 0 < v < 255}
      assert fg <= set(np.flatnonzero(labels[i]).tolist()), (i, fg, labels[i])
    v = hard[valid]
    assert (v == 0).any() and ((v > 0) & (v < 255)).any(), 'degenerate seed: test is vacuous'


# --- schedule and optimiser --------------------------------------------------------------------


def test_poly_schedule_matches_numpy():
  base, total, power = 0.1, 100, 0.9
  sched = train.poly_schedule(base, total, power)
  for t in (0, 1, 17, 50, 99, 100, 130):
    ref = base * max(1.0 - t / total, 0.0) ** power
    np.testing.assert_allclose(float(sched(t)), ref, rtol=1e-5, atol=1e-9)
  warm = train.poly_schedule(base, total, power, warmup_steps=10)
  for t in (0, 4, 9, 10, 60):
    ref = base * (1.0 - t / total) ** power * min(1.0, (t + 1) / 10)
    np.testing.assert_allclose(float(warm(t)), ref, rtol=1e-5)
  cfg = _config()
  np.testing.assert_allclose(float(train.learning_rate(cfg.optim, 10, 3)),
                             cfg.optim.lr * 0.7 ** cfg.optim.poly_power, rtol=1e-5)


def _random_params():
  """The tiny net's parameter tree with random values, plus a dense layer with a bias."""
  _, state = _model_and_state()
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                        state.params)
  params = dict(params, seg_head=dict(params['seg_head']), backbone=dict(params['backbone']))
  params['seg_head']['extra'] = dict(kernel=jnp.ones((3, 2)), bias=jnp.ones((2,)))
  params['backbone']['extra'] = dict(kernel=jnp.ones((3, 2)), bias=jnp.ones((2,)))
  return params


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_optimizer_weight_decay_mask_and_head_lr_mult():
  cfg = _config()
  cfg.optim.weight_decay = 1e-2
  cfg.optim.head_lr_mult = 10.0
  lr, momentum, wd = cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay
  params = _random_params()
  tx = train.make_optimizer(cfg.optim, 100)
  update = jax.jit(tx.update)
  opt_state = tx.init(params)
  p = _leaves(params)
  mult = {k: 1.0 if k.startswith("['backbone']") else cfg.optim.head_lr_mult for k in p}
  decayed = {k: k.endswith("['kernel']") for k in p}
  assert sum(decayed.values()) > 10 and sum(not v for v in decayed.values()) > 10
  for k in p:
    assert decayed[k] or k.endswith("['scale']") or k.endswith("['bias']"), k

  # Zero gradient: only weight decay moves anything, and only conv / dense kernels. The first
  # Nesterov step is -lr * (1 + momentum) * g with g = wd * p.
  u = _leaves(update(jax.tree.map(jnp.zeros_like, params), opt_state, params)[0])
  for k, upd in u.items():
    if decayed[k]:
      np.testing.assert_allclose(upd, -lr * mult[k] * (1 + momentum) * wd * p[k], rtol=1e-5,
                                 err_msg=k)
    else:
      assert not upd.any(), f'{k} (BatchNorm scale / bias or a bias) is weight-decayed'

  # Gradient of ones: the head moves head_lr_mult times as far as the backbone.
  u = _leaves(update(jax.tree.map(jnp.ones_like, params), opt_state, params)[0])
  for k, upd in u.items():
    g = 1.0 + (wd * p[k] if decayed[k] else 0.0)
    np.testing.assert_allclose(upd, -lr * mult[k] * (1 + momentum) * g, rtol=1e-5, err_msg=k)
  backbone_bn = u["['backbone']['bn1']['scale']"]
  head_bn = u["['seg_head']['aspp']['project']['bn']['scale']"]
  np.testing.assert_allclose(head_bn[0] / backbone_bn[0], cfg.optim.head_lr_mult, rtol=1e-5)


# --- the training loop -------------------------------------------------------------------------


class _Batches:
  """data_iter_fn for train(): numpy batches from a step-seeded generator; records its calls."""

  def __init__(self):
    self.starts = []
    self.served = 0

  def __call__(self, start):
    self.starts.append(start)

    def gen():
      step = start
      while True:
        batch = _batch(step)
        batch['ids'] = np.array([f'img{step}_{i}' for i in range(BATCH)])  # dropped by train()
        self.served += 1
        yield batch
        step += 1

    return gen()


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """train() for 2 steps (weak, SCG) with a checkpoint each step."""
  cfg = _config(**{'rs.refine': 'scg', 'train.steps': 2})
  workdir = str(tmp_path_factory.mktemp('train') / 'run')
  finished_before = train.is_finished(cfg, workdir)
  batches = _Batches()
  variables = train.train(cfg, workdir, NUM_CLASSES, supervision='weak', data_iter_fn=batches)
  return dict(cfg=cfg, workdir=workdir, variables=variables, batches=batches,
              finished_before=finished_before)


@pytest.mark.slow
def test_train_two_steps_and_is_finished(trained):
  cfg, workdir = trained['cfg'], trained['workdir']
  assert not trained['finished_before']
  assert train.is_finished(cfg, workdir)
  longer = _config(**{'train.steps': 3})
  assert not train.is_finished(longer, workdir)
  assert trained['batches'].starts == [0] and trained['batches'].served == 2
  logs = _metrics(workdir)
  assert [m['step'] for m in logs] == [1, 2]
  for m in logs:  # weak supervision with SCG, no mix before mix.start_step
    assert set(m) == LOG_KEYS
    assert all(np.isfinite(m[k]) for k in LOG_KEYS)
  variables = trained['variables']
  assert set(variables) == {'params', 'batch_stats'}
  assert _tree_allfinite(variables)
  _, state0 = _model_and_state()
  with ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints')) as ckpts:
    assert ckpts.latest_step() == 2
    step1 = ckpts.restore(state0.saveable(), step=1)
    step2 = ckpts.restore(state0.saveable(), step=2)
  assert int(step1['step']) == 1 and int(step2['step']) == 2
  # train() returns the last step's variables; the second step moved the parameters.
  assert not any(jax.tree.leaves(_differs(step2['params'], variables['params'])))
  assert not any(jax.tree.leaves(_differs(step2['batch_stats'], variables['batch_stats'])))
  assert any(jax.tree.leaves(_differs(step1['params'], step2['params'])))


@pytest.mark.slow
def test_train_resumes_from_last_checkpoint(trained):
  workdir = trained['workdir'] + '_resumed'
  shutil.copytree(trained['workdir'], workdir)
  cfg = _config(**{'rs.refine': 'scg', 'train.steps': 4})
  assert not train.is_finished(cfg, workdir)
  batches = _Batches()
  variables = train.train(cfg, workdir, NUM_CLASSES, supervision='weak', data_iter_fn=batches)
  assert batches.starts == [2] and batches.served == 2
  logs = _metrics(workdir)
  assert [m['step'] for m in logs] == [1, 2, 3, 4]
  # The first resumed step ran with the restored step counter: its lr is the schedule at t=2.
  ref = cfg.optim.lr * (1 - 2 / 4) ** cfg.optim.poly_power
  np.testing.assert_allclose(logs[2]['lr'], ref, rtol=1e-5)
  assert train.is_finished(cfg, workdir)
  _, state0 = _model_and_state()
  with ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints')) as ckpts:
    assert ckpts.latest_step() == 4
    tree = ckpts.restore(state0.saveable())
  assert int(tree['step']) == 4
  # The returned variables are the last checkpoint's.
  assert not any(jax.tree.leaves(_differs(tree['params'], variables['params'])))
