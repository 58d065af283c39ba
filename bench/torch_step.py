"""The RecurSeed + CertainMix training step in PyTorch eager: the baseline of bench/train_step.py.

Each function here ports its twin in recurseed_jax/method/*.py and recurseed_jax/train.py
(`make_seed`, `_supervised_losses`, `make_train_step`) operation for operation, so the benchmark
times the same work on both sides; tests/test_torch_step.py checks that they agree. Layout is
torch's NCHW (seeds [B, C, h, w], hard maps [B, H, W], images [B, 3, H, W]); the network is
tests/torch_reference.TorchRecurSeedNet (the authors' RSEPM layout).

The step mirrors ours also where a shortcut would be cheaper: both seeds are computed before the
recursion switch picks one, SCG runs on every image, and the mix pairs the whole batch. What it
leaves out is bookkeeping the JAX step does on top (seed metrics, the non-finite guard), which
only makes our side slower. On a GPU it is the usual PyTorch AMP recipe: torch.autocast bf16,
channels_last, cudnn.benchmark, fused SGD.
"""

import contextlib
import os
import sys

import torch
from torch.nn import functional as F

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests')
if _TESTS not in sys.path:
  sys.path.append(_TESTS)

import torch_reference

IGNORE = 255


# --- seeds (recurseed_jax/method/seeds.py) ----------------------------------------------------


def resize(x, size):
  """Bilinear, half-pixel centres, no antialias: the values of method.resize, NCHW."""
  size = tuple(int(s) for s in size)
  if tuple(x.shape[-2:]) == size:
    return x
  return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def _present(labels):
  return (labels > 0.5).float()[:, :, None, None]


def cam_seed(cam, labels, eps=1e-5):
  a = F.relu(cam) * _present(labels)
  return a / (a.amax(dim=(2, 3), keepdim=True) + eps)


def seg_seed(seg_logits, labels):
  return torch.softmax(seg_logits, dim=1)[:, 1:] * _present(labels)


def select_seed(step, cam, seg, cam_only_steps, seed_mix):
  # Both seeds exist before the switch, as in the jitted step (where the step is traced).
  mixed = (1.0 - seed_mix) * seg + seed_mix * cam
  return cam if step < cam_only_steps else mixed


# --- SCG refinement (recurseed_jax/method/refine.py) ------------------------------------------


def _minmax(v, dim, eps):
  lo = v.amin(dim=dim, keepdim=True)
  hi = v.amax(dim=dim, keepdim=True)
  return (v - lo) / (hi - lo + eps)


def _columns(a, eps):
  """Each column of [B, HW, HW] divided by its sum (the authors' normalise over dim 1)."""
  return a / (a.sum(dim=1, keepdim=True) + eps)


def _level_affinity(f, first_th, second_th, iteration, second_weight, eps):
  """Column-normalised max(S1, w2 * S2) of one level for a batch; f is [B, HW, D]."""
  hw = f.shape[1]
  n = f / (torch.linalg.vector_norm(f, dim=-1, keepdim=True) + eps)
  s = F.relu(torch.bmm(n, n.transpose(1, 2)))
  s = torch.where(s < first_th, 0.0, s)
  s1 = _columns(s, eps)
  base = _columns(s * (1.0 - torch.eye(hw, dtype=s.dtype, device=s.device)), eps)
  s2 = base
  for _ in range(iteration):
    s2 = _columns(torch.bmm(s2, base), eps)
  s2 = torch.where(s2 < second_th / hw, 0.0, s2)
  return _columns(torch.maximum(s1, second_weight * s2), eps)


def scg(features, seed, *, first_th=0.5, second_th=0.1, fg_th=0.3, bg_th=0.05, iteration=1,
        second_weight=1.0, eps=1e-10):
  """method.scg for a batch: features list of [B, D_l, h, w], seed [B, C, h, w] -> refined."""
  if torch.is_tensor(features):
    features = [features]
  b, c, h, w = seed.shape
  # Full float32 matmuls, as ours (precision HIGHEST): TF32 would move values across thresholds.
  tf32 = torch.backends.cuda.matmul.allow_tf32
  torch.backends.cuda.matmul.allow_tf32 = False
  try:
    aff = sum(_level_affinity(f.detach().float().flatten(2).transpose(1, 2), first_th,
                              second_th, iteration, second_weight, eps) for f in features)
    aff = _minmax(aff, 1, eps)  # each column over rows
    m = seed.detach().float().flatten(2).transpose(1, 2)  # [B, HW, C]
    fg = _minmax(torch.bmm(aff, (m >= fg_th).float()), 1, eps)
    bg = _minmax(torch.bmm(aff, (m <= bg_th).float()), 1, eps)
  finally:
    torch.backends.cuda.matmul.allow_tf32 = tf32
  out = _minmax(F.relu(fg - bg), 1, eps)
  return out.transpose(1, 2).reshape(b, c, h, w)


# --- certainty filter (recurseed_jax/method/certainty.py) -------------------------------------


