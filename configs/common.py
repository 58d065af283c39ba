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
  c.stages = 'train,seeds,crf,evaluate,export'

  d = c.data
  d.name = name
  d.root = ''                        # required: --config.data.root=/path (README, "Datasets")
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
  m.init = 'imagenet:pretrained/resnet50.pth'  # a torchvision resnet50 state_dict (README)

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
  i.batch_size = 8                   # images up to 500 px at scale 2, with their flips

  c.crf.workers = 8                  # DenseCRF parameters: METHOD.md section 5 (the defaults)
  c.export.num_overlays = 16
  return c
