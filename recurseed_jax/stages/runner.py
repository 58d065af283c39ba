"""Runs stages in pipeline order: skip what is marked done, time the rest, mark, summarise.

A stage is a module of this package with `run(ctx) -> dict`; STAGES lists them in pipeline
order (a new stage is one file plus its name here). Each finished stage writes
`<workdir>/stages/<name>.json` (atomically) with its seconds and the dict it returned; a rerun
skips marked stages and an interrupted one resumes from what it wrote. A stage may do a later
stage's work on the way when both run (the seeds stage feeds its seeds to the CRF pool): its
module lists those in ALSO_RUNS, and they are marked done with it. Each module also lists in
OUTPUTS the workdir paths it writes, so that another workdir can reuse a finished stage
(`link_stages`, the ablation's shared RecurSeed run).
"""

import importlib
import json
import os
import shutil
import time

import jax

from recurseed_jax import host_info
from recurseed_jax import io_utils
from recurseed_jax import processes
from recurseed_jax.stages import products

# The whole paper in pipeline order: RecurSeed training, its seeds, pseudo masks by DenseCRF or by
# IRN's random walk (relation labels, boundary network, walk), the multi-stage segmenter trained
# on them and its predictions, then scoring and export.
STAGES = ('train_rs', 'seeds', 'crf', 'ir_labels', 'train_boundary', 'random_walk', 'train_seg',
          'predict', 'evaluate', 'export')
ALIASES = {'train': 'train_rs'}  # the name before the multi-stage stages existed


def stage_module(name):
  return importlib.import_module(f'recurseed_jax.stages.{name}')


def parse_stages(text):
  """'train,seeds' -> ['train_rs', 'seeds']; ValueError naming an unknown or empty list."""
  names = [ALIASES.get(s.strip(), s.strip()) for s in str(text).split(',') if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise ValueError(f'unknown stage {unknown[0]!r} in --stages; known stages: {", ".join(STAGES)}')
  if not names:
    raise ValueError(f'--stages is empty; known stages: {", ".join(STAGES)}')
  return names


def marker_path(ctx, name):
  return ctx.path('stages', f'{name}.json')


def run_stages(ctx, names):
  """Runs the named stages of `ctx` in pipeline order, skipping those already marked done.

  On every process of a multi-host run: each stage runs everywhere (each process does its share
  of the images), then every process meets at a barrier, and process 0 alone writes the marker,
  with the images each process handled (`images_per_process`, from a stage's `images`).
  """
  timeout = float(ctx.config.parallel.barrier_timeout_s)
  if processes.is_lead():
    os.makedirs(ctx.path('stages'), exist_ok=True)
  todo = [n for n in STAGES if n in names and not os.path.exists(marker_path(ctx, n))]
  ctx = ctx.replace(todo=frozenset(todo))
  done = set()
  for name in STAGES:
    if name not in names or name in done:
      continue
    if name not in todo:
      ctx.log(f'[{name}] done already, skipping (delete {marker_path(ctx, name)} to redo)')
      continue
    module = stage_module(name)
    also = [n for n in getattr(module, 'ALSO_RUNS', ()) if n in todo]
    if also:
      ctx.log(f'[{"+".join([name] + also)}] running ({name} streams into {", ".join(also)})')
    else:
      ctx.log(f'[{name}] running')
    t0 = time.time()
    result = dict(module.run(ctx) or {})
    seconds = round(time.time() - t0, 2)
    shares = processes.gather(f'stage/{name}/images', result.pop('images', None), timeout)
    processes.barrier(f'stage/{name}/done', timeout)  # every share written before the marker
    extra = dict(overlapped='+'.join([name] + also)) if also else {}
    if processes.count() > 1 and any(v is not None for v in shares):
      extra['images_per_process'] = shares
    elif shares[0] is not None:
      extra['images'] = shares[0]
    if processes.is_lead():
      for n in [name] + also:
        io_utils.save_json(marker_path(ctx, n), dict(seconds=seconds, **extra,
                                                     **(result if n == name else {})))
    done.update([name] + also)
  processes.barrier('stages/markers', timeout)  # the summary reads every marker
  return finalize_summary(ctx) if processes.is_lead() else None


def _link(src, dst):
  """Hard link src to dst unless dst exists (a rerun after a kill links what is missing)."""
  if not os.path.exists(dst):
    os.link(src, dst)


def link_stages(src_workdir, ctx, names):
  """Reuses the finished stages `names` of another workdir: their OUTPUTS hard-linked (no copy
  of the data), then their markers. A stage not finished there is an error naming it."""
  os.makedirs(ctx.path('stages'), exist_ok=True)
  for name in names:
    marker = os.path.join(src_workdir, 'stages', f'{name}.json')
    if not os.path.exists(marker):
      raise FileNotFoundError(f'cannot reuse stage {name!r}: {marker} is missing (that run has '
                              'not finished it)')
    for rel in stage_module(name).OUTPUTS:
      src, dst = os.path.join(src_workdir, rel), ctx.path(rel)
      if os.path.isdir(src):
        shutil.copytree(src, dst, copy_function=_link, dirs_exist_ok=True)
      elif os.path.exists(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _link(src, dst)
    if not os.path.exists(marker_path(ctx, name)):  # last: a killed link is redone
      with open(marker, 'rb') as f:
        io_utils.atomic_write_bytes(marker_path(ctx, name), f.read())


def finalize_summary(ctx):
  """Adds per-stage seconds and their sum to summary.json (if the evaluation exists); returns it."""
  path = ctx.path('summary.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  # Stages that ran overlapped (seeds+crf) share one wall time: one entry, counted once.
  seconds = {}
  for name in STAGES:
    marker = marker_path(ctx, name)
    if os.path.exists(marker):
      with open(marker) as f:
        m = json.load(f)
      seconds[m.get('overlapped', name)] = m['seconds']
  summary['seconds'] = seconds
  summary['seconds_total'] = round(sum(seconds.values()), 2)
  summary['devices'] = jax.device_count()
  summary['machine'] = host_info.describe()  # the seconds (and XLA:CPU's sums) depend on it
  io_utils.save_json(path, summary)
  return summary


def format_summary(summary):
  """The summary as a markdown table of mIoU per product, then the seconds per stage."""
  lines = ['| product | mIoU % |', '|---|---|']
  for key, title in products.TABLE_TITLES.items():
    if f'{key}_miou' in summary:
      lines.append(f'| {title} | {100 * summary[f"{key}_miou"]:.1f} |')
  secs = summary.get('seconds', {})
  if secs:
    lines.append('')
    lines.append('seconds per stage: ' + ', '.join(f'{k} {v:.0f}' for k, v in secs.items()))
  if 'machine' in summary:
    lines.append(f"on {host_info.one_line(summary['machine'])}")
  return '\n'.join(lines)
