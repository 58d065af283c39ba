"""Training objectives, one per supervision: `objective(outputs, batch, ctx) -> (loss, metrics)`.

The generic training step (train.make_train_step) runs the network on the batch, hands the
outputs to the objective of its supervision and differentiates the loss: the model / trainer
split of scenic. An objective sees only arrays and the step's context (StepContext), so it is a
pure function of them; the config enters through `make_objective`'s closure.

- 'weak': RecurSeed (METHOD.md section 2): the seed of the clean pass (recursion switch,
  refinement, certainty filter) supervises the segmentation head; cls + cam + seg losses; with
  CertainMix (ctx.use_mix) a second, mixed batch gets the same losses.
- 'cam': the plain-CAM baseline: the classification loss alone (its seed: the CAM seed); its
  step never runs the segmentation head (UNREAD_MODULES).
- 'full': the fully supervised upper bound: the same losses against the true masks.
- 'seg': the multi-stage segmenter (a DeepLabNet) on the batch masks (pseudo masks): pixel
  cross-entropy, 255 ignored.
- 'boundary': the random walk's boundary network (a BoundaryNet) on the relation labels (the
  batch masks): IRN's affinity loss over the pixel pairs within config.boundary.radius of the
  stride-4 label map (method/affinity.py).

Every loss and metric is a ratio `ctx.share((numerator, count))`: under pmap the count is summed
over devices, so the per-device shares add up (psum) to the value of the global batch.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from recurseed_jax import confusion
from recurseed_jax import method
from recurseed_jax import parallel
from recurseed_jax.method import affinity
from recurseed_jax.method import recursion

SUPERVISIONS = ('weak', 'cam', 'full', 'seg', 'boundary')
# Top-level modules whose outputs an objective never reads. The step keeps their BatchNorm
# statistics as they were, so nothing depends on their forward pass and XLA drops it: the
# plain-CAM baseline's step runs no segmentation head (train.make_train_step).
UNREAD_MODULES = dict(cam=('seg_head',))
_ARGMAX_MIXES = ('classmix', 'edgepredictmix')  # paste the unfiltered seed, not the hard one


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What an objective needs of the step besides the outputs and the batch.

  step: the training step (traced). share: (numerator, count) -> the global ratio.
  forward: images -> outputs of another training-mode pass of the same parameters (the mixed
  batch; BatchNorm statistics chain on from the first pass). mix_rng: CertainMix's key (the same
  on every device). use_mix: whether this step mixes (static). axis_name: the pmap axis or None.
  """
  step: Any
  share: Callable[[Any], Any]
  forward: Callable[[Any], Any]
  mix_rng: Any
  use_mix: bool
  axis_name: Any = None


def supervised_losses(config, out, hard, labels, crop, share):
  """cls + cam + seg losses of one forward pass against a hard label map -> (total, terms)."""
  seg_up = method.resize(out['seg'], crop)
  cls = share(method.multilabel_soft_margin_parts(out['logits'], labels))
  seg = share(method.seg_cross_entropy_parts(seg_up, hard))
  seg_probs = jax.nn.softmax(out['seg'], axis=-1)[..., 1:]
  cam = share(method.cam_loss_parts(out['cam'], seg_probs, labels, kind=config.loss.cam_kind))
  total = config.loss.cls * cls + config.loss.cam * cam + config.loss.seg * seg
  return total, dict(cls=cls, cam=cam, seg=seg)


def seed_of(config, out, images, labels, valid, step):
  """The RecurSeed seed of a clean pass, with the config's knobs (method/recursion.py)."""
  rs = config.rs
  return recursion.recurseed_seed(
      out, images, labels, valid, step,
      cam_only_steps=rs.cam_only_steps, seed_mix=rs.seed_mix, refine_kind=rs.refine,
      refine_stride=rs.refine_stride, scg_kwargs=rs.scg.to_dict(), scg_levels=rs.scg.levels,
      pamr_kwargs=rs.pamr.to_dict(), certain=rs.certain, uncertain=rs.uncertain)


def _mix(config, ctx, images, src, labels, seed):
  """CertainMix (or its kin) over the global batch: the pairing is the same whatever the device
  count (gathered under pmap, then this device's rows kept)."""
  local = images.shape[0]
  m = config.mix
  extra = {}
  if m.kind == 'edgepredictmix':
    # Only EdgePredictMix reads the soft seed (its edge map): the other kinds skip gathering it.
    extra = dict(seed=parallel.gather_batch(seed, ctx.axis_name),
                 edge_threshold=float(m.edge_threshold), edge_band=int(m.edge_band),
                 edge_distance=int(m.edge_distance or config.rs.refine_stride))
  images, src, labels = parallel.gather_batch((images, src, labels), ctx.axis_name)
  mixed = method.mix_batch(ctx.mix_rng, images, src, labels, kind=m.kind,
                           class_prob=m.class_prob, min_area=m.min_area, **extra)
  return parallel.local_rows(mixed[:3], ctx.axis_name, local)


