"""Images/s of the full RecurSeed + CertainMix training step, JAX against PyTorch eager.

    python bench/train_step.py [--backbone resnet50] [--crop 128] [--batch 8] [--dtype float32]
        [--steps 5] [--warmup 2] [--mix | --no-mix] [--frameworks jax,torch]

The step is the whole of train.make_train_step (forward, seed with the recursion switch, SCG at
crop / refine_stride, certainty filter, CertainMix, second forward on the mixed batch, the three
losses on both, backward, SGD Nesterov with weight decay), against bench/torch_step.py, which
ports it to PyTorch eager on tests/torch_reference.TorchRecurSeedNet (the authors' network);
tests/test_torch_step.py checks that the ports compute the same values. Each framework runs in
its own subprocess, one after the other on the same machine in the same run, so neither sees the
other's allocator, threads or imports. Device: each worker takes its framework's default (the
GPU where its CUDA build sees one, else the CPU); a warning says when the two differ.

Measured per framework: compile (JAX: lower + compile of the jitted step, ahead of time), warm-up
steps (not timed), then `--steps` timed steps ended by a device sync (block_until_ready /
torch.cuda.synchronize); images/s = batch * steps / seconds. Peak memory: on a GPU JAX's
memory_stats()['peak_bytes_in_use'] and torch.cuda.max_memory_allocated(), both over the whole
worker (so including compile-time autotuning and cudnn.benchmark scratch); on the CPU the
worker's peak resident set during the timed steps (VmHWM, reset after warm-up through
/proc/self/clear_refs) minus its resident set after imports, i.e. parameters, optimiser state,
activations, the executable and allocator caches. FLOPs: counted analytically on the traced JAX
step (see `count_flops`: forward and backward from the jaxpr of the grad, not forward x 3; the
forward x 3 estimate and XLA's cost_analysis() are printed beside it); the same count divides
both step times, since both do the same work. MFU = achieved FLOP/s / the card's dense bf16
tensor peak (PEAK_TFLOPS; --peak_tflops overrides); n/a on the CPU.

Backbones: resnet50 / resnet101 are configs/voc12_rs50.py's network (DeepLabv3+ ResNet at output
stride 16) with a ResNet-101 body for the latter; tiny is the demo's (configs/default.py). SCG
runs at crop / --refine_stride, by default the output stride (the CAM's resolution): at stride 4
a 512 crop would make 16384 x 16384 affinities per image.

The GPU run (bf16 against PyTorch AMP: autocast bf16, channels_last, cudnn.benchmark, fused SGD):

    python bench/train_step.py --backbone resnet50 --crop 512 --batch 16 --dtype bfloat16 \
        --steps 20 --warmup 3

Prints a markdown table (rows jax, torch), the ratio JAX / PyTorch, and last one JSON line.

`--profile DIR` (JAX only, in this process): the step's parts, each jitted alone on the values the
step gives it (step_parts: the backbone and the heads forward and backward, the losses, the seed
with SCG, the certainty filter, CertainMix, the second (mixed) forward and backward, the
optimiser), with XLA's cost analysis of each (FLOPs of the lowered function, before
optimisation) and, on a GPU, its time; then `--steps` steps of the whole jitted step under
jax.profiler.trace(DIR) (open with tensorboard or xprof). On a CPU the table has FLOPs only:

    python bench/train_step.py --backbone resnet50 --crop 128 --batch 8 --profile /tmp/prof
"""

import argparse
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from recurseed_jax import cli  # os and sys only
from recurseed_jax import host_info

FRAMEWORKS = ('jax', 'torch')
BACKBONES = ('resnet50', 'resnet101', 'tiny')

# Dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets), matched in this order against the
# device name (JAX's device_kind or torch.cuda.get_device_name).
PEAK_TFLOPS = (
    ('H200', 989.0),
    ('H100 PCIe', 756.0),
    ('H100', 989.0),     # SXM
    ('A100', 312.0),
    ('L40S', 362.0),
    ('A10', 125.0),
    ('L4', 121.0),
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  p.add_argument('--backbone', default='resnet50', choices=BACKBONES)
  p.add_argument('--crop', type=int, default=128)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--steps', type=int, default=5, help='timed steps per framework')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after the compile')
  p.add_argument('--mix', action=argparse.BooleanOptionalAction, default=True,
                 help='CertainMix and the second forward (on by default)')
  p.add_argument('--frameworks', default='jax,torch')
  p.add_argument('--num_classes', type=int, default=0, help="0: the config's (VOC: 20)")
  p.add_argument('--refine', default='scg', choices=('scg', 'none'))
  p.add_argument('--refine_stride', type=int, default=0, help='0: the output stride')
  p.add_argument('--peak_tflops', type=float, default=0.0,
                 help="the device's peak for MFU (0: from the table by device name)")
  p.add_argument('--profile', default='', metavar='DIR',
                 help="JAX only: the step's parts (FLOPs; times on a GPU) and a profiler trace "
                      'written to DIR')
  p.add_argument('--worker', default='', help=argparse.SUPPRESS)
  p.add_argument('--result_file', default='', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  frameworks = [f for f in args.frameworks.split(',') if f]
  bad = [f for f in frameworks if f not in FRAMEWORKS]
  if bad or not frameworks:
    p.error(f'--frameworks must list some of {FRAMEWORKS}, got {args.frameworks!r}')
  args.frameworks = frameworks
  if args.crop % 32:
    p.error(f"--crop={args.crop} must be a multiple of 32 (the network's largest stride)")
  return args


def make_config(args):
  """The benchmarked config: the real network at the bench's crop, batch and dtype."""
  if args.backbone == 'tiny':
    from configs import default
    c = default.get_config()
  else:
    from configs import voc12_rs50
    c = voc12_rs50.get_config()
    if args.backbone == 'resnet101':
      c.model.stage_sizes = (3, 4, 23, 3)
  c.model.init = 'scratch'
  c.data.crop_size = args.crop
  c.train.batch_size = args.batch
  c.train.steps = 100_000  # the poly schedule's length: the lr stays away from 0
  c.optim.lr = 1e-3  # random images from scratch: a small lr keeps the loss finite (same work)
  c.train.dtype = args.dtype
  c.train.ema_decay = 0.0
  c.parallel.mode = 'jit'
  c.rs.refine = args.refine
  c.rs.refine_stride = args.refine_stride or c.model.output_stride
  if args.crop % c.rs.refine_stride:
    raise ValueError(f'--crop={args.crop} must be a multiple of the refine stride '
                     f'{c.rs.refine_stride}')
  return c


def num_classes_of(args, config):
  return args.num_classes or config.data.num_classes


def fake_batch(args, num_classes, seed=0):
  """Random NHWC images, multi-hot labels (1-3 classes each), all pixels valid."""
  rng = np.random.default_rng(seed)
  b, s = args.batch, args.crop
  labels = np.zeros((b, num_classes), np.float32)
  for i in range(b):
    labels[i, rng.choice(num_classes, size=min(1 + i % 3, num_classes), replace=False)] = 1.0
  return dict(image=rng.normal(size=(b, s, s, 3)).astype(np.float32),
              mask=np.zeros((b, s, s), np.int32), valid=np.ones((b, s, s), bool), label=labels)


# --- memory on the CPU -------------------------------------------------------------------------


def _status_kib(field):
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    pass
  return None


class HostMemory:
  """Peak resident set of this process over a phase, relative to a baseline (Linux)."""

  def __init__(self):
    self.baseline = _status_kib('VmRSS') or 0
    self.method = 'peak RSS (getrusage) - RSS after imports; includes the compile'

  def reset_peak(self):
    try:  # hand the heap the compiler freed back to the OS, so RSS shows live memory only
      import ctypes
      ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
      pass
    try:
      with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current RSS
      self.method = 'peak RSS of the timed steps (VmHWM) - RSS after imports'
    except OSError:
      pass

  def peak_mib(self):
    peak = _status_kib('VmHWM')
    if peak is None:
      peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - self.baseline) / 1024


def peak_for(name, override=0.0):
  if override:
    return override
  for key, tflops in PEAK_TFLOPS:
    if key.lower() in name.lower():
      return tflops
  return None


# --- FLOPs of the traced step -------------------------------------------------------------------


