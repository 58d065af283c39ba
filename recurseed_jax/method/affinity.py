"""Pixel-pair affinities from a boundary map, relation labels and the boundary loss (IRN).

Reproduces the training side of IRN (Ahn, Cho & Kwak, CVPR 2019; jiwoon-ahn/irn): the pair
layout of misc/indexing.py's `PathIndex`, `edge_to_affinity`, the relation labels of
voc12/dataloader.py's `GetAffinityLabelFromIndices` and the affinity loss of step/train_irn.py
with net/resnet50_irn.py's `AffinityDisplacementLoss`, which the RS+EPM authors' `AffinityNet`
(core/networks.py) shares.

Pairs. A search direction (dy, dx) has dy = 0 < dx < r, or 0 < dy < r and |dx| < r, with
dy^2 + dx^2 < r^2 (r = `radius`): the forward half of the disc, so each unordered pair of pixels
is met once. Its path is every (y, x) of the box spanned by (0, 0) and (dy, dx) whose distance
to the line through the two is below 1; both end points belong to it. Directions are ordered as
IRN orders them: grouped by path length (shortest first), in enumeration order within a group.
On a stride-4 map of size H x W with rf = r - 1, the source pixels are rows [0, H - rf) and
columns [rf, W - rf) (`crop_size`), so that every destination (source + direction) lies inside.

Affinity of a pair = 1 - the largest boundary probability on its path. Outputs are NHWC-like,
[B, H - rf, W - 2 rf, D] (IRN: [B, D, n_src], the sources flattened row-major).

Differences from IRN: relation labels are valid where neither end is `ignore_label` (255); IRN
tests `label < 21` (VOC's 21 labels), which agrees on label maps holding 0..C and 255, and this
works for any class count. Where several pixels of a path share the largest value, the gradient
is split between them (jnp.max) where torch's max_pool2d gives it to one. The displacement field
(IRN's instance branch; the authors' with_instance=True) is not reproduced: the total is
train_irn.py's (pos + neg) / 2 without the displacement terms.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

LOG_EPS = 1e-5  # IRN's -log(aff + 1e-5) and -log(1 + 1e-5 - aff)
COUNT_EPS = 1e-5  # IRN's sum / (count + 1e-5)


def _check_radius(radius):
  if int(radius) != radius or radius < 2:
    raise ValueError(f'radius must be an integer >= 2, got {radius!r}')
  return int(radius)


@functools.lru_cache(maxsize=None)
def search_paths(radius):
  """IRN's search directions and their straight paths for `radius`.

  Returns:
    A tuple of (direction, path) pairs in IRN's order; direction (dy, dx), path a tuple of
    (y, x) offsets from the source, the destination first (IRN sorts by -|y| - |x|).
  """
  r = _check_radius(radius)
  dirs = [(0, x) for x in range(1, r)]
  dirs += [(y, x) for y in range(1, r) for x in range(-r + 1, r) if x * x + y * y < r * r]
  by_length = {}
  for dy, dx in dirs:
    length_sq = dy * dy + dx * dx
    box = [(y, x) for y in range(min(0, dy), max(0, dy) + 1)
           for x in range(min(0, dx), max(0, dx) + 1)]
    # Squared distance to the line through (0, 0) and (dy, dx) below 1 (exact in integers).
    path = [(y, x) for y, x in box if (dy * x - dx * y) ** 2 < length_sq]
    path.sort(key=lambda c: -abs(c[0]) - abs(c[1]))  # stable, as Python's list.sort
    by_length.setdefault(len(path), []).append(((dy, dx), tuple(path)))
  return tuple(item for length in sorted(by_length) for item in by_length[length])


def directions(radius):
  """[D, 2] int32 (dy, dx) of the pairs, in the order of every D axis here."""
  return np.array([d for d, _ in search_paths(radius)], np.int32).reshape(-1, 2)


def crop_size(size, radius):
  """(rows, columns) of source pixels on a stride-4 map of `size` = (H, W)."""
  rf = _check_radius(radius) - 1
  h, w = (int(s) for s in size)
  if h - rf < 1 or w - 2 * rf < 1:
    raise ValueError(f'map size {(h, w)} is too small for radius {radius}: it needs at least '
                     f'{rf + 1} rows and {2 * rf + 1} columns')
  return h - rf, w - 2 * rf


@functools.lru_cache(maxsize=None)
def _length_groups(radius):
  """Per path length (IRN's order): int32 [D_g, L_g] path rows and columns of its directions."""
  groups = {}
  for _, path in search_paths(radius):
    groups.setdefault(len(path), []).append(path)
  out = []
  for paths in groups.values():  # insertion order = ascending length
    coords = np.array(paths, np.int32)  # [D_g, L_g, 2]
    out.append((coords[..., 0], coords[..., 1]))
  return tuple(out)


def path_max(x, radius, origin, size):
  """Largest value of `x` on every pair's path: [B, h, w, D].

  out[b, i, j, d] = max over (y, x') on path d of x[b, oy + i + y, ox + j + x'], with
  (oy, ox) = `origin` and (h, w) = `size`. One gather per path length (IRN's index_select by
  length group): memory sum(path lengths) * h * w per map, as IRN's, and a small program.
  """
  (oy, ox), (h, w) = origin, size
  ii = np.arange(h, dtype=np.int32)[:, None]
  jj = np.arange(w, dtype=np.int32)[None, :]
  outs = []
  for ys, xs in _length_groups(radius):
    rows = oy + ys[:, :, None, None] + ii  # [D_g, L_g, h, 1]
    cols = ox + xs[:, :, None, None] + jj  # [D_g, L_g, 1, w]
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= x.shape[1] or cols.max() >= x.shape[2]:
      raise ValueError(f'paths of radius {radius} from {size} pixels at {origin} leave the '
                       f'{x.shape[1:3]} map')
    outs.append(jnp.max(x[:, rows, cols], axis=2))  # [B, D_g, h, w]
  return jnp.moveaxis(jnp.concatenate(outs, axis=1), 1, -1)


@functools.partial(jax.jit, static_argnames=('radius',))
def edge_to_affinity(edge, radius=10):
  """Affinities of all pairs: 1 - max boundary probability on the pair's path.

  Args:
    edge: [B, H, W] boundary probabilities (sigmoid of the boundary network's logits).
    radius: pair radius (IRN trains with 10).

  Returns:
    [B, H - rf, W - 2 rf, D] float32, rf = radius - 1, D = len(search_paths(radius)).
  """
  edge = jnp.asarray(edge, jnp.float32)
  if edge.ndim != 3:
    raise ValueError(f'edge must be [B, H, W], got shape {edge.shape}')
  size = crop_size(edge.shape[1:3], radius)
  return 1.0 - path_max(edge, radius, (0, radius - 1), size)


@functools.partial(jax.jit, static_argnames=('radius', 'ignore_label'))
def pair_labels(label, radius=10, ignore_label=255):
  """IRN's relation labels of every pair from a stride-4 label map.

  Args:
    label: [B, H, W] int labels (0 background, c + 1 class c, `ignore_label` unknown).
    radius: pair radius (as in `edge_to_affinity`).
    ignore_label: the label of pixels that make no pair.

  Returns:
    dict of float32 [B, H - rf, W - 2 rf, D] 0/1 masks: `bg_pos` (both ends background),
    `fg_pos` (both ends the same foreground class), `neg` (different labels); pairs with an
    ignored end are in none.
  """
  label = jnp.asarray(label)
  if label.ndim != 3:
    raise ValueError(f'label must be [B, H, W], got shape {label.shape}')
  hc, wc = crop_size(label.shape[1:3], radius)
  rf = radius - 1
  src = label[:, :hc, rf:rf + wc, None]
  dirs = directions(radius)
  rows = dirs[:, 0, None, None] + np.arange(hc)[:, None]  # [D, hc, 1]
  cols = rf + dirs[:, 1, None, None] + np.arange(wc)[None, :]  # [D, 1, wc]
  dst = jnp.moveaxis(label[:, rows, cols], 1, -1)  # one gather: [B, hc, wc, D]
  valid = (src != ignore_label) & (dst != ignore_label)
  equal = src == dst
  pos = equal & valid
  as_float = lambda m: m.astype(jnp.float32)
  return dict(bg_pos=as_float(pos & (src == 0)), fg_pos=as_float(pos & (src > 0)),
              neg=as_float(~equal & valid))


def affinity_loss_parts(aff, labels):
  """{set: (summed loss, pair count)} for bg_pos, fg_pos and neg; see `affinity_loss`.

  Data-parallel code adds the pairs over devices before `affinity_loss_from_parts`, which
  then equals IRN's loss over the global batch.
  """
  aff = jnp.asarray(aff, jnp.float32)
  for name in ('bg_pos', 'fg_pos', 'neg'):
    if labels[name].shape != aff.shape:
      raise ValueError(f'labels[{name!r}] has shape {labels[name].shape}, aff {aff.shape}')
  pos_loss = -jnp.log(aff + LOG_EPS)
  neg_loss = -jnp.log(1.0 + LOG_EPS - aff)
  part = lambda loss, mask: (jnp.sum(mask * loss), jnp.sum(mask))
  return dict(bg_pos=part(pos_loss, labels['bg_pos']), fg_pos=part(pos_loss, labels['fg_pos']),
              neg=part(neg_loss, labels['neg']))


def affinity_loss_from_parts(parts):
  """The `affinity_loss` dict from (summed loss, count) pairs: sum / (count + 1e-5) each."""
  mean = {k: total / (count + COUNT_EPS) for k, (total, count) in parts.items()}
  pos = mean['bg_pos'] / 2 + mean['fg_pos'] / 2
  return dict(mean, pos=pos, total=(pos + mean['neg']) / 2)


@jax.jit
def affinity_loss(aff, labels):
  """IRN's affinity loss (train_irn.py) over the whole batch.

  Args:
    aff: [..., D] affinities from `edge_to_affinity`.
    labels: `pair_labels` output of the same shape.

  Returns:
    dict of scalars: `bg_pos`, `fg_pos` (mean -log(aff + 1e-5) over each positive set),
    `pos` = bg_pos / 2 + fg_pos / 2, `neg` (mean -log(1 + 1e-5 - aff) over negatives), and
    `total` = (pos + neg) / 2 (train_irn.py's total without its displacement terms).
  """
  return affinity_loss_from_parts(affinity_loss_parts(aff, labels))


def reduce_label(label, scale=0.25):
  """Nearest rescale of a label map as IRN's imutils.pil_rescale(label, scale, order=0).

  The output size is round(H * scale) x round(W * scale); output pixel i reads input pixel
  floor((i + 0.5) * H / H_out) (PIL's NEAREST), so 512 -> 128 takes rows 2, 6, 10, ...
  The position is PIL's running float64 sum (s / 2, then + s per pixel, s = H / H_out), so
  that it rounds as PIL does where a position falls on an integer.

  Args:
    label: [..., H, W] label map(s), numpy or jax (any integer dtype); the indices are
      static, so it jits.
    scale: the factor (0.25 for the boundary network's stride 4).

  Returns:
    The reduced map, same dtype.
  """
  if label.ndim < 2:
    raise ValueError(f'label must be [..., H, W], got shape {label.shape}')
  hw = tuple(label.shape[-2:])
  size = [int(np.round(n * scale)) for n in hw]
  if min(size) < 1:
    raise ValueError(f'scale {scale} leaves no pixel of a {hw} map')
  if tuple(size) == hw:
    return label
  rows, cols = (_nearest_index(n, m) for n, m in zip(hw, size))
  return label[..., rows, :][..., cols]


def _nearest_index(n, m):
  """Source index of each of m outputs from n inputs, as PIL's NEAREST computes it."""
  step = n / m
  positions = np.cumsum(np.concatenate([[step * 0.5], np.full(m - 1, step)]))
  return np.minimum(positions.astype(np.int64), n - 1)
