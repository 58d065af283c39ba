"""Stage ir_labels: relation labels of every training image from its RecurSeed seed (IRN's
cam_to_ir_label), for the boundary network.

ir_labels/<id>.png: the class where the seed is confidently foreground (background score
config.ir_labels.conf_fg), background where it is confidently background (conf_bg), each through
a label CRF on the image (config.ir_labels.crf); 255 between (relation_labels.py). Runs in the
CRF stage's bounded process pool; resumable per image, every PNG written atomically.
"""

from recurseed_jax import crf as crf_lib
from recurseed_jax import infer
from recurseed_jax import processes
from recurseed_jax import relation_labels
from recurseed_jax.stages import products

FOLDER = 'ir_labels'


OUTPUTS = (FOLDER,)


def run(ctx):
  cfg = ctx.config
  train = ctx.data.split('train')
  todo = products.missing_masks(ctx, train, FOLDER, indices=processes.share(len(train)))

  def items():
    for i in todo:
      seed = products.load_seed(ctx, train.ids[i])
      # The image as read: IRN's label CRF compares the decoded image.
      yield train.ids[i], train.image(i), infer.dequantize(seed['rs']), seed['classes']

  params = dict(conf_fg=float(cfg.ir_labels.conf_fg), conf_bg=float(cfg.ir_labels.conf_bg),
                **{k: float(v) for k, v in cfg.ir_labels.crf.items()})
  params['iterations'] = int(params['iterations'])
  crf_lib.run_crf(items(), ctx.path(FOLDER), params=params, workers=cfg.crf.workers,
                          queue_size=cfg.crf.queue_size, desc='relation labels', total=len(todo),
                          label_fn=relation_labels.relation_label_map)
  return dict(images=len(todo))