def _subjaxprs(value):
  """Jaxprs inside an equation parameter (a Jaxpr, a ClosedJaxpr, or a tuple of them)."""
  if hasattr(value, 'eqns'):
    return [value]
  if hasattr(value, 'jaxpr') and hasattr(value.jaxpr, 'eqns'):
    return [value.jaxpr]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _subjaxprs(v)]
  return []


def count_flops(jaxpr):
  """{'conv': ..., 'dot': ...}: multiply-add FLOPs (2 per MAC) of a jaxpr, sub-jaxprs included.

  conv_general_dilated: 2 * output elements * (input channels per group) * kernel taps, divided
  by the lhs dilation (the input gradient of a strided conv is a conv over a zero-dilated
  gradient: only 1 / prod(dilation) of its taps touch data, so it costs the forward's count).
  dot_general: 2 * output elements * contracted size. Scans count `length` times, conds their
  costliest branch, while loops once.
  """
  total = {'conv': 0.0, 'dot': 0.0}
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature, spatial...)
      taps = math.prod(rhs[d] for d in spec[2:])
      out = math.prod(eqn.outvars[0].aval.shape)
      total['conv'] += 2.0 * out * rhs[spec[1]] * taps / math.prod(eqn.params['lhs_dilation'])
      continue
    if name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      out = math.prod(eqn.outvars[0].aval.shape)
      total['dot'] += 2.0 * out * math.prod(lhs[d] for d in contract)
      continue
    times = eqn.params.get('length', 1) if name == 'scan' else 1
    subs = [count_flops(j) for v in eqn.params.values() for j in _subjaxprs(v)]
    if name == 'cond' and subs:
      subs = [max(subs, key=lambda s: s['conv'] + s['dot'])]
    for sub in subs:
      for k in total:
        total[k] += times * sub[k]
  return total


# --- the workers ----------------------------------------------------------------------------------


def run_jax(args):
  """Compiles and times the jitted step; returns the result dict."""
  mem = HostMemory()
  import jax

  from recurseed_jax import train

  config = make_config(args)
  num_classes = num_classes_of(args, config)
  device = jax.devices()[0]
  s = train.setup(config, num_classes, 'weak')
  t = time.perf_counter()
  state = jax.block_until_ready(s.init_state())
  init_s = time.perf_counter() - t
  batch = s.put_batch(fake_batch(args, num_classes))

  # FLOPs from the trace of the very step that runs (its grad: forward and backward).
  step_fn = functools.partial(s.step_fn, use_mix=args.mix)
  flops = count_flops(jax.make_jaxpr(step_fn)(state, batch).jaxpr)

  def forward(variables, images):
    return s.model.apply(variables, images, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(0)})
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  fwd = count_flops(jax.make_jaxpr(forward)(variables, batch['image']).jaxpr)
  forwards = 2 if args.mix else 1

  t, cpu = time.perf_counter(), time.process_time()
  compiled = s.step(args.mix).lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  compile_cpu_s = time.process_time() - cpu  # on a shared machine, wall time overstates it
  xla_mib = None
  try:  # XLA's own account of the step's memory: arguments + outputs - donated + temporaries
    m = compiled.memory_analysis()
    xla_mib = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
               m.temp_size_in_bytes) / 2**20
  except Exception:
    pass
  xla_flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost['flops']) if cost and 'flops' in cost else None
  except Exception:
    pass  # not every backend reports a cost analysis

  t = time.perf_counter()
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  warmup_s = time.perf_counter() - t
  mem.reset_peak()
  t = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - t
  loss = float(metrics['loss'])

  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    peak, method = stats['peak_bytes_in_use'] / 2**20, 'jax memory_stats peak_bytes_in_use'
  else:
    peak, method = mem.peak_mib(), mem.method
  return dict(framework='jax', platform=device.platform, device=device.device_kind,
              version=jax.__version__, seconds=seconds, init_s=init_s, compile_s=compile_s,
              compile_cpu_s=compile_cpu_s, warmup_s=warmup_s, xla_memory_mib=xla_mib,
              peak_mib=peak, memory=method, loss=loss,
              flops_step=flops['conv'] + flops['dot'], flops_conv=flops['conv'],
              flops_dot=flops['dot'], flops_forward=fwd['conv'] + fwd['dot'],
              flops_fwd_x3=3 * forwards * (fwd['conv'] + fwd['dot']), flops_xla=xla_flops)


