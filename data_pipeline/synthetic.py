"""The embedded synthetic WSSS benchmark.

Hard in the way real WSSS is hard: every object is a large textured *body* plus a small
class-specific *marker* (a two-colour pattern). The marker alone identifies the class; the body
only narrows it down: its colour is one of two pool colours, each shared by two neighbouring
classes, and its shape is random. Like a real object's discriminative part against the rest of
it, the marker is what a classifier trained on image labels relies on, so its CAM peaks on the
marker and fades over the body (non-detection), while the exact masks cover the whole body.
Background clutter (grey shapes and marker-free body-coloured blobs) keeps "a coloured blob" from
being a shortcut for "object here".

The set is a pure function of its parameters: it is generated once into a cache folder named by
their hash and reused. Files: `<root>/{train,val}.npz` with `images` uint8 [N,S,S,3], `masks`
uint8 [N,S,S] (0 = background, 1..K = class), `labels` uint8 [N,K], plus `meta.json`.
"""

import hashlib
import json
import os

import numpy as np

from recurseed_jax import io_utils

# Marker patterns: (colour a, colour b, kind). Distinct hues, none in the body pool.
_MARKER_COLOURS = [
    ((255, 255, 255), (0, 0, 0)),
    ((255, 0, 255), (255, 255, 0)),
    ((0, 255, 255), (255, 0, 0)),
    ((0, 0, 0), (255, 255, 0)),
    ((255, 255, 255), (0, 0, 255)),
    ((0, 255, 0), (255, 0, 255)),
    ((255, 128, 0), (0, 255, 255)),
    ((0, 0, 0), (255, 0, 255)),
]
_MARKER_KINDS = ('checker', 'hstripe', 'vstripe', 'ring')
# Body colours (muted, so markers stand out); class c uses pool[c] or pool[c + 1].
_BODY_POOL = np.array([(170, 90, 60), (60, 140, 90), (70, 90, 170), (160, 150, 60),
                       (130, 70, 140), (60, 150, 150)], np.float32)

VERSION = 2


def class_names(num_classes):
  return [f'shape{c}' for c in range(num_classes)]


def _params(data_config):
  return dict(version=VERSION, num_classes=int(data_config.num_classes),
              image_size=int(data_config.image_size), num_train=int(data_config.num_train),
              num_val=int(data_config.num_val), seed=int(data_config.seed))


def dataset_dir(data_config, workdir):
  p = _params(data_config)
  digest = hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:10]
  base = data_config.cache_dir or os.path.join(workdir, 'data')
  return os.path.join(base, f'synthetic-{digest}')


