"""Weight import: PyTorch state_dicts (torchvision ResNets, the RS+EPM authors' checkpoints).

`apply_init(config.model.init, variables)` is the one entry point; `model.init` is
  'scratch'                 keep the random init;
  'imagenet:<path>'         a torchvision resnet50/101 state_dict -> the backbone only;
  'rsepm:<path>'            the authors' RSEPM network -> the whole RecurSeedNet;
  'deeplab:<path>'          the authors' DeepLabv3_Plus or DeepLabv2 -> a DeepLabNet;
  'affinity:<path>'         the authors' AffinityNet (edge layers) -> a BoundaryNet;
where <path> is a .pth (read with torch.load(weights_only=True); needs torch), an .npz of the
same keys (no torch needed; np.load(allow_pickle=False)), or a folder written by
`python -m recurseed_jax.convert_weights` (an Orbax checkpoint of the converted tensors).

A checkpoint is data, not code: a .pth needing anything but tensors and plain containers to
unpickle, or an .npz holding object arrays, is refused (UnsafeCheckpointError).

Names (torch key -> Flax variable; `model.` is the authors' backbone prefix, absent in
torchvision files; `fc.*` and `num_batches_tracked` are ignored):

| PyTorch                                   | Flax                                           |
|-------------------------------------------|------------------------------------------------|
| [model.]conv1, bn1                        | backbone/conv1, backbone/bn1                   |
| [model.]layer{S}.{B}.conv{K}, .bn{K}      | backbone/layer{S}_{B}/conv{K}, bn{K}           |
| [model.]layer{S}.{B}.downsample.0, .1     | backbone/layer{S}_{B}/downsample_conv, _bn     |
| classifier (RSEPM, 1x1 CAM conv)          | classifier                                     |
| aspp.aspp1, aspp.aspp{2,3,4}              | <head>/aspp/branch0, branch{1,2,3}             |
| aspp.global_avg_pool.1, aspp.block.0      | <head>/aspp/pool, <head>/aspp/project          |
| decoder.low_block                         | <head>/reduce                                  |
| decoder.classifier.0, .2, .4              | <head>/fuse1, fuse2, classifier                |
| aspp.aspp{1..4} (DeepLabv2, with bias)    | head/conv{0..3}                                |
| fc_edge{1..5}.0, fc_edge{1..5}.1 (GN)     | fc_edge{1..5}/conv, fc_edge{1..5}/gn           |
| fc_edge6 (AffinityNet, 1x1 with bias)     | fc_edge6                                       |

<head> is seg_head (RecurSeedNet) or head (DeepLabNet); inside ConvBNReLU blocks `.conv` /
`.bn` keep their names. Leaves: weight -> kernel (conv, OIHW -> HWIO) or scale (BN), bias ->
bias, running_mean / running_var -> batch_stats mean / var. AffinityNet's buffers
`path_indices_*` and `disp_target` (pair layouts, not weights) are ignored; the weights of its
displacement branch (with_instance=True: fc_dp*, mean_shift) need strict=False.
"""

import json
import logging
import os
import pickle
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import flax
import jax
import numpy as np

from recurseed_jax import io_utils

KINDS = ('imagenet', 'rsepm', 'deeplab', 'affinity')
INIT_FORMS = "'scratch', 'imagenet:<path>', 'rsepm:<path>', 'deeplab:<path>' or 'affinity:<path>'"
META_FILE = 'import.json'
_LIST_LIMIT = 40

Path = Tuple[str, ...]


class WeightImportError(ValueError):
  """A checkpoint that does not fit the model (names, shapes) or cannot be read."""


class UnsafeCheckpointError(WeightImportError):
  """A checkpoint that would need arbitrary unpickling (code execution) to read."""


class ImportReport(NamedTuple):
  loaded: List[Path]          # Flax paths filled from the checkpoint
  skipped: List[str]          # class-dependent torch keys kept at init (strict=False)
  ignored: List[str]          # torch keys without a counterpart that are fine to drop


# --- reading ---------------------------------------------------------------------------------


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a state_dict from a .npz (no torch) or a .pth / .pt / .bin (torch, weights only)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint file not found: {path}')
  if path.endswith('.npz'):
    return _read_npz(path)
  return _read_torch(path)