def run_torch(args, use_cuda):
  """Times the eager step; returns the result dict."""
  mem = HostMemory()
  import torch

  from bench import torch_step

  config = make_config(args)
  num_classes = num_classes_of(args, config)
  device = torch.device('cuda' if use_cuda else 'cpu')
  if use_cuda:
    torch.backends.cudnn.benchmark = True
  amp = torch.bfloat16 if args.dtype == 'bfloat16' else None
  step = torch_step.TorchTrainStep(config, num_classes, device, amp_dtype=amp,
                                   channels_last=use_cuda)
  batch = fake_batch(args, num_classes)
  fmt = torch.channels_last if use_cuda else torch.contiguous_format
  images = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).to(device, memory_format=fmt)
  labels = torch.from_numpy(batch['label']).to(device)
  valid = torch.from_numpy(batch['valid']).to(device)

  def sync():
    if use_cuda:
      torch.cuda.synchronize()

  t = time.perf_counter()
  for _ in range(args.warmup):
    loss = step(images, labels, valid, use_mix=args.mix)
  sync()
  warmup_s = time.perf_counter() - t
  mem.reset_peak()
  t = time.perf_counter()
  for _ in range(args.steps):
    loss = step(images, labels, valid, use_mix=args.mix)
  sync()
  seconds = time.perf_counter() - t
  if use_cuda:
    name = torch.cuda.get_device_name(device)
    peak, method = torch.cuda.max_memory_allocated(device) / 2**20, 'torch max_memory_allocated'
  else:
    name, peak, method = 'cpu', mem.peak_mib(), mem.method
  return dict(framework='torch', platform=device.type, device=name, version=torch.__version__,
              threads=torch.get_num_threads(), seconds=seconds, compile_s=None,
              warmup_s=warmup_s, peak_mib=peak, memory=method, loss=float(loss))


def worker_main(args):
  if args.worker == 'jax':
    result = run_jax(args)
  else:
    import torch
    result = run_torch(args, use_cuda=torch.cuda.is_available())
  with open(args.result_file, 'w') as f:
    json.dump(result, f)


# --- --profile: the step's parts ----------------------------------------------------------------