def _weakly_supervised(config, full):
  """RecurSeed ('weak') or, with `full`, the same losses against the true masks ('full')."""

  def objective(out, batch, ctx):
    images, labels, valid = batch['image'], batch['label'], batch['valid']
    crop = images.shape[1:3]
    share = ctx.share
    metrics = {}
    if full:
      hard = batch['mask']
    else:
      seed, hard = seed_of(config, out, images, labels, valid, ctx.step)
      metrics['seed_confusion'] = confusion.seed_confusion(batch['mask'], seed, valid,
                                                           labels.shape[-1])
    total, terms = supervised_losses(config, out, hard, labels, crop, share)
    metrics.update(terms)
    if not full:
      certain = hard != 255
      metrics['seed_coverage'] = share((jnp.sum(certain), jnp.float32(certain.size)))
      ok = certain & (batch['mask'] != 255)
      metrics['seed_precision'] = share((jnp.sum((hard == batch['mask']) & ok), jnp.sum(ok)))
    if ctx.use_mix:
      if full:
        raise ValueError('mixing needs seeds: use_mix only with supervision="weak"')
      src = method.argmax_labels(seed, valid=valid) if config.mix.kind in _ARGMAX_MIXES else hard
      mixed_x, mixed_hard, mixed_y = _mix(config, ctx, images, src, labels, seed)
      out2 = ctx.forward(mixed_x)
      total2, terms2 = supervised_losses(config, out2, mixed_hard, mixed_y, crop, share)
      total = total + total2
      metrics.update({f'mix_{k}': v for k, v in terms2.items()})
    metrics['loss'] = total
    return total, metrics

  return objective


def _cam_only(config):
  del config  # the classification loss has no knobs

  def objective(out, batch, ctx):
    if ctx.use_mix:
      raise ValueError('mixing needs seeds: use_mix only with supervision="weak"')
    labels = batch['label']
    cls = ctx.share(method.multilabel_soft_margin_parts(out['logits'], labels))
    # The baseline's seed is its CAM seed (no recursion, no refinement).
    cam = method.resize(method.cam_seed(jax.lax.stop_gradient(out['cam']), labels),
                        batch['image'].shape[1:3])
    conf = confusion.seed_confusion(batch['mask'], cam, batch['valid'], labels.shape[-1])
    return cls, dict(cls=cls, loss=cls, seed_confusion=conf)

  return objective


def _segmenter(config):
  del config

  def objective(out, batch, ctx):
    if ctx.use_mix:
      raise ValueError('mixing needs seeds: use_mix only with supervision="weak"')
    seg_up = method.resize(out['seg'], batch['image'].shape[1:3])
    seg = ctx.share(method.seg_cross_entropy_parts(seg_up, batch['mask']))
    return seg, dict(seg=seg, loss=seg)

  return objective


def _boundary(config):
  radius = int(config.boundary.radius)

  def objective(out, batch, ctx):
    if ctx.use_mix:
      raise ValueError('mixing needs seeds: use_mix only with supervision="weak"')
    edge = jax.nn.sigmoid(out)  # [B, h, w]: the boundary probability at stride 4
    # IRN reduces the crop's relation labels x0.25 (nearest) to the logits' stride-4 grid.
    small = affinity.reduce_label(batch['mask'], 0.25)
    if small.shape[1:] != edge.shape[1:]:
      raise ValueError(f'crop {batch["mask"].shape[1:]} gives a {small.shape[1:]} label grid '
                       f'but {edge.shape[1:]} boundary logits: use a crop that is a multiple of 4')
    parts = affinity.affinity_loss_parts(affinity.edge_to_affinity(edge, radius),
                                         affinity.pair_labels(small, radius))
    # IRN's sum / (count + 1e-5) per pair set, with the count of the global batch (pmap).
    parts = {k: (total, parallel.psum(jax.lax.stop_gradient(count), ctx.axis_name))
             for k, (total, count) in parts.items()}
    terms = affinity.affinity_loss_from_parts(parts)
    metrics = {k: terms[k] for k in ('bg_pos', 'fg_pos', 'neg')}
    metrics['boundary'] = ctx.share((jnp.sum(edge), jnp.float32(edge.size)))
    metrics['loss'] = terms['total']
    return terms['total'], metrics

  return objective


def make_objective(config, supervision):
  """The objective of a supervision (SUPERVISIONS), closed over the config's knobs."""
  if supervision == 'weak':
    return _weakly_supervised(config, full=False)
  if supervision == 'full':
    return _weakly_supervised(config, full=True)
  if supervision == 'cam':
    return _cam_only(config)
  if supervision == 'seg':
    return _segmenter(config)
  if supervision == 'boundary':
    return _boundary(config)
  raise ValueError(f'supervision={supervision!r} is not one of {SUPERVISIONS}')
