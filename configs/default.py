"""The embedded demo: RecurSeed + CertainMix on the synthetic WSSS benchmark, on CPU.

Command:
    python launch.py                      # = --config configs/default.py --workdir runs/default

Expected (2 CPU cores, AMD EPYC with AVX2; 300 steps on 600 training images since 2026-12-03,
400 on 800 before: that table stays in docs/results.md), summary.json mIoU, mean ± std over
--config.seed=0,1,2: plain-CAM baseline seed 46.4 ± 2.4, RecurSeed network's CAM seed
60.5 ± 1.7, RecurSeed seed 60.9 ± 1.2, pseudo masks after CRF 82.8 ± 1.8, segmentation head on
val 63.7 ± 2.6, fully supervised upper bound on val 83.2 ± 0.6; stage times 300-308 s with the
programs in the compilation cache. On an AMD EPYC with AVX-512: 47.1 ± 3.8, 61.1 ± 1.3,
61.3 ± 0.3, 83.7 ± 0.5, 64.5 ± 0.6, 82.5 ± 1.1; stages 200 s with an empty cache, 143-146 s
cached (README, "Quick start"; docs/results.md).

Every knob of METHOD.md sections 2-5 is a field here; real configs (VOC, COCO) change the data,
model size and schedule, not the field names.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Which stages `launch.py` runs, in order. --stages=... overrides.
  c.stages = 'train_rs,seeds,crf,evaluate,export'
  # JAX's persistent compilation cache (recurseed_jax/compile_cache.py): '' = the per-user cache
  # folder (~/.cache/recurseed_jax/xla), 'off', or a folder. A rerun or resume compiles nothing.
  c.compilation_cache = ''

  # --- data -------------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'         # 'synthetic' | 'voc12' | 'coco14' (configs/voc12_rs50.py, ...)
  c.data.root = ''                  # voc12 / coco14: the dataset folder (docs/datasets.md)
  c.data.source = 'files'           # 'files': read the folders | 'tfds': TFRecords built once
  c.data.tfds_dir = ''              # '' -> <cache_dir>/tfds ; where the TFDS builders write
  c.data.cache_dir = ''             # '' -> <workdir>/data ; generated once, reused on rerun
  c.data.skip_corrupt = False       # skip (and count) undecodable images instead of failing
  c.data.workers = 0                # threads/processes for labels, scans, COCO prepare; 0: all
  c.data.threads = 0                # tf.data threads of the training stream; 0: all cores
  c.data.coco_mask_dir = ''         # coco14 as distributed: '' -> <root>/semantic_masks
  c.data.num_classes = 5
  c.data.image_size = 64            # synthetic images are square
  c.data.num_train = 600           # 800 until this round (docs/results.md)
  c.data.num_val = 200
  c.data.seed = 1234                # the dataset: a pure function of this seed and the fields above
  c.data.crop_size = 64             # random crop after rescale, padded with 0 (image) / 255 (mask)
  c.data.scale_range = (0.8, 1.25)  # random rescale factor; None when long_side is set
  c.data.long_side = config_dict.placeholder(tuple)  # (lo, hi) px of the long side (VOC: 320-640)
  c.data.flip = True
  # Brightness, contrast, saturation, hue (VOC: .3, .3, .3, .1).
  c.data.color_jitter = (0.0, 0.0, 0.0, 0.0)
  c.data.mean = (0.485, 0.456, 0.406)  # ImageNet normalisation, images in [0, 1]
  c.data.std = (0.229, 0.224, 0.225)
  c.data.shuffle_buffer = 2048

  # --- model (METHOD.md section 1) --------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.stage_sizes = (1, 1, 1, 1)  # ResNet-50: (3, 4, 6, 3); ResNet-101: (3, 4, 23, 3)
  c.model.width = 16                  # channels of the stem; ResNet-50/101: 64
  c.model.output_stride = 8           # 16 for single-stage training on VOC; 8 multi-stage inference
  # 32, not 64: the 3x3 ASPP convs on the 512-channel stride-8 features and the stride-4 decoder
  # were 2/3 of the step's FLOPs; at 32 the step has 13.8 GFLOP, not 22.7, and runs 1.45x faster
  # on 2 cores (bench/train_step.py, 2026-12-02), with the demo's figures kept (docs/results.md).
  c.model.aspp_channels = 32          # 256 for the full model
  c.model.aspp_rates = (1, 2, 3)      # (6, 12, 18) at OS16, (12, 24, 36) at OS8 on 512 crops
  c.model.low_level_channels = 16     # 48 in DeepLabv3+; 256 in the authors' RecurSeed network
  c.model.decoder_channels = 32       # 256 for the full model
  c.model.aspp_dropout = 0.5
  c.model.decoder_dropout = (0.5, 0.1)
  # Which ResNet 3x3 convs get the stage dilation: 'uniform' (all), 'torchvision' (first block of
  # a dilated stage keeps the previous one), 'authors' (first blocks 1, and none at OS16: their
  # released checkpoints need it). Same parameters in all three.
  c.model.dilation_scheme = 'uniform'
  c.model.segmenter_head = 'v3plus'   # multi-stage DeepLabNet head: 'v3plus' | 'v2'
  c.model.v2_rates = (6, 12, 18, 24)  # DeepLabv2's four summed dilated 3x3 convs
  # 'scratch' | 'imagenet:<path>' (torchvision resnet50/101 -> backbone) | 'rsepm:<path>' (the
  # authors' RS+EPM net -> whole RecurSeedNet) | 'deeplab:<path>' (their DeepLabv3+/v2 ->
  # DeepLabNet); <path>: .pth (needs torch), .npz of the same keys, or a folder from
  # `python -m recurseed_jax.convert_weights` (docs/weights.md).
  c.model.init = 'scratch'
  c.model.init_strict = True          # False: class-dependent layers of another shape keep init
  c.model.network = 'recurseed'       # 'recurseed' (train_rs); the segmenter's is 'deeplab' (c.seg)

  # --- RecurSeed (METHOD.md section 2) ----------------------------------------------------------
  c.rs = ml_collections.ConfigDict()
  c.rs.cam_only_steps = 150          # seeds from the CAM before this step, from the seg head after
  c.rs.seed_mix = 0.0                # after the switch: seed = (1 - mix) * seg seed + mix * CAM
  c.rs.refine = 'scg'                # 'scg' | 'pamr' | 'none'
  c.rs.refine_stride = 4             # resolution (crop / stride) at which seeds are refined
  c.rs.certain = 0.55                # best foreground score >= certain -> that class
  c.rs.uncertain = 0.10              # best foreground score <= uncertain -> background; else 255
  c.rs.scg = ml_collections.ConfigDict()
  c.rs.scg.first_th = 0.50
  c.rs.scg.second_th = 0.10
  c.rs.scg.fg_th = 0.30
  c.rs.scg.bg_th = 0.05
  c.rs.scg.iteration = 1             # second order: S2 = B^(1 + iteration) (the authors' 1)
  c.rs.scg.second_weight = 1.0       # w2 in H = max(S1, w2 * S2)
  c.rs.scg.levels = (3, 4)           # backbone stages (2..5) whose features feed SCG
  c.rs.pamr = ml_collections.ConfigDict()
  c.rs.pamr.iterations = 10
  c.rs.pamr.dilations = (1, 2, 4, 8, 12, 24)
  c.rs.seed_from_ema = False         # seeds from the EMA params (needs train.ema_decay > 0)

  # --- losses ------------------------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.cls = 1.0
  c.loss.cam = 1.0
  c.loss.seg = 1.0
  c.loss.cam_kind = 'l1'             # 'l1' | 'mse'

  # --- CertainMix (METHOD.md section 3) ---------------------------------------------------------
  c.mix = ml_collections.ConfigDict()
  c.mix.kind = 'certainmix'          # 'certainmix' | 'classmix' | 'edgepredictmix' | 'none'
  c.mix.start_step = 200
  c.mix.class_prob = 0.5             # each present class of the pasted image is pasted w.p. this
  c.mix.min_area = 0.01              # a class keeps its image label while it covers this fraction
  # EdgePredictMix only (our reconstruction, mix.py): near the paste boundary, pixels with a
  # seed edge nearby are ignored. Edge pixel: max |p(x) - p(n)| over the bg + class
  # probabilities and the pixels n edge_distance away along each axis >= edge_threshold.
  c.mix.edge_threshold = 0.3
  c.mix.edge_band = 2                # Chebyshev radius (px) of the ignored band; 0 = ClassMix
  c.mix.edge_distance = 0            # px; 0: rs.refine_stride (one cell of the refined seed)

  # --- optimisation (METHOD.md section 4) -------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1
  c.optim.head_lr_mult = 1.0         # 10 on VOC (new heads, pretrained backbone); 1 from scratch
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 1e-4        # not on biases nor BatchNorm
  c.optim.poly_power = 0.9
  c.optim.warmup_steps = 0
  c.optim.freeze_backbone = False    # True: the backbone gets no update (the boundary network)

  # --- training ----------------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  # 300 (400 until this round, the switch at 200 and the mix at 270: the same fractions of it):
  # the demo's figures held over three seeds and it ran in under 300 s (docs/results.md).
  c.train.steps = 300
  c.train.batch_size = 16            # global batch
  c.train.log_every = 50
  c.train.checkpoint_every = 150
  c.train.keep_checkpoints = 2
  c.train.upper_bound = True         # also train the same net on true masks (the demo's ceiling)
  c.train.cam_baseline = True        # also train it on the classification loss alone (plain CAMs)
  # Those two in a second thread beside the RecurSeed network (one device, one process; the same
  # numbers): 1.43x the demo network's step throughput on 2 cores (bench/side_by_side.py); the
  # demo's train_rs 322 -> 296 s with the programs cached (stages/train_rs.py).
  c.train.side_by_side = True
  c.train.dtype = 'float32'          # compute dtype: 'float32' | 'bfloat16' (params, losses fp32)
  c.train.ema_decay = 0.0            # EMA of the params (e.g. 0.999); 0 = off
  c.train.max_nonfinite = 5          # stop after this many non-finite steps in a row (each skipped)
  c.train.async_checkpoints = True   # Orbax writes in the background while training goes on
  c.train.tensorboard = True         # TensorBoard event files beside metrics.jsonl

  # --- devices (docs/multi_device.md) ---------------------------------------------------------
  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = 'jit'            # 'jit' (NamedSharding over all devices) | 'pmap'
  # Multi-host (docs/multi_device.md): a process that stops sending heartbeats for this long is
  # taken as lost and every other process stops too (rerun to resume); a barrier (every process
  # at the end of a stage) waits at most barrier_timeout_s for the slowest process's share.
  c.parallel.peer_timeout_s = 60.0
  c.parallel.barrier_timeout_s = 86400.0
  c.parallel.heartbeat_timeout_s = 100.0  # jax.distributed's own (it aborts a process later)

  # --- inference to seeds (METHOD.md section 5) -------------------------------------------------
  c.infer = ml_collections.ConfigDict()
  c.infer.scales = (1.0, 0.5, 1.5, 2.0)
  c.infer.flip = True
  c.infer.class_threshold = 0.34     # val/test: classes kept by mean probability
  c.infer.bg_power = 2.0             # background = (1 - max over classes) ** bg_power
  # How the segmentation head reaches the image (recurseed_jax/infer.py): 'nearest' (the authors'
  # RS+EPM seeds: logits -> pass input -> softmax -> image, torch's nearest), 'bilinear' (the same
  # with bilinear: their DeepLab predictions) or 'probs_bilinear' (softmax at the head's stride,
  # one bilinear resize: cheapest).
  c.infer.interpolation = 'nearest'
  # Seed files: 'float16' (pseudo masks as from float32 seeds) | 'uint8' (half the disk; scores
  # below 1/510 become 0). The CRF always takes what is stored, so a resumed run gives the same.
  c.infer.seed_dtype = 'float16'
  # Fixed per bucket (last batch padded); a multiple of the devices. 8 on the 2-core CPU: the
  # demo network's seeds step ran 40-50 img/s at 8 against 33-35 at 32 (bench/infer.py).
  c.infer.batch_size = 8
  # The network's compute dtype at inference: 'float32' | 'bfloat16' (the parameters, softmax,
  # resizes and seeds stay float32; how bf16's pseudo masks agree: docs/inference.md).
  c.infer.dtype = 'float32'
  # (H, W) shapes images are padded to (bottom/right, with a valid size: results as unpadded, see
  # recurseed_jax/infer.py); each image takes the smallest that holds it; one compile per bucket.
  # () = one bucket, the largest image of the split. VOC: ((384, 512), (512, 384), (512, 512)).
  c.infer.buckets = ()
  c.infer.prefetch = 2               # batches decoded and padded ahead on a background thread
  # Batches computed at once, each from its own host thread, on one device (several: 1). On the
  # 2-core CPU one demo batch's passes leave a core idle: 2 ran the seeds 1.5x faster, bit for
  # bit the same (bench/infer.py --images 96 --streams 2: 14.4 -> 21.5 img/s). Each stream
  # holds its batch's memory: 1 on a GPU (configs/common.py).
  c.infer.streams = 2
  c.infer.io_threads = 2             # threads compressing seeds and writing PNGs

  # --- DenseCRF (METHOD.md section 5) -----------------------------------------------------------
  c.crf = ml_collections.ConfigDict()
  c.crf.iterations = 10
  c.crf.bi_weight = 4.0
  c.crf.bi_xy_std = 67.0
  c.crf.bi_rgb_std = 3.0
  c.crf.pos_weight = 3.0
  c.crf.pos_xy_std = 1.0
  # The image the bilateral kernel compares: 'denormalized' (the authors': the normalised input
  # de-normalised and truncated to uint8) | 'decoded' (the image as read).
  c.crf.image = 'denormalized'
  c.crf.workers = 2                  # CRF processes (one per free core); 0 = inline
  c.crf.queue_size = 8               # seeds waiting for the CRF pool (bounds host memory)

  # --- multi-stage segmenter: stages train_seg, predict (config_lib.segmenter_config) ---------
  # A DeepLabNet trained on the pseudo masks (cross-entropy, 255 ignored), then predicting val /
  # test with scales + flip, classes kept at max probability >= 0.05, and the same CRF (METHOD.md
  # section 5). Each subsection lists the fields of that section that differ for the segmenter;
  # the rest are the run's. configs/synthetic_multistage.py and configs/voc12_multistage_*.py.
  c.seg = ml_collections.ConfigDict()
  c.seg.init = 'scratch'             # the segmenter's model.init ('imagenet:<path>' on real data)
  c.seg.max_classes = 8              # classes per image the CRF sees (the most probable first)
  c.seg.data = ml_collections.ConfigDict()
  c.seg.model = ml_collections.ConfigDict(dict(segmenter_head='v3plus'))
  c.seg.optim = ml_collections.ConfigDict()
  c.seg.train = ml_collections.ConfigDict()
  # The authors' DeepLab inference: bilinear, every label (background too) whose max >= 0.05.
  c.seg.infer = ml_collections.ConfigDict(dict(class_threshold=0.05, interpolation='bilinear'))
  c.seg.predict_model = ml_collections.ConfigDict()  # at prediction: e.g. output_stride=8

  # --- pseudo masks: DenseCRF or IRN's random walk (METHOD.md section 5) -----------------------
  # What train_seg trains on and evaluate scores as the pseudo masks: 'crf' (stage crf:
  # pseudo_masks/), 'random_walk' (stages ir_labels, train_boundary, random_walk:
  # pseudo_masks_rw/) or 'random_walk+crf' (the same, then DenseCRF on the random walk's
  # scores: pseudo_masks_rw_crf/).
  c.pseudo = ml_collections.ConfigDict()
  c.pseudo.method = 'crf'
  # Stage ir_labels (IRN's cam_to_ir_label): confident foreground where the seed beats conf_fg,
  # background where nothing beats conf_bg, each through a label CRF; 255 between.
  c.ir_labels = ml_collections.ConfigDict()
  c.ir_labels.conf_fg = 0.30
  c.ir_labels.conf_bg = 0.05
  c.ir_labels.crf = ml_collections.ConfigDict(dict(
      iterations=10, gt_prob=0.7, pos_xy_std=3.0, pos_weight=3.0, bi_xy_std=50.0, bi_rgb_std=5.0,
      bi_weight=10.0))
  # Stage train_boundary: IRN's boundary branch on a frozen ResNet (models/boundary_net.py),
  # trained on pixel pairs within `radius` (stride-4 cells) of the relation labels. As c.seg, each
  # subsection lists the fields of that section that differ for it; the rest are the run's.
  c.boundary = ml_collections.ConfigDict()
  # Its backbone: 'recurseed' (the trained RecurSeed network's: no ImageNet weights needed),
  # 'imagenet:<path>' (IRN's frozen ImageNet ResNet-50), 'affinity:<path>' (the authors'
  # AffinityNet, whole) or 'scratch'.
  c.boundary.init = 'recurseed'
  c.boundary.feature_size = 32       # channels of each of the five edge branches
  # Pairs within this many stride-4 cells (IRN: 10 on 512 crops; the demo's 64-pixel crops
  # have 16 cells, which hold radius 5 at most: 2 * radius - 1 columns).
  c.boundary.radius = 5
  c.boundary.data = ml_collections.ConfigDict(dict(
      crop_size=64, scale_range=(0.8, 1.25), color_jitter=(0.0, 0.0, 0.0, 0.0)))
  c.boundary.model = ml_collections.ConfigDict()
  # IRN's optimiser: SGD at lr 0.1 on the branch, poly 0.9, weight decay 1e-4; its momentum is
  # 1e-4 (IRN's PolyOptimizer passes weight_decay where torch's SGD takes momentum).
  c.boundary.optim = ml_collections.ConfigDict(dict(
      lr=0.1, head_lr_mult=1.0, momentum=1e-4, nesterov=False, weight_decay=1e-4,
      freeze_backbone=True))
  c.boundary.train = ml_collections.ConfigDict(dict(
      steps=1200, batch_size=16, log_every=50, checkpoint_every=400, upper_bound=False,
      cam_baseline=False))
  # Stage random_walk (IRN's make_sem_seg_labels): the seed at stride 4 propagated over the
  # boundary network's affinities, upsampled, background `bg`, argmax.
  c.random_walk = ml_collections.ConfigDict()
  c.random_walk.beta = 10.0
  # 2 ** exp_times steps of the walk. IRN's 8 is for VOC's ~128 x 96 cells (configs/common.py);
  # on the demo's 16 x 16 cells 256 steps spread any leak over the whole map: 4 (docs/results.md).
  c.random_walk.exp_times = 4
  c.random_walk.radius = 5
  c.random_walk.bg = 0.25            # IRN's sem_seg_bg_thres
  c.random_walk.size = 0             # images padded to size x size for the boundary network
  #                                    (IRN: 512); 0 = the largest image of the split, rounded up
  c.random_walk.batch_size = 8       # a multiple of the local devices

  # --- export --------------------------------------------------------------------------------
  c.export = ml_collections.ConfigDict()
  c.export.num_overlays = 8          # image | seed | pseudo mask | truth figures, evenly sampled
  c.export.submission = True         # VOC test submission tree + tar.gz (if a test split exists)
  c.export.mask_dirs = ''            # workdir folders to export: 'pseudo_masks,predictions/val'
  c.export.mask_format = 'palette'   # 'palette' (VOC colours) | 'gray' (8-bit ids, COCO 0..80)
  # <workdir>/report.html: scores, training curves, a gallery per split, config and commands, in
  # one file that opens offline. The gallery ranks each split's images by the per-image mIoU of its
  # final product and shows the report_per_group worst, median and best, then report_fixed evenly
  # spaced images (the same from run to run).
  c.export.report = True
  c.export.report_per_group = 2
  c.export.report_fixed = 2
  return c