def hard_labels(seed, certain=0.55, uncertain=0.10, valid=None):
  """[B, C, H, W] scores -> int64 [B, H, W]: class + 1, 0 (background) or 255."""
  best, arg = seed.max(dim=1)
  out = torch.where(best >= certain, arg + 1,
                    torch.where(best <= uncertain, torch.zeros_like(arg),
                                torch.full_like(arg, IGNORE)))
  if valid is not None:
    out = torch.where(valid, out, torch.full_like(out, IGNORE))
  return out


# --- CertainMix (recurseed_jax/method/mix.py) --------------------------------------------------


def _onehot_fg(hard, num_classes):
  """[B, H, W] -> [B, H, W, C] float, class c at label c + 1; background and 255 all zero."""
  classes = torch.arange(1, num_classes + 1, device=hard.device)
  return (hard[..., None] == classes).float()


def _class_areas(hard, num_classes):
  return _onehot_fg(hard, num_classes).sum(dim=(1, 2))


def draw_mix(generator, batch, num_classes, device):
  """(perm, draws) of one mix: the random bits method.mix_batch draws from its key."""
  perm = torch.randperm(batch, generator=generator, device=device)
  draws = torch.rand((batch, num_classes), generator=generator, device=device)
  return perm, draws


def mix_batch(images, hard, labels, perm, draws, *, class_prob=0.5, min_area=0.01):
  """method.mix_batch with its random bits given: returns (images, hard, labels, mask).

  images [B, 3, H, W]; hard [B, H, W]; labels [B, C] float; perm [B] (image i receives pixels
  of perm[i]); draws [B, C] uniform in [0, 1) (row i for the classes of perm[i]).
  """
  b, h, w = hard.shape
  c = labels.shape[-1]
  hard_j, images_j = hard[perm], images[perm]
  present_i = labels > 0.5
  area_i = _class_areas(hard, c)

  eligible = present_i[perm] & (area_i[perm] > 0)
  chosen = eligible & (draws < class_prob)
  top = torch.where(eligible, draws, torch.full_like(draws, -1.0)).argmax(dim=-1)
  forced = (torch.arange(c, device=top.device) == top[:, None]) & eligible
  chosen = torch.where(chosen.any(dim=-1, keepdim=True), chosen, forced)

  mask = (_onehot_fg(hard_j, c) * chosen[:, None, None, :].float()).sum(dim=-1)
  on = mask > 0
  mixed_images = torch.where(on[:, None], images_j, images)
  mixed_hard = torch.where(on, hard_j, hard)

  thresh = min_area * h * w
  area_mixed = _class_areas(mixed_hard, c)
  lost = (_onehot_fg(hard, c) * (mixed_hard != hard)[..., None].float()).sum(dim=(1, 2))
  dropped = (lost > 0) & (area_mixed < thresh)
  gain_j = chosen & (area_mixed >= thresh)
  mixed_labels = ((present_i & ~dropped) | gain_j).to(labels.dtype)
  return mixed_images, mixed_hard, mixed_labels, mask


# --- losses (recurseed_jax/method/losses.py) ---------------------------------------------------


def multilabel_soft_margin(logits, labels):
  logits = logits.float()
  nll = -(labels * F.logsigmoid(logits) + (1.0 - labels) * F.logsigmoid(-logits))
  return nll.mean()


def seg_cross_entropy(logits, hard, ignore_index=IGNORE):
  """Pixel cross-entropy over non-ignored pixels; 0 when every pixel is ignored."""
  logits = resize(logits, hard.shape[1:3]).float()
  total = F.cross_entropy(logits, hard.long(), ignore_index=ignore_index, reduction='sum')
  return total / (hard != ignore_index).sum().clamp_min(1)


def cam_loss(cam, seg_probs, labels, kind='l1'):
  """Normalised CAM of present classes toward the (detached) seg probabilities."""
  h, w = cam.shape[2:]
  target = resize(seg_probs, (h, w)).detach()
  diff = cam_seed(cam, labels) - target
  err = diff.abs() if kind == 'l1' else diff.square()
  present = _present(labels)
  return (err * present).sum() / (present.sum() * h * w).clamp_min(1)


def supervised_losses(config, out, hard, labels, crop):
  """cls + cam + seg of one forward pass (objectives.supervised_losses)."""
  cls = multilabel_soft_margin(out['logits'], labels)
  seg = seg_cross_entropy(resize(out['seg'], crop), hard)
  seg_probs = torch.softmax(out['seg'], dim=1)[:, 1:]
  cam = cam_loss(out['cam'], seg_probs, labels, kind=config.loss.cam_kind)
  total = config.loss.cls * cls + config.loss.cam * cam + config.loss.seg * seg
  return total, dict(cls=cls, cam=cam, seg=seg)


