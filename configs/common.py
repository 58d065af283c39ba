"""Shared by the real-dataset configs: the paper's single-stage ResNet-50 RecurSeed setting.

`rs50(...)` starts from the demo config (configs/default.py, so every field exists with its
meaning documented there) and sets what METHOD.md fixes for real data: the full-size network,
the optimisation and augmentation of section 4, inference and CRF of section 5. The schedule is in
epochs of the training split; steps follow the batch size (a FieldReference), so
`--config.train.batch_size=16` keeps the number of epochs.
"""

from configs import default


def _epochs(ref, num_images, epochs):
  """Steps of `epochs` passes over `num_images` at the (referenced) global batch size."""
  return (int(epochs * num_images) + ref - 1) // ref


def rs50(name, num_classes, num_train, epochs, mix_after_epochs):
  """The ResNet-50 RecurSeed + CertainMix config for dataset `name` (METHOD.md sections 1-5)."""
  c = default.get_config()
  c.stages = 'train_rs,seeds,crf,evaluate,export'

  d = c.data
  d.name = name
  d.root = ''                        # required: --config.data.root=/path (docs/datasets.md)
  d.source = 'files'                 # 'tfds' builds TFRecords once into data.tfds_dir
  d.num_classes = num_classes
  d.crop_size = 512                  # random crop, padded with 0 (image) / 255 (mask)
  d.scale_range = None
  d.long_side = (320, 640)           # random resize of the long side (METHOD.md section 4)
  d.flip = True
  d.color_jitter = (0.3, 0.3, 0.3, 0.1)

  m = c.model                        # DeepLabv3+ ResNet-50 at output stride 16 (section 1)
  m.stage_sizes = (3, 4, 6, 3)
  m.width = 64
  m.output_stride = 16
  m.aspp_channels = 256
  m.aspp_rates = (6, 12, 18)
  m.low_level_channels = 48          # 256 to load the authors' released RecurSeed network
  m.decoder_channels = 256
  m.init = 'imagenet:pretrained/resnet50.pth'  # torchvision resnet50 (docs/weights.md)

  o = c.optim                        # section 4: SGD Nesterov, poly 0.9, 10x lr on new heads
  o.lr = 0.1
  o.head_lr_mult = 10.0
  o.momentum = 0.9
  o.nesterov = True
  o.weight_decay = 1e-4
  o.poly_power = 0.9
  o.warmup_steps = 0

  t = c.train
  t.batch_size = 32                  # global batch (section 4)
  batch = t.get_ref('batch_size')
  t.steps = _epochs(batch, num_train, epochs)
  t.log_every = 50
  t.checkpoint_every = 1000
  t.upper_bound = False              # no fully supervised twin on real data (a separate config)
  t.cam_baseline = False

  # Recursion from the second epoch on [reconstructed]; CertainMix after `mix_after_epochs`.
  c.rs.cam_only_steps = _epochs(batch, num_train, 1)
  # SCG at the backbone's stride (32x32 pixels of a 512 crop at OS16), as SPA computes it on the
  # feature map: at stride 4 each image's affinity matrix would be 16k x 16k (1 GiB in fp32).
  c.rs.refine_stride = 16
  c.mix.start_step = _epochs(batch, num_train, mix_after_epochs)

  i = c.infer                        # section 5
  i.scales = (1.0, 0.5, 1.5, 2.0)
  i.flip = True
  i.class_threshold = 0.34
  i.bg_power = 2.0
  i.batch_size = 8                   # each dataset's config sets its own (docs/inference.md)
  i.streams = 1                      # one batch at a time: the memory plans assume one

  c.crf.workers = 8                  # DenseCRF parameters: METHOD.md section 5 (the defaults)
  c.export.num_overlays = 16
  return c


# The public training recipe of each segmenter head (the authors released none for theirs):
# - v3plus: DeepLabv3+ as the common PyTorch reimplementation trains it on VOC + SBD
#   (jfzhang95/pytorch-deeplab-xception): SGD lr 0.007, momentum 0.9, poly 0.9, weight decay 5e-4
#   [their default; the v3+ paper used 4e-5], batch 16, crop 513 (ours 512: a multiple of the
#   stride), 50 epochs, random scale 0.5-2.0.
# - v2: DeepLabv2 as kazuto1011/deeplab-pytorch trains it on VOC (configs/voc12.yaml): SGD lr
#   2.5e-4 with 10x on the ASPP, momentum 0.9, poly 0.9, weight decay 5e-4, batch 10, crop 321
#   (ours 320: their align-corners 8k + 1 is our half-pixel 8k), 20k iterations, random scale
#   0.5-1.5; output stride 8 in training and at test time (DeepLabv2 paper), ASPP-L rates 6-24.
# Both: 10x lr on the new head, plain momentum (no Nesterov), no colour jitter.
SEGMENTER_RECIPES = dict(
    v3plus=dict(lr=0.007, weight_decay=5e-4, batch_size=16, crop_size=512, scale_range=(0.5, 2.0),
                epochs=50, output_stride=16),
    v2=dict(lr=2.5e-4, weight_decay=5e-4, batch_size=10, crop_size=320, scale_range=(0.5, 1.5),
            steps=20000, output_stride=8),
)


