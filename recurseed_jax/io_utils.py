"""Small host-side helpers: atomic writes, JSON, VOC palette PNG masks, a background iterator.

Every file a stage writes goes through `atomic_path`, so a killed run never leaves a half-written
file under the final name (a rerun then treats the file as missing and redoes it).
"""

import contextlib
import json
import os
import queue
import threading

import numpy as np
from PIL import Image

# Temp files are `.<name>.tmp-<pid>`: hidden, and never matching a `*.png` / `*.json` glob.
TMP_MARKER = '.tmp-'


def temp_path_for(path):
  """The temp name `atomic_path` uses for `path` in this process."""
  folder, name = os.path.split(os.fspath(path))
  return os.path.join(folder, f'.{name}{TMP_MARKER}{os.getpid()}')


def is_temp_name(name):
  """Whether a bare file name looks like one of our temp files."""
  return name.startswith('.') and TMP_MARKER in name


def remove_temp_files(folder):
  """Deletes our temp files (is_temp_name) under `folder`, recursively; returns their paths.

  Only for a folder no live writer uses: launch.py sweeps the workdir once, on process 0 under
  the workdir lock, before the other processes pass their start barrier. Not a stage's output
  folder: the other processes of a multi-host run write their shares into it at the same time.
  Orbax's temp folders are left to Orbax, which removes them when it opens its checkpoints.
  """
  removed = []
  for parent, _, files in os.walk(folder):
    for name in files:
      if is_temp_name(name):
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(parent, name))
          removed.append(os.path.join(parent, name))
  return removed


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temp path next to `path`; renamed onto `path` on success, removed on error (an
  OSError while writing, such as a full disk, is raised again naming `path`).

  The temp file sits in the same folder so `os.replace` is a same-filesystem atomic rename.
  """
  path = os.fspath(path)
  tmp = temp_path_for(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except OSError as e:  # e.g. ENOSPC: no half file, and the message names the file, not its temp
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    if e.filename in (None, tmp):
      raise OSError(e.errno, e.strerror or str(e), path) from e
    raise
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_bytes(path, data):
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)


def save_json(path, obj, indent=2):
  with atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=indent)
      f.write('\n')


def save_npz(path, **arrays):
  # Through a file object: np.savez would append '.npz' to the temp name.
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)


# np.load parses each array's header with ast.literal_eval, and CPython 3.11's AST constructor
# keeps its recursion depth in shared state: two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905; seen on CI when
# evaluate's thread pool read seed files). Every .npz read goes through this lock.
_NPZ_LOCK = threading.Lock()


def load_npz(path, keys=None):
  """{name: array} of an .npz file (all arrays, or `keys`); pickles are refused (data, not code)."""
  with _NPZ_LOCK, np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in (z.files if keys is None else keys)}


def save_npz_compressed(path, **arrays):
  """Like save_npz, deflated (smooth uint8 seeds shrink several fold); load with load_npz."""
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez_compressed(f, **arrays)


def _put(q, item, stop):
  # Gives up when the consumer has stopped, so the producer thread can end.
  while not stop.is_set():
    try:
      q.put(item, timeout=0.05)
      return True
    except queue.Full:
      pass
  return False


def background_iter(iterable, depth):
  """Iterates `iterable` on a thread, at most `depth` items ahead of the consumer.

  Host work (decoding, device inference feeding a CRF pool) then overlaps with the consumer's.
  An exception in the producer is raised here; when the consumer stops early, the producer
  stops after its current item and its generator is closed on its own thread.
  """
  q = queue.Queue(maxsize=max(int(depth), 1))
  stop = threading.Event()
  end = object()

  def produce():
    it = iter(iterable)
    try:
      for item in it:
        if not _put(q, (None, item), stop):
          return
      _put(q, (None, end), stop)
    except BaseException as e:
      _put(q, (e, None), stop)
    finally:
      close = getattr(it, 'close', None)
      if close is not None:
        close()

  thread = threading.Thread(target=produce, name='background_iter', daemon=True)
  thread.start()
  try:
    while True:
      err, item = q.get()
      if err is not None:
        raise err
      if item is end:
        return
      yield item
  finally:
    stop.set()
    thread.join()


def voc_palette(n=256):
  """The PASCAL VOC colour map: bit j of the label's r/g/b triplets -> bit 7-j of the colour."""
  labels = np.arange(n, dtype=np.int64)
  palette = np.zeros((n, 3), dtype=np.int64)
  for j in range(8):
    for ch in range(3):
      bit = (labels >> (3 * j + ch)) & 1
      palette[:, ch] |= bit << (7 - j)
  return palette.astype(np.uint8)


def save_palette_png(path, mask):
  """Saves a uint8 [H, W] label map as an indexed ('P') PNG with the VOC palette, atomically."""
  mask = np.asarray(mask)
  if mask.ndim != 2 or mask.dtype != np.uint8:
    raise ValueError(f'{path}: expected a uint8 [H, W] mask, got {mask.dtype} {mask.shape}')
  img = Image.fromarray(np.ascontiguousarray(mask))  # mode 'L'; putpalette turns it into 'P'
  img.putpalette(voc_palette().tobytes())
  with atomic_path(path) as tmp:
    img.save(tmp, format='PNG')


def load_mask_png(path):
  """Loads a label map PNG (palette indices or grey levels) as uint8 [H, W]."""
  try:
    with Image.open(path) as img:
      mode = img.mode
      mask = np.array(img, dtype=np.uint8) if mode in ('P', 'L') else None
  except FileNotFoundError:
    raise
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f'cannot read mask {path}: {e}') from e
  if mask is None:
    raise ValueError(
        f'mask {path} has mode {mode!r}; expected a palette (P) or greyscale (L) PNG of '
        'label indices, not a colour image')
  return mask