def make_seed(config, out, labels, valid, step, crop):
  """objectives.seed_of: (soft seed [B, C, H, W] at the crop, hard labels [B, H, W])."""
  stride = config.rs.refine_stride
  size = (crop[0] // stride, crop[1] // stride)
  cam = out['cam'].detach().float()
  seg = out['seg'].detach().float()
  cs = resize(cam_seed(cam, labels), size)
  ss = resize(seg_seed(seg, labels), size)
  seed = select_seed(step, cs, ss, config.rs.cam_only_steps, config.rs.seed_mix)
  if config.rs.refine == 'scg':
    feats = [resize(out['features'][f'stage{level}'].detach().float(), size)
             for level in config.rs.scg.levels]
    kwargs = {k: v for k, v in config.rs.scg.to_dict().items() if k != 'levels'}
    seed = scg(feats, seed, **kwargs)
  elif config.rs.refine != 'none':
    raise ValueError(f'the PyTorch step ports rs.refine scg and none, not {config.rs.refine!r}')
  seed = resize(seed, crop) * labels[:, :, None, None]
  return seed, hard_labels(seed, config.rs.certain, config.rs.uncertain, valid=valid)


# --- the network and the step ------------------------------------------------------------------


def build_model(model_config, num_classes):
  """TorchRecurSeedNet with the fields of `config.model` (same network as models.build_model)."""
  c = model_config
  if c.aspp_channels != c.decoder_channels:
    raise ValueError('TorchRecurSeedNet has one width for ASPP and decoder (feature_size): '
                     f'got model.aspp_channels={c.aspp_channels}, '
                     f'model.decoder_channels={c.decoder_channels}')
  return torch_reference.TorchRecurSeedNet(
      num_classes=num_classes, layers=tuple(c.stage_sizes), output_stride=c.output_stride,
      feature_size=c.aspp_channels, low_channels=c.low_level_channels,
      aspp_rates=tuple(c.aspp_rates), width=c.width, aspp_dropout=c.aspp_dropout,
      decoder_dropout=tuple(c.decoder_dropout),
      dilation_scheme=c.dilation_scheme)


def make_optimizer(model, optim_config, device):
  """SGD Nesterov: backbone / head groups, weight decay on conv kernels only (models.decay_mask)."""
  groups = []
  for backbone, mult in ((True, 1.0), (False, optim_config.head_lr_mult)):
    params = [p for n, p in model.named_parameters() if n.startswith('model.') == backbone]
    groups += [dict(params=[p for p in params if p.ndim == 4], lr_mult=mult,
                    weight_decay=optim_config.weight_decay),
               dict(params=[p for p in params if p.ndim != 4], lr_mult=mult, weight_decay=0.0)]
  kwargs = {}
  if device.type == 'cuda':
    kwargs['fused'] = True  # one kernel for the whole update: the strongest eager baseline
  return torch.optim.SGD(groups, lr=optim_config.lr, momentum=optim_config.momentum,
                         nesterov=optim_config.nesterov, **kwargs)


class TorchTrainStep:
  """The eager step: `step(images, labels, valid, use_mix)` -> loss tensor (not synchronised).

  images float [B, 3, H, W] (channels_last when `channels_last`), labels float [B, C], valid
  bool [B, H, W], all on `device`. amp_dtype None runs float32; torch.bfloat16 runs the
  network under torch.autocast (seeds, SCG and losses stay float32, as ours).
  """

  def __init__(self, config, num_classes, device, amp_dtype=None, channels_last=False, seed=0):
    torch.manual_seed(seed)
    self.config = config
    self.device = torch.device(device)
    self.amp_dtype = amp_dtype
    self.model = build_model(config.model, num_classes).to(self.device)
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.model.train()
    self.optimizer = make_optimizer(self.model, config.optim, self.device)
    self.generator = torch.Generator(device=self.device).manual_seed(seed)
    self.num_classes = num_classes
    self.step_count = 0

  def _forward(self, images):
    amp = (contextlib.nullcontext() if self.amp_dtype is None else
           torch.autocast(self.device.type, dtype=self.amp_dtype))
    with amp:
      return self.model(images)

  def _poly_lr(self):
    o = self.config.optim
    t = self.step_count
    frac = min(max(1.0 - t / max(self.config.train.steps, 1), 0.0), 1.0)
    lr = o.lr * frac ** o.poly_power
    if o.warmup_steps:
      lr *= min(1.0, (t + 1) / o.warmup_steps)
    return lr

  def __call__(self, images, labels, valid, use_mix=False):
    config = self.config
    crop = tuple(images.shape[2:])
    out = self._forward(images)
    seed, hard = make_seed(config, out, labels, valid, self.step_count, crop)
    del seed
    loss, _ = supervised_losses(config, out, hard, labels, crop)
    if use_mix:
      perm, draws = draw_mix(self.generator, images.shape[0], self.num_classes, self.device)
      mixed_x, mixed_hard, mixed_y, _ = mix_batch(
          images, hard, labels, perm, draws, class_prob=config.mix.class_prob,
          min_area=config.mix.min_area)
      out2 = self._forward(mixed_x.contiguous(memory_format=_memory_format(images)))
      loss2, _ = supervised_losses(config, out2, mixed_hard, mixed_y, crop)
      loss = loss + loss2
    lr = self._poly_lr()
    for group in self.optimizer.param_groups:
      group['lr'] = lr * group['lr_mult']
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    self.step_count += 1
    return loss.detach()


def _memory_format(x):
  if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
    return torch.channels_last
  return torch.contiguous_format