def multistage(c, head, num_train, epochs=None, steps=None):
  """Adds the multi-stage segmenter (config.seg) to a single-stage config `c`, in place.

  `head` 'v3plus' or 'v2'. The RecurSeed stages stay those of `c`; the segmenter is a ResNet-101
  DeepLab from ImageNet weights trained on the CRF pseudo masks (v3+ at output stride 16,
  predicting at 8 with its ASPP rates doubled; v2 at 8 throughout), scales + flip, labels at max
  probability >= 0.05, the same CRF (METHOD.md sections 1 and 5). The authors never released
  this training, so its recipe is the public one of each head (SEGMENTER_RECIPES, with sources);
  the schedule is `epochs` over `num_train` images or `steps` (default: the recipe's).
  """
  # The authors' released multi-stage masks were made "after applying a random walk": IRN's.
  c.stages = ('train_rs,seeds,ir_labels,train_boundary,random_walk,train_seg,predict,evaluate,'
              'export')
  c.pseudo.method = 'random_walk'
  random_walk(c, num_train)
  s = c.seg
  s.init = 'imagenet:pretrained/resnet101.pth'  # torchvision resnet101 (docs/weights.md)
  m = s.model
  m.stage_sizes = (3, 4, 23, 3)      # ResNet-101 (METHOD.md section 1, multi-stage)
  m.segmenter_head = head
  recipe = SEGMENTER_RECIPES[head]
  m.output_stride = recipe['output_stride']  # v3+: train at 16, predict at 8 (v3/v3+ papers)
  m.low_level_channels = 48          # the DeepLabv3+ decoder's reduction (v3+ paper)
  m.aspp_rates = (6, 12, 18)         # v3+ at OS16 (v3+ paper)
  m.v2_rates = (6, 12, 18, 24)       # DeepLabv2 ASPP-L at OS8 (v2 paper)
  s.predict_model.output_stride = 8
  s.predict_model.aspp_rates = (12, 24, 36)  # v3+ rates double with the resolution (v3 paper)
  o, t, d = s.optim, s.train, s.data
  o.lr, o.weight_decay, t.batch_size = recipe['lr'], recipe['weight_decay'], recipe['batch_size']
  o.head_lr_mult, o.momentum, o.nesterov, o.poly_power = 10.0, 0.9, False, 0.9
  d.crop_size, d.scale_range, d.long_side = recipe['crop_size'], recipe['scale_range'], None
  d.color_jitter = (0.0, 0.0, 0.0, 0.0)
  if epochs is None and steps is None:
    epochs, steps = recipe.get('epochs'), recipe.get('steps')
  t.steps = steps if steps is not None else _epochs(t.batch_size, num_train, epochs)
  t.checkpoint_every = 1000
  t.log_every = 50
  s.infer.class_threshold = 0.05     # METHOD.md section 5 (multi-stage)
  # XLA plans the prediction of ResNet-101 at OS8 at a 512 bucket (VOC; v3+ and v2 alike) at
  # <= 1.60 GiB per image, + 0.05 with the next batch in flight, + 0.22 fixed: 8 -> 13.5 GiB,
  # within the 18 GiB JAX takes of a 24 GB card by default (docs/inference.md, "Memory").
  s.infer.batch_size = 8
  return c


def random_walk(c, num_train):
  """IRN's recipe for the boundary network and the walk (jiwoon-ahn/irn, run_sample.py and
  step/train_irn.py): a frozen ImageNet ResNet-50, crops of 512 rescaled 0.5-1.5 and flipped,
  batch 32, 3 epochs, SGD lr 0.1 poly 0.9 (momentum 1e-4, as IRN's optimiser ends up), weight
  decay 1e-4, pairs within radius 10; the walk: beta 10, exp_times 8, radius 5, background 0.25,
  images padded to 512."""
  b = c.boundary
  b.init = 'imagenet:pretrained/resnet50.pth'
  b.radius = 10
  b.data.crop_size = 512
  b.data.scale_range = (0.5, 1.5)
  b.data.long_side = None
  b.data.flip = True
  b.train.batch_size = 32
  b.train.steps = _epochs(32, num_train, 3)
  b.train.checkpoint_every = 1000
  b.train.log_every = 50
  w = c.random_walk
  w.beta, w.exp_times, w.radius, w.bg, w.size = 10.0, 8, 5, 0.25, 512
  w.batch_size = 8
  return c