def _xla_flops(lowered):
  """XLA's cost analysis of a lowered (not yet optimised) function: its FLOPs, or None."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # not every backend reports one
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def step_parts(config, model, state, batch, use_mix):
  """[(name, f, args)]: the train step's parts as separate functions, in the order it runs them.

  Each is what train.make_train_step runs for that part, on the values it sees (abstract on the
  CPU): the backbone and the heads (CAM classifier + DeepLabv3+) in training mode, forward alone
  and forward with the backward of their parameters (the backward is the difference); the
  losses of one pass with their gradient; the seed (recursion switch, SCG, certainty filter)
  and the filter alone; CertainMix; the whole network forward, then with its backward, on the
  mixed batch; the optimiser's update of the parameters (and EMA).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from recurseed_jax import method
  from recurseed_jax import objectives
  from recurseed_jax import train
  from recurseed_jax.models import recurseed_net

  params, stats = state.params, state.batch_stats
  key = jax.random.key(0)
  backbone = recurseed_net._backbone(model)
  seg_head = recurseed_net._v3plus_head(model, 'seg_head')
  classifier = nn.Conv(model.num_classes, (1, 1), use_bias=False, dtype=model.dtype)

  def backbone_fwd(p, x):
    return backbone.apply({'params': p, 'batch_stats': stats['backbone']}, x, train=True,
                          mutable=['batch_stats'])[0]

  def heads_fwd(p, high, low):
    cam = classifier.apply({'params': p['classifier']}, high).astype(jnp.float32)
    seg = seg_head.apply({'params': p['seg_head'], 'batch_stats': stats['seg_head']}, high, low,
                         True, mutable=['batch_stats'], rngs={'dropout': key})[0]
    return dict(cam=cam, logits=jnp.mean(cam, axis=(1, 2)), seg=seg.astype(jnp.float32))

  def with_backward(f, wrt=1):
    """f's forward and the backward of its first `wrt` arguments (cotangents of ones)."""
    def run(*args):
      out, vjp = jax.vjp(lambda *a: f(*a, *args[wrt:]), *args[:wrt])
      return vjp(jax.tree.map(jnp.ones_like, out))
    return run

  def network_fwd(p, x):
    return model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                       mutable=['batch_stats'], rngs={'dropout': key})[0]

  def share(parts):
    total, count = parts
    return total / jnp.maximum(count, 1.0)

  def losses(out, hard, labels):
    return objectives.supervised_losses(config, out, hard, labels, batch['image'].shape[1:3],
                                        share)[0]

  def seed(out, images, labels, valid):
    return objectives.seed_of(config, out, images, labels, valid, state.step)

  def certainty(seed):
    return method.hard_labels(seed, config.rs.certain, config.rs.uncertain,
                              valid=batch['valid'])

  def mix(images, hard, labels):
    m = config.mix
    return method.mix_batch(key, images, hard, labels, kind=m.kind, class_prob=m.class_prob,
                            min_area=m.min_area)[:3]

  tx = train.make_optimizer(config.optim, config.train.steps)

  def optimiser(p, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  cpu = jax.devices()[0].platform == 'cpu'
  value = (lambda f, *a: jax.eval_shape(f, *a)) if cpu else (lambda f, *a: jax.jit(f)(*a))
  images, labels, valid = batch['image'], batch['label'], batch['valid']
  bp = params['backbone']
  hp = {'classifier': params['classifier'], 'seg_head': params['seg_head']}
  feats = value(backbone_fwd, bp, images)
  out = dict(value(heads_fwd, hp, feats['stage5'], feats['stage2']), features=feats)
  soft, hard = value(seed, out, images, labels, valid)
  parts = [
      ('backbone forward', backbone_fwd, (bp, images)),
      ('backbone forward + backward', with_backward(backbone_fwd), (bp, images)),
      ('heads (CAM + DeepLabv3+) forward', heads_fwd, (hp, feats['stage5'], feats['stage2'])),
      ('heads (CAM + DeepLabv3+) forward + backward', with_backward(heads_fwd, 3),
       (hp, feats['stage5'], feats['stage2'])),
      ('losses + their gradient (one pass)', with_backward(losses),
       ({k: out[k] for k in ('cam', 'logits', 'seg')}, hard, labels)),
      ('seed: switch + SCG + certainty filter', seed, (out, images, labels, valid)),
      ('certainty filter', certainty, (soft,)),
  ]
  if use_mix:
    mixed = value(mix, images, hard, labels)
    parts += [('CertainMix', mix, (images, hard, labels)),
              ('second (mixed) pass forward', network_fwd, (params, mixed[0])),
              ('second (mixed) pass forward + backward', with_backward(network_fwd),
               (params, mixed[0]))]
  grads = value(lambda p: p, params)
  parts.append(('optimiser (SGD Nesterov, weight decay)', optimiser,
                (params, grads, state.opt_state)))
  return parts


def _time_ms(jitted, args, reps):
  import jax
  jax.block_until_ready(jitted(*args))  # compile and warm up
  t = time.perf_counter()
  for _ in range(reps):
    out = jitted(*args)
  jax.block_until_ready(out)
  return 1000 * (time.perf_counter() - t) / reps


def profile_jax(args):
  """FLOPs (XLA's cost analysis) and, on a GPU, times of the step's parts; a profiler trace."""
  import jax

  from recurseed_jax import train

  config = make_config(args)
  num_classes = num_classes_of(args, config)
  s = train.setup(config, num_classes, 'weak')
  state = s.init_state()
  batch = s.put_batch(fake_batch(args, num_classes))
  gpu = jax.devices()[0].platform != 'cpu'
  rows = []
  for name, f, fargs in step_parts(config, s.model, state, batch, args.mix):
    jitted = jax.jit(f)
    row = dict(part=name, flops=_xla_flops(jitted.lower(*fargs)))
    row['ms'] = _time_ms(jitted, fargs, args.steps) if gpu else None
    rows.append(row)
  compiled = s.step(args.mix).lower(state, batch).compile()
  step = dict(part='whole step', flops=_xla_flops(s.step(args.mix).lower(state, batch)))
  os.makedirs(args.profile, exist_ok=True)
  state = compiled(state, batch)[0]  # warm (the state is donated: keep the new one)
  jax.block_until_ready(state)
  t = time.perf_counter()
  with jax.profiler.trace(args.profile):
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  step['ms'] = 1000 * (time.perf_counter() - t) / args.steps
  return dict(device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform,
              rows=rows, step=step, trace=os.path.abspath(args.profile))


def print_profile(args, res):
  """The parts' table: backward rows as the difference of forward + backward and forward."""
  by = {r['part']: r for r in res['rows']}

  def diff(a, b, key):
    if a not in by or b not in by or by[a][key] is None or by[b][key] is None:
      return None
    return by[a][key] - by[b][key]

  table = []
  for r in res['rows']:
    name = r['part']
    if name.endswith('forward + backward'):
      fwd = name.replace(' + backward', '')
      table.append((name.replace('forward + backward', 'backward'), diff(name, fwd, 'flops'),
                    diff(name, fwd, 'ms')))
    elif name == 'seed: switch + SCG + certainty filter':
      table.append(('seed: switch + SCG (without the filter)',
                    diff(name, 'certainty filter', 'flops'), diff(name, 'certainty filter', 'ms')))
    else:
      table.append((name, r['flops'], r['ms']))
  gpu = res['platform'] != 'cpu'
  total = res['step']['flops']
  times = 2 if args.mix else 1  # the losses run on both passes
  known = [(f * (times if n.startswith('losses') else 1)) for n, f, _ in table if f is not None]
  print(f"\nthe step's parts: {args.backbone}, crop {args.crop}, batch {args.batch}, "
        f"{args.dtype}, mix {'on' if args.mix else 'off'}, on {res['device']}")
  print('\n| part | GFLOPs | share of the step | ms |')
  print('|---|---|---|---|')
  for name, flops, ms in table:
    share = f'{100 * flops / total:.1f} %' if flops is not None and total else 'n/a'
    ms_text = f'{ms:.2f}' if ms is not None else 'n/a (needs a GPU)'
    print(f"| {name} | {_fmt(None if flops is None else flops / 1e9, '.2f')} | {share} | "
          f'{ms_text} |')
  step_ms = res['step']['ms']
  parts_g = sum(known) / 1e9
  share = f'{100 * sum(known) / total:.1f} %' if total else 'n/a'
  print(f'| sum of the parts (losses {times}x) | {parts_g:.2f} | {share} | |')
  total_g = _fmt(None if total is None else total / 1e9, '.2f')
  print(f"| whole step (jitted, as it trains) | {total_g} | 100 % | {step_ms:.1f}"
        f"{'' if gpu else ' (CPU)'} |")
  print(f"\nFLOPs: XLA's cost analysis of each part jitted alone (before optimisation); the step "
        f"runs the losses twice with mixing and the optimiser once. Profiler trace: "
        f"{res['trace']} (tensorboard --logdir, or xprof)."
        + ('' if gpu else ' Per-part times need a GPU (on this CPU only the whole step is timed).'))
  return table


# --- the parent: runs the workers, prints the table ---------------------------------------------


def _fmt(value, spec):
  return 'n/a' if value is None else format(value, spec)


def summarise(args, results, peak_override):
  """Adds img/s, step ms, TFLOP/s and MFU to every result; returns (rows, ratio)."""
  flops = next((r['flops_step'] for r in results if 'flops_step' in r), None)
  for r in results:
    r['img_per_s'] = args.batch * args.steps / r['seconds']
    r['step_ms'] = 1000 * r['seconds'] / args.steps
    r['tflops'] = flops / (r['seconds'] / args.steps) / 1e12 if flops else None
    peak = peak_for(r['device'], peak_override) if r['platform'] in ('gpu', 'cuda') else None
    r['peak_tflops'] = peak
    r['mfu'] = r['tflops'] / peak if peak and r['tflops'] else None
  by = {r['framework']: r for r in results}
  ratio = by['jax']['img_per_s'] / by['torch']['img_per_s'] if len(by) == 2 else None
  return results, ratio


def print_table(args, results, ratio):
  print()
  print(f'RecurSeed + CertainMix train step: {args.backbone}, crop {args.crop}, batch '
        f'{args.batch}, {args.dtype}, mix {"on" if args.mix else "off"}, {args.steps} timed '
        f'steps after {args.warmup} warm-up')
  print()
  print('| framework | device | img/s | step ms | compile s | peak memory MiB | TFLOP/s | MFU |')
  print('|---|---|---|---|---|---|---|---|')
  for r in results:
    mfu = 'n/a' if r['mfu'] is None else f"{100 * r['mfu']:.1f} %"
    print(f"| {r['framework']} {r['version']} | {r['device']} | {r['img_per_s']:.2f} | "
          f"{r['step_ms']:.0f} | {_fmt(r['compile_s'], '.1f')} | {r['peak_mib']:.0f} | "
          f"{_fmt(r['tflops'], '.3f')} | {mfu} |")
  print()
  if ratio is not None:
    print(f'ratio JAX / PyTorch (img/s): {ratio:.2f}')
  jax_r = next((r for r in results if r['framework'] == 'jax'), None)
  if jax_r:
    xla = jax_r['flops_xla']
    print(f"FLOPs per step (traced jaxpr, fwd + bwd, conv + dot): {jax_r['flops_step'] / 1e9:.1f} G"
          f" (conv {jax_r['flops_conv'] / 1e9:.1f} G, dot {jax_r['flops_dot'] / 1e9:.2f} G); "
          f"forward x 3: {jax_r['flops_fwd_x3'] / 1e9:.1f} G; XLA cost_analysis: "
          f"{'n/a' if xla is None else f'{xla / 1e9:.1f} G'}")
  for r in results:
    print(f"{r['framework']} memory: {r['memory']}")
  if jax_r:
    print(f"jax compile: {jax_r['compile_s']:.1f} s wall, {jax_r['compile_cpu_s']:.1f} s CPU; "
          f"XLA memory_analysis of the step: {_fmt(jax_r['xla_memory_mib'], '.0f')} MiB")


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    worker_main(args)
    return
  if args.profile:
    res = profile_jax(args)
    table = print_profile(args, res)
    print(json.dumps(dict(bench='train_step_profile', backbone=args.backbone, crop=args.crop,
                          machine=host_info.describe(),
                          batch=args.batch, dtype=args.dtype, mix=args.mix, device=res['device'],
                          trace=res['trace'], step=res['step'],
                          parts=[dict(part=n, flops=f, ms=t) for n, f, t in table])))
    return
  argv = list(sys.argv[1:] if argv is None else argv)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for fw in args.frameworks:
      path = os.path.join(tmp, f'{fw}.json')
      print(f'--- {fw} ...', file=sys.stderr, flush=True)
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv,
                             f'--worker={fw}', f'--result_file={path}'], check=False)
      if proc.returncode or not os.path.exists(path):
        sys.exit(f'the {fw} worker failed (exit {proc.returncode}); its output is above')
      with open(path) as f:
        results.append(json.load(f))
  results, ratio = summarise(args, results, args.peak_tflops)
  print_table(args, results, ratio)
  platforms = {'cuda' if r['platform'] == 'gpu' else r['platform'] for r in results}
  if len(platforms) > 1:
    print(f'WARNING: the frameworks ran on different devices ({", ".join(sorted(platforms))}): '
          'the ratio compares nothing; install the CUDA builds of both', file=sys.stderr)
  summary = dict(bench='train_step', backbone=args.backbone, crop=args.crop, batch=args.batch,
                 dtype=args.dtype, mix=args.mix, steps=args.steps, warmup=args.warmup,
                 refine=args.refine, cores=os.cpu_count(), ratio_jax_over_torch=ratio,
                 device=results[0]['device'], machine=host_info.describe(),
                 results=results)
  print(json.dumps(summary, default=lambda x: None))


if __name__ == '__main__':
  cli.run(main)