def _read_npz(path: str) -> Dict[str, np.ndarray]:
  try:
    return io_utils.load_npz(path)
  except ValueError as e:
    if 'pickle' in str(e) or 'Object arrays' in str(e):
      raise UnsafeCheckpointError(
          f'{path}: refused, the file holds pickled Python objects (object arrays), and '
          'unpickling can run arbitrary code. Weights must be plain numeric arrays.') from e
    raise WeightImportError(f'{path}: not a readable .npz ({e})') from e
  except (OSError, EOFError) as e:
    raise WeightImportError(f'{path}: not a readable .npz ({e})') from e


def _read_torch(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise WeightImportError(
        f'{path}: reading a PyTorch checkpoint needs torch, which is not installed. Convert it '
        'once where torch is: python -m recurseed_jax.convert_weights --to-npz '
        f'--src {path} --dst <file>.npz, then use the .npz here.') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UnsafeCheckpointError(
        f'{path}: refused, reading it needs arbitrary unpickling (it stores Python objects '
        f'besides tensors), which can run code. torch.load(weights_only=True) said: {first}. '
        'Re-save only the state_dict (torch.save(model.state_dict(), ...)).') from e
  except Exception as e:  # torch raises many types for a file that is not a checkpoint
    raise WeightImportError(f'{path}: not a readable PyTorch checkpoint ({e})') from e
  state = _unwrap(obj, path)
  out = {}
  for key, value in state.items():
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      if value.is_floating_point() and value.dtype != torch.float64:
        value = value.float()  # bf16 / fp16 have no numpy twin (bf16) or lose nothing as fp32
      out[key] = value.numpy()
  return out


def _unwrap(obj: Any, path: str) -> Dict[str, Any]:
  """The flat {name: tensor} dict inside a checkpoint; strips DataParallel's `module.`."""
  if not isinstance(obj, dict):
    raise WeightImportError(f'{path}: expected a state_dict (a dict of tensors), got '
                            f'{type(obj).__name__}')
  for wrapper in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
      break
  if obj and all(k.startswith('module.') for k in obj):
    obj = {k[len('module.'):]: v for k, v in obj.items()}
  return obj


# --- names -----------------------------------------------------------------------------------

_LEAVES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
           ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}
_ASPP = {'pool': 'global_avg_pool.1', 'project': 'block.0'}


