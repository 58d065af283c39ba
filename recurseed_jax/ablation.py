"""The ablation: RecurSeed variants trained and scored side by side, a table and a plot.

`config.ablation.variants` maps a variant name to (title, overrides[, reuse]): each variant is the
run's config with its overrides (a nested mapping; config_lib.ablation_variants), run through its
own `stages` (a variant may override them; --stages on the command line wins) in
`<workdir>/<name>`, every stage resumable as in a normal run. `reuse` = (variant, stages) takes
those finished stages from an earlier variant instead of running them (their outputs
hard-linked: stages.runner.link_stages), so variants that differ only downstream (the pseudo
masks of the multi-stage rows) share one RecurSeed run. A variant whose
config trains the plain-CAM baseline or the fully supervised upper bound beside it gives their
rows too. Then `<workdir>/ablation.md` (the table) and `<workdir>/ablation_seed_miou.png` (the
training seed's mIoU over the steps, from each run's metrics.jsonl `seed_miou`).
"""

import json
import os

from recurseed_jax import config_lib
from recurseed_jax import io_utils
from recurseed_jax import metrics
from recurseed_jax import stages as stages_lib
from recurseed_jax.stages import products

# Rows a variant's workdir can give: (run subfolder, summary key of its seed, of its val score).
_TWINS = (('cam_baseline', 'CAM only (plain-CAM baseline)', 'cam_seed_miou', None),
          ('upper_bound', 'fully supervised upper bound', None, 'upper_bound_val_miou'))


def read_curve(path):
  """[(step, seed_miou)] of a metrics.jsonl (lines without seed_miou are skipped)."""
  return [(r['step'], r['seed_miou']) for r in metrics.read_log(path) if 'seed_miou' in r]


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def collect(workdir, variants):
  """Table rows and seed curves of finished variants: ([row dict], {title: [(step, miou)]})."""
  rows, curves = [], {}
  for name, title, cfg in variants:
    vdir = os.path.join(workdir, name)
    summary = _summary(vdir)
    seconds = summary.get('seconds', {})
    curve = read_curve(os.path.join(vdir, 'train', 'metrics.jsonl'))
    pseudo_key = products.PSEUDO_MASKS[cfg.pseudo.method][0]  # the masks its segmenter used
    rows.append(dict(name=name, title=title, train_seed=curve[-1][1] if curve else None,
                     seed=summary.get('rs_seed_miou'), pseudo=summary.get(f'{pseudo_key}_miou'),
                     val=summary.get('val_miou'), multistage=summary.get('multistage_val_miou'),
                     seconds=sum(seconds.values())))
    curves[title] = curve
    for sub, twin_title, seed_key, val_key in _TWINS:
      if cfg.train[sub]:
        twin_curve = read_curve(os.path.join(vdir, sub, 'metrics.jsonl'))
        rows.append(dict(name=f'{name}/{sub}', title=twin_title,
                         train_seed=twin_curve[-1][1] if twin_curve else None,
                         seed=summary.get(seed_key) if seed_key else None, pseudo=None,
                         val=summary.get(val_key) if val_key else None, multistage=None,
                         seconds=None))
        if twin_curve:
          curves[twin_title] = twin_curve
  return rows, curves


def _pct(v):
  return '-' if v is None else f'{100 * v:.1f}'


def table(rows, command):
  """The markdown table of `collect`'s rows."""
  lines = [
      '# Ablation (synthetic benchmark)', '', f'Command: `{command}`', '',
      '| variant | training seed, last window (train) | seed (train) | pseudo masks (train) '
      '| segmentation head (val) | multi-stage segmenter + CRF (val) | seconds |',
      '|---|---|---|---|---|---|---|']
  for r in rows:
    secs = '-' if r['seconds'] is None else f"{r['seconds']:.0f}"
    lines.append(f"| {r['title']} (`{r['name']}`) | {_pct(r['train_seed'])} | {_pct(r['seed'])} "
                 f"| {_pct(r['pseudo'])} | {_pct(r['val'])} | {_pct(r['multistage'])} "
                 f'| {secs} |')
  lines += ['', 'mIoU %. Training seed: the seed each step trains on (after the recursion switch, '
            'refinement and before the certainty filter, argmax with background 1 - max), scored '
            'against the true masks of the augmented crops over the last logging window. Seed: '
            'the inference seed (scales + flip) of every training image. Pseudo masks: those of '
            "the variant's config.pseudo.method (DenseCRF, random walk or random walk + CRF), "
            'where it made them; multi-stage: the segmenter trained on them. Seconds: its own '
            'stages (reused ones count where they ran). "-": not produced by that run.', '']
  return '\n'.join(lines)


def plot(curves, path):
  """Seed mIoU over training steps, one line per run, to a PNG (written atomically)."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
  for title, curve in curves.items():
    if curve:
      steps, values = zip(*curve)
      ax.plot(steps, [100 * v for v in values], marker='o', markersize=3, label=title)
  ax.set_xlabel('training step')
  ax.set_ylabel('training seed mIoU (%)')
  ax.set_title('Seed quality during training (synthetic benchmark)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='center left', bbox_to_anchor=(1.01, 0.5))  # beside, never over
  fig.tight_layout()
  with io_utils.atomic_path(path) as tmp:
    fig.savefig(tmp, format='png')
  plt.close(fig)


def run(config, workdir, data, names, command, log=print):
  """Runs every variant's stages (resumable), then writes ablation.md and the plot.

  names: the stages to run in every variant, or None: each variant's own config.stages.
  """
  variants = config_lib.ablation_variants(config)
  for name, title, cfg in variants:
    log(f'[ablation] {name}: {title}')
    ctx = stages_lib.Context(config=cfg, workdir=os.path.join(workdir, name), data=data,
                             class_names=tuple(data.class_names), log=log)
    spec = config.ablation.variants[name]
    if 'reuse' in spec:
      stages_lib.link_stages(os.path.join(workdir, spec.reuse.variant), ctx, spec.reuse.stages)
    own = stages_lib.parse_stages(cfg.stages) if names is None else names
    stages_lib.run_stages(ctx, own)
  rows, curves = collect(workdir, variants)
  text = table(rows, command)
  io_utils.atomic_write_bytes(os.path.join(workdir, 'ablation.md'), text.encode())
  plot(curves, os.path.join(workdir, 'ablation_seed_miou.png'))
  return text