def _marker(kind, size, rng):
  """A size x size pattern in {0, 1} (which of the two marker colours) and its mask."""
  yy, xx = np.mgrid[:size, :size]
  if kind == 'checker':
    pat = ((yy // 2 + xx // 2) % 2)
  elif kind == 'hstripe':
    pat = (yy // 2) % 2
  elif kind == 'vstripe':
    pat = (xx // 2) % 2
  else:  # ring: outer colour a, inner colour b
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    pat = (r < size / 4).astype(np.int64)
  del rng
  return pat


def _shape_mask(s, cy, cx, ry, rx, kind, angle):
  yy, xx = np.mgrid[:s, :s].astype(np.float32)
  y, x = yy - cy, xx - cx
  ca, sa = np.cos(angle), np.sin(angle)
  u, v = ca * x + sa * y, -sa * x + ca * y
  if kind == 0:  # ellipse
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
  if kind == 1:  # rectangle
    return (np.abs(u) <= rx) & (np.abs(v) <= ry)
  # diamond
  return np.abs(u) / rx + np.abs(v) / ry <= 1.0


def _smooth_noise(rng, s, cells):
  """Low-frequency noise in [-1, 1]: bilinear upsampling of a coarse random grid."""
  g = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
  t = np.linspace(0, cells, s, dtype=np.float32)
  i = np.minimum(t.astype(int), cells - 1)
  f = t - i
  rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
  return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


def make_image(rng, num_classes, s):
  """One image, its exact mask and its label vector."""
  img = np.empty((s, s, 3), np.float32)
  grey = rng.uniform(90, 160)
  img[:] = grey + 25 * _smooth_noise(rng, s, 4)[..., None]
  img += rng.normal(0, 4, img.shape)
  mask = np.zeros((s, s), np.uint8)
  # Clutter: grey shapes and marker-free body-like blobs (the context a real scene has).
  for _ in range(rng.integers(2, 5)):
    m = _shape_mask(s, rng.uniform(0, s), rng.uniform(0, s), rng.uniform(2, 6),
                    rng.uniform(2, 6), rng.integers(3), rng.uniform(0, np.pi))
    img[m] = rng.uniform(40, 220)
  for _ in range(rng.integers(0, 2)):
    m = _shape_mask(s, rng.uniform(0, s), rng.uniform(0, s), rng.uniform(3, 6),
                    rng.uniform(3, 6), rng.integers(3), rng.uniform(0, np.pi))
    img[m] = _BODY_POOL[rng.integers(len(_BODY_POOL))]
  label = np.zeros(num_classes, np.uint8)
  n_obj = rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15])
  classes = rng.choice(num_classes, size=n_obj, replace=False)
  occupied = np.zeros((s, s), bool)
  for c in classes:
    for _ in range(30):  # rejection: objects barely overlap so every marker stays visible
      ry, rx = rng.uniform(0.14, 0.26, 2) * s
      cy, cx = rng.uniform(0.2, 0.8, 2) * s
      m = _shape_mask(s, cy, cx, ry, rx, rng.integers(3), rng.uniform(0, np.pi))
      if m.sum() > 0.04 * s * s and (m & occupied).sum() < 0.05 * m.sum():
        break
    else:
      continue
    body = _BODY_POOL[(c + rng.integers(2)) % len(_BODY_POOL)] + rng.normal(0, 8, 3)
    tex = 10 * _smooth_noise(rng, s, 6)[..., None]
    img[m] = (body + tex[m].reshape(-1, 1) * np.ones(3)).clip(0, 255)
    mask[m] = c + 1
    occupied |= m
    # The marker: a small patch placed inside the body.
    ms = max(4, int(round(0.11 * s)))
    ys, xs = np.nonzero(m[: s - ms, : s - ms])
    ok = [(y, x) for y, x in zip(ys, xs) if m[y:y + ms, x:x + ms].all()]
    if not ok:
      ok = list(zip(ys, xs))
    y0, x0 = ok[rng.integers(len(ok))]
    col_a, col_b = (np.array(v, np.float32) for v in _MARKER_COLOURS[c % len(_MARKER_COLOURS)])
    pat = _marker(_MARKER_KINDS[(c // len(_MARKER_COLOURS) + c) % len(_MARKER_KINDS)], ms, rng)
    patch = np.where(pat[..., None] == 1, col_b, col_a)
    region = img[y0:y0 + ms, x0:x0 + ms]
    inside = m[y0:y0 + ms, x0:x0 + ms]
    region[inside] = patch[inside]
    label[c] = 1
  return img.clip(0, 255).astype(np.uint8), mask, label


def generate(num, num_classes, s, seed):
  rng = np.random.default_rng(seed)
  images = np.empty((num, s, s, 3), np.uint8)
  masks = np.empty((num, s, s), np.uint8)
  labels = np.empty((num, num_classes), np.uint8)
  for i in range(num):
    images[i], masks[i], labels[i] = make_image(rng, num_classes, s)
  return dict(images=images, masks=masks, labels=labels)


def prepare(data_config, workdir):
  """Generates the set once (atomic files) and returns its folder."""
  root = dataset_dir(data_config, workdir)
  p = _params(data_config)
  if os.path.exists(os.path.join(root, 'meta.json')):
    return root
  os.makedirs(root, exist_ok=True)
  for split, n, seed in (('train', p['num_train'], p['seed']),
                         ('val', p['num_val'], p['seed'] + 1)):
    arrays = generate(n, p['num_classes'], p['image_size'], seed)
    with io_utils.atomic_path(os.path.join(root, f'{split}.npz')) as tmp:
      with open(tmp, 'wb') as f:
        np.savez(f, **arrays)
  io_utils.save_json(os.path.join(root, 'meta.json'),
                     dict(p, class_names=class_names(p['num_classes'])))
  return root


def load_split(root, split):
  """Returns dict(images, masks, labels, ids) of one split."""
  path = os.path.join(root, f'{split}.npz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'synthetic split {split!r} not found: {path} (run the data stage)')
  out = io_utils.load_npz(path, ('images', 'masks', 'labels'))
  out['ids'] = [f'{split}_{i:05d}' for i in range(len(out['images']))]
  return out