def _backbone_names(names: Path) -> List[str]:
  out = []
  for n in names:
    m = re.fullmatch(r'layer(\d+)_(\d+)', n)
    if m:
      out.append(f'layer{m[1]}.{m[2]}')
    else:
      out.append({'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(n, n))
  return out


def _head_names(names: Path, num_fuse: int) -> Optional[List[str]]:
  first, rest = names[0], list(names[1:])
  if first == 'aspp' and rest:
    m = re.fullmatch(r'branch(\d+)', rest[0])
    if m:
      return ['aspp', f'aspp{int(m[1]) + 1}'] + rest[1:]
    if rest[0] in _ASPP:
      return ['aspp', _ASPP[rest[0]]] + rest[1:]
    return None
  if first == 'reduce':
    return ['decoder', 'low_block'] + rest
  m = re.fullmatch(r'fuse(\d+)', first)
  if m:
    return ['decoder', 'classifier', str(2 * (int(m[1]) - 1))] + rest
  if first == 'classifier':
    return ['decoder', 'classifier', str(2 * num_fuse)] + rest
  m = re.fullmatch(r'conv(\d+)', first)  # DeepLabv2
  if m:
    return ['aspp', f'aspp{int(m[1]) + 1}'] + rest
  return None


def is_class_dependent(path: Path) -> bool:
  """Whether a Flax variable's shape depends on the class count (the layers that predict)."""
  modules = path[1:-1]
  if not modules:
    return False
  if modules[0] == 'classifier':
    return True
  if modules[0] in ('seg_head', 'head') and len(modules) > 1:
    return modules[1] == 'classifier' or re.fullmatch(r'conv\d+', modules[1]) is not None
  return False


def _scope(kind: str, params: Dict[str, Any]) -> Tuple[str, ...]:
  """Top-level modules the checkpoint kind fills; checks the model is the right network."""
  top = set(params)
  if kind == 'imagenet':
    return ('backbone',) if 'backbone' in top else ()
  want = {'rsepm': {'backbone', 'classifier', 'seg_head'}, 'deeplab': {'backbone', 'head'},
          'affinity': {'backbone'} | {f'fc_edge{i}' for i in range(1, 7)}}[kind]
  if top != want:
    net = {'rsepm': 'RecurSeedNet (build_model)', 'deeplab': 'DeepLabNet (build_deeplab)',
           'affinity': 'BoundaryNet (models/boundary_net.py)'}[kind]
    raise WeightImportError(
        f'{kind} checkpoints load into a {net} with top-level modules {sorted(want)}; this '
        f'model has {sorted(top)}')
  return tuple(sorted(want))


def torch_key(kind: str, path: Path, num_fuse: int = 2) -> str:
  """The PyTorch state_dict key of the Flax variable at `path` ('params'|'batch_stats', ...)."""
  collection, modules, leaf = path[0], path[1:-1], path[-1]
  suffix = _LEAVES.get((collection, leaf))
  names = None
  if suffix is not None:
    if kind == 'imagenet':
      inner = modules[1:] if modules and modules[0] == 'backbone' else modules
      names = _backbone_names(inner)
    elif modules and modules[0] == 'backbone':
      names = ['model'] + _backbone_names(modules[1:])
    elif modules and modules[0] == 'classifier':
      names = ['classifier'] + list(modules[1:])
    elif len(modules) > 1 and modules[0] in ('seg_head', 'head'):
      names = _head_names(modules[1:], num_fuse)
    elif modules and re.fullmatch(r'fc_edge\d', modules[0]):  # AffinityNet's Sequentials
      inner = [{'conv': '0', 'gn': '1'}.get(m) for m in modules[1:]]
      names = None if None in inner else [modules[0]] + inner
  if not names:
    raise WeightImportError(f'no PyTorch counterpart for Flax variable {"/".join(path)}')
  return '.'.join(names + [suffix])


def _torch_shape(path: Path, shape: Tuple[int, ...]) -> Tuple[int, ...]:
  if path[-1] == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
  return tuple(shape)


def _to_flax(path: Path, value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel' and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
  return value


def _device_copy(value: np.ndarray, dtype: Any) -> jax.Array:
  # A fresh host copy first: the source may share memory with live torch tensors
  # (Tensor.numpy()), and device_put may alias host memory on CPU. No jnp op: each would
  # compile once per shape.
  return jax.device_put(np.array(value, dtype=np.dtype(dtype), order='C'))


def expected_keys(kind: str, variables: Dict[str, Any]) -> Dict[str, Tuple[Path, Tuple[int, ...]]]:
  """{torch key: (Flax path, torch-layout shape)} of everything `kind` fills in `variables`."""
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  scope = _scope(kind, variables.get('params', {}))
  head = variables['params'].get('seg_head', variables['params'].get('head', {}))
  num_fuse = sum(1 for name in head if re.fullmatch(r'fuse\d+', name))
  out = {}
  for path, leaf in flat.items():
    if scope and (len(path) < 2 or path[1] not in scope):
      continue
    out[torch_key(kind, path, num_fuse)] = (path, _torch_shape(path, np.shape(leaf)))
  return out


def to_state_dict(kind: str, variables: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """The inverse: our variables as a PyTorch state_dict of `kind` (numpy, OIHW kernels).

  Loads into the matching torch module (tests/torch_reference.py) with strict=False (only
  `num_batches_tracked` is absent), e.g. to start a PyTorch baseline from the same weights.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  out = {}
  for key, (path, _) in expected_keys(kind, variables).items():
    value = np.asarray(flat[path])
    out[key] = np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4
                                    and path[-1] == 'kernel' else value)
  return out


def _ignorable(kind: str, key: str) -> bool:
  if key.endswith('num_batches_tracked'):
    return True
  if kind == 'affinity':
    return key.startswith('path_indices_') or key == 'disp_target'
  return kind == 'imagenet' and key.split('.')[0] == 'fc'


def _names(keys, limit: int = _LIST_LIMIT) -> str:
  keys = sorted(keys)
  more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
  return ', '.join(keys[:limit]) + more


def _hint(kind: str, keys) -> str:
  """A guess at the right kind when most names miss."""
  keys = list(keys)
  if any(k.startswith('fc_edge') for k in keys):
    return " The file looks like the authors' AffinityNet: use affinity:<path>."
  if any(k.startswith('model.layer') for k in keys):
    has_decoder = any(k.startswith('decoder.') for k in keys)
    has_cam = 'classifier.weight' in keys
    guess = ('rsepm' if has_cam else 'deeplab (DeepLabv3+, model.segmenter_head=v3plus)'
             if has_decoder else 'deeplab (DeepLabv2, model.segmenter_head=v2)')
    return f" The file looks like the authors' {guess} checkpoint."
  if any(k.startswith('layer1.') for k in keys):
    return ' The file looks like a torchvision ResNet: use imagenet:<path>.'
  return ''


def import_state_dict(kind: str, state_dict: Dict[str, np.ndarray], variables: Dict[str, Any],
                      strict: bool = True) -> Tuple[Dict[str, Any], ImportReport]:
  """Fills `variables` ({'params', 'batch_stats'}) from a PyTorch state_dict of `kind`.

  strict=True: every expected key must be present with its shape, and no key may be left over.
  strict=False: class-dependent tensors (the CAM classifier, the segmentation classifier, the
  DeepLabv2 convs) that are missing or have another shape keep their init, and unexpected keys
  are dropped; everything else still has to match. Returns (new variables, ImportReport).
  """
  expected = expected_keys(kind, variables)
  present = {k for k in state_dict if not _ignorable(kind, k)}
  ignored = sorted(set(state_dict) - present)
  missing = sorted(set(expected) - present)
  unexpected = sorted(present - set(expected))
  mismatched = []
  for key in sorted(set(expected) & present):
    want = expected[key][1]
    got = tuple(np.shape(state_dict[key]))
    if got != want:
      mismatched.append((key, got, want))

  skipped = []
  if not strict:
    soft = {k for k, (path, _) in expected.items() if is_class_dependent(path)}
    skipped = sorted([k for k in missing if k in soft] + [k for k, _, _ in mismatched if k in soft])
    missing = [k for k in missing if k not in soft]
    mismatched = [m for m in mismatched if m[0] not in soft]
    if unexpected:
      logging.warning('%s checkpoint: dropped keys without a counterpart: %s', kind,
                      _names(unexpected))
    ignored += unexpected
    unexpected = []

  problems = []
  if missing:
    problems.append(f'missing keys ({len(missing)}): {_names(missing)}')
  if unexpected:
    problems.append(f'unexpected keys ({len(unexpected)}): {_names(unexpected)}')
  for key, got, want in mismatched:
    path = '/'.join(expected[key][0])
    problems.append(f'shape mismatch for {key}: checkpoint {got}, model {want} '
                    f'(PyTorch layout; Flax {path})')
  if problems:
    hint = _hint(kind, state_dict) if len(missing) > len(expected) // 2 else ''
    if mismatched and strict and all(is_class_dependent(expected[k][0]) for k, _, _ in mismatched):
      hint += (' Only class-dependent layers differ: a different class count? strict=False '
               '(model.init_strict=False) keeps them at their init.')
    raise WeightImportError(f'{kind} checkpoint does not fit the model: ' + '; '.join(problems)
                            + '.' + hint)

  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  loaded = []
  for key, (path, _) in expected.items():
    if key in skipped:
      continue
    flat[path] = _device_copy(_to_flax(path, np.asarray(state_dict[key])), flat[path].dtype)
    loaded.append(path)
  report = ImportReport(loaded=loaded, skipped=skipped, ignored=ignored)
  return flax.traverse_util.unflatten_dict(flat), report


# --- converted (Orbax) checkpoints ------------------------------------------------------------


def save_converted(directory: str, kind: str, variables: Dict[str, Any], report: ImportReport,
                   source: str = '') -> None:
  """Writes the imported leaves (only those) as an Orbax checkpoint plus import.json."""
  from recurseed_jax import checkpoint
  directory = os.path.abspath(directory)
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(f'{directory} exists and is not empty; remove it or pick another --dst')
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  tree = flax.traverse_util.unflatten_dict({p: np.asarray(flat[p]) for p in report.loaded})
  with checkpoint.Checkpoints(directory, keep=1) as ckpt:
    ckpt.save(0, tree)
  loaded = set(report.loaded)
  left_out = sorted('/'.join(p) for p in flat if p not in loaded)
  io_utils.save_json(os.path.join(directory, META_FILE),
                     dict(kind=kind, source=os.fspath(source), skipped=report.skipped,
                          left_out=left_out, num_tensors=len(report.loaded)))


def load_converted(directory: str, like_variables: Dict[str, Any], strict: bool = True,
                   kind: Optional[str] = None) -> Dict[str, Any]:
  """Merges a converted checkpoint (convert_weights output) into `like_variables`.

  Every stored leaf must exist in `like_variables` with the same shape (strict=False lets
  class-dependent leaves of another shape keep their init), and the stored leaves must cover
  what the checkpoint's kind fills. `kind`, when given, must match the one it was made from.
  """
  from recurseed_jax import checkpoint
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, META_FILE)
  if not os.path.isfile(meta_path):
    raise WeightImportError(f'{directory} is not a converted checkpoint (no {META_FILE}); make '
                            'one with python -m recurseed_jax.convert_weights')
  with open(meta_path) as f:
    meta = json.load(f)
  if kind is not None and meta['kind'] != kind:
    raise WeightImportError(f'{directory} was converted as {meta["kind"]!r}, not {kind!r}')
  with checkpoint.Checkpoints(directory, keep=1) as ckpt:
    stored = flax.traverse_util.flatten_dict(ckpt.restore(None))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(like_variables))
  required = {path for _, (path, _) in expected_keys(meta['kind'], like_variables).items()}
  unexpected = sorted('/'.join(p) for p in stored if p not in flat)
  mismatched, skipped = [], []
  for path, value in stored.items():
    if path in flat and np.shape(value) != np.shape(flat[path]):
      (skipped if not strict and is_class_dependent(path) else mismatched).append(path)
  left_out = set(meta.get('left_out', ()))  # not filled by this kind, or skipped at conversion
  missing = sorted('/'.join(p) for p in required - set(stored)
                   if '/'.join(p) not in left_out and (strict or not is_class_dependent(p)))
  problems = []
  if missing:
    problems.append(f'missing ({len(missing)}): {_names(missing)}')
  if unexpected:
    problems.append(f'unexpected ({len(unexpected)}): {_names(unexpected)}')
  for path in mismatched:
    problems.append(f'shape mismatch for {"/".join(path)}: checkpoint '
                    f'{tuple(np.shape(stored[path]))}, model {tuple(np.shape(flat[path]))}')
  if problems:
    raise WeightImportError(f'converted checkpoint {directory} does not fit the model: '
                            + '; '.join(problems))
  for path, value in stored.items():
    if path not in skipped:
      flat[path] = _device_copy(value, flat[path].dtype)
  kept = ['/'.join(p) for p in skipped] + [k for k in meta.get('skipped', ())]
  if kept:
    logging.warning('kept at init (class count differs): %s', _names(kept))
  return flax.traverse_util.unflatten_dict(flat)


# --- the entry point -------------------------------------------------------------------------


def parse_init(init_spec: str) -> Tuple[str, Optional[str]]:
  """'scratch' -> ('scratch', None); '<kind>:<path>' -> (kind, path); else ValueError."""
  spec = str(init_spec).strip()
  if spec == 'scratch':
    return 'scratch', None
  kind, sep, path = spec.partition(':')
  if not sep or kind not in KINDS or not path.strip():
    raise ValueError(f'config model.init={init_spec!r} is not understood; use {INIT_FORMS} '
                     '(<path>: a .pth, an .npz of the same keys, or a folder written by '
                     'python -m recurseed_jax.convert_weights)')
  return kind, os.path.expanduser(path.strip())


def apply_init(init_spec: str, variables: Dict[str, Any], strict: bool = True) -> Dict[str, Any]:
  """Returns `variables` initialised as `config.model.init` says (see the module docstring)."""
  kind, path = parse_init(init_spec)
  if kind == 'scratch':
    return variables
  if not os.path.exists(path):
    raise FileNotFoundError(f'config model.init={init_spec!r}: no such file or folder: {path}')
  if os.path.isdir(path):
    return load_converted(path, variables, strict=strict, kind=kind)
  new, report = import_state_dict(kind, read_state_dict(path), variables, strict=strict)
  logging.info('model.init: %d tensors from %s (%s)', len(report.loaded), path, kind)
  if report.skipped:
    logging.warning('kept at init (class count differs): %s', _names(report.skipped))
  return new
