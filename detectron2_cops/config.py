"""Configuration keys of COPS (Abbas & Swoboda, NeurIPS 2021) for Detectron2.

``add_cops_config(cfg)`` adds every key COPS reads, each with a default and a comment. It builds on
Detectron2's DeepLab project config (``detectron2.projects.deeplab.add_deeplab_config``: the
ResNet-DeepLab backbone keys, ``MODEL.SEM_SEG_HEAD`` ASPP/projection keys, poly LR keys and
``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``).

Units: ``*_AREA`` keys are in *input image* pixels; edge distances are in pixels of the
output-stride-4 grid (see ``detectron2_cops.solvers.GridGraph``).
"""
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["add_cops_config"]


def add_cops_config(cfg):
    """Add the COPS config keys to a Detectron2 ``CfgNode`` in place (idempotent) and return it.

    Only defaults are set here; the values are checked where they are read (the ``from_config``
    of the model, its heads and post-processor, and ``detectron2_cops.optimizer``), naming the key.
    """
    if hasattr(cfg.MODEL, "COPS"):
        return cfg
    add_deeplab_config(cfg)

    # ---------------------------------------------------------------- solver (optimizer)
    # "ADAM" (the paper's setting) or "SGD" (detectron2_cops.optimizer, used by tools/train_net.py).
    cfg.SOLVER.OPTIMIZER = "ADAM"

    # ---------------------------------------------------------------- input / targets
    # Pixels of thing segments smaller than SMALL_INSTANCE_AREA (image pixels) get
    # SMALL_INSTANCE_WEIGHT in the semantic loss (DeeperLab / Panoptic-DeepLab weighting) and
    # the factor SMALL_INSTANCE_WEIGHT on their affinity weight (the original).
    cfg.INPUT.SMALL_INSTANCE_AREA = 4096
    cfg.INPUT.SMALL_INSTANCE_WEIGHT = 3
    # Whether crowd regions are ignored (weight 0) in the semantic loss.
    cfg.INPUT.IGNORE_CROWD_IN_SEMANTIC = False
    # Whether stuff pixels get weight 0 in the affinity loss, so edges with a stuff endpoint are
    # ignored (the original's IGNORE_STUFF_IN_AFFINITIES; its configs: False).
    cfg.INPUT.IGNORE_STUFF_IN_AFFINITIES = False
    # Affinity-loss weight of thing (instance) pixels, relative to 1.0 for stuff pixels (the
    # original INSTANCE_LOSS_WEIGHT; its pretrain configs use 4.0). Pixels of small instances
    # (area < SMALL_INSTANCE_AREA) weigh INSTANCE_AFFINITY_WEIGHT * SMALL_INSTANCE_WEIGHT (4 x 3 =
    # 12, as the original). An edge weighs max of its two pixels' weights, 0 if either is 0.
    cfg.INPUT.INSTANCE_AFFINITY_WEIGHT = 4.0
    # Affinity-loss weight of the padding added to reach a multiple of MODEL.COPS.SIZE_DIVISIBILITY
    # (when > 0; COCO: 640): the padding is one segment of its own, so the edges from the image
    # into it are cuts. 1.0 = the original; 0.0 = padding edges ignored (a departure).
    cfg.INPUT.PADDING_AFFINITY_WEIGHT = 1.0

    # ---------------------------------------------------------------- semantic head
    # Output channels of the extra head convs before the predictor.
    cfg.MODEL.SEM_SEG_HEAD.HEAD_CHANNELS = 256
    # Extra head before the predictor: False = two 3x3 conv+norm+ReLU (the original COPS head,
    # loads the authors' checkpoints); True = one 5x5 depthwise-separable conv (Panoptic-DeepLab;
    # a departure). Independent of USE_DEPTHWISE_SEPARABLE_CONV, which switches the ASPP and
    # decoder fuse convs (depthwise-separable in the original too).
    cfg.MODEL.SEM_SEG_HEAD.HEAD_USE_DEPTHWISE_SEPARABLE_CONV = False
    # Fraction of hardest pixels kept by DeepLabCE ("hard_pixel_mining" loss).
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TOP_K = 0.2

    # ---------------------------------------------------------------- affinity head
    cfg.MODEL.AFFINITY_HEAD = CN()
    # Name in AFFINITY_HEAD_REGISTRY.
    cfg.MODEL.AFFINITY_HEAD.NAME = "AffinityHead"
    cfg.MODEL.AFFINITY_HEAD.IN_FEATURES = ["res2", "res3", "res5"]
    cfg.MODEL.AFFINITY_HEAD.PROJECT_FEATURES = ["res2", "res3"]
    cfg.MODEL.AFFINITY_HEAD.PROJECT_CHANNELS = [32, 64]
    cfg.MODEL.AFFINITY_HEAD.ASPP_CHANNELS = 256
    cfg.MODEL.AFFINITY_HEAD.ASPP_DILATIONS = [6, 12, 18]
    cfg.MODEL.AFFINITY_HEAD.ASPP_DROPOUT = 0.1
    cfg.MODEL.AFFINITY_HEAD.CONVS_DIM = 256
    # Channels of the head conv of each per-distance classifier.
    cfg.MODEL.AFFINITY_HEAD.HEAD_CHANNELS = 256
    cfg.MODEL.AFFINITY_HEAD.COMMON_STRIDE = 4
    cfg.MODEL.AFFINITY_HEAD.NORM = "SyncBN"
    cfg.MODEL.AFFINITY_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = True
    # Edge distances d on the stride-4 grid, and one sampling interval per distance.
    cfg.MODEL.AFFINITY_HEAD.EDGE_DISTANCES = [1, 4, 16, 32, 64]
    cfg.MODEL.AFFINITY_HEAD.EDGE_SAMPLING_INTERVALS = [1, 1, 1, 1, 1]
    # Weight of the weighted binary cross entropy on affinities (pretraining stage).
    cfg.MODEL.AFFINITY_HEAD.LOSS_WEIGHT = 1.0
    # Fraction of hardest edges kept in the affinity loss (1.0 = all edges).
    cfg.MODEL.AFFINITY_HEAD.LOSS_TOP_K = 1.0
    # Normalisation of the affinity BCE: "per_channel_mean" (the original: per distance and per
    # channel (rows, columns), top-k over all positions, plain mean over the kept count) or
    # "weight_sum" (a departure: per distance, top-k over weighted edges, divided by the sum of
    # the kept weights).
    cfg.MODEL.AFFINITY_HEAD.LOSS_NORMALIZATION = "per_channel_mean"

    # ---------------------------------------------------------------- COPS
    cfg.MODEL.COPS = CN()
    # Training stage: False = pretraining (DeepLabCE + affinity BCE, the AMWC layer is not used
    # for the loss); True = fully differentiable training with the PQ surrogate through the AMWC
    # layer (paper Sec. 3.3-3.5).
    cfg.MODEL.COPS.FULLY_DIFFERENTIABLE = False
    # Weight of the PQ surrogate loss (1 - PQ~); the paper uses 10 on Cityscapes.
    cfg.MODEL.COPS.PQ_LOSS_WEIGHT = 10.0
    # Perturbation magnitudes lambda ~ U(LAMBDA_MIN, LAMBDA_MAX) and their number N for the
    # averaged black-box gradient estimator (paper Sec. 3.4, contribution 1).
    cfg.MODEL.COPS.LAMBDA_MIN = 1.0
    cfg.MODEL.COPS.LAMBDA_MAX = 5000.0
    cfg.MODEL.COPS.NUM_LAMBDA_SAMPLES = 5
    # Backward of the AMWC layer: start each perturbed multiway-cut solve from the forward
    # solution and improve it by local search, instead of GAEC from scratch as the COPS code does
    # (AMWCLayer(backward_warm_start=...)); the layer's forward solve then searches locally too,
    # whatever LOCAL_SEARCH says (which still governs inference). Off, as the authors; the
    # CPU-scale stage-2 configs turn it on (measured in docs/departures.md).
    cfg.MODEL.COPS.BACKWARD_WARM_START = False
    # Build the backward's perturbed costs in float32 instead of float64 (half the memory).
    cfg.MODEL.COPS.BACKWARD_FLOAT32 = True
    # Probability of pixel dropout on the semantic costs during fully differentiable training.
    cfg.MODEL.COPS.PIXEL_DROPOUT = 0.1
    # Segments smaller than these areas (image pixels) are dropped at inference; in training
    # they are the area limits of the foreground probability of the PQ surrogate.
    cfg.MODEL.COPS.STUFF_AREA = 2048
    cfg.MODEL.COPS.INSTANCE_AREA = 200
    # Run the local-search pass of the AMWC solver after GAEC (inference, and the AMWC layer in
    # training). Off, as the authors' solver: it lowers the objective but did not raise PQ
    # (docs/departures.md).
    cfg.MODEL.COPS.LOCAL_SEARCH = False
    # Threads of the batch solver; 0 = one per image, at most the number of CPU cores.
    cfg.MODEL.COPS.NUM_THREADS = 0
    # Freeze all BatchNorm layers (statistics and affine parameters).
    cfg.MODEL.COPS.FREEZE_BN = False
    # Parameters whose names start with one of these prefixes are frozen, e.g.
    # ["backbone", "sem_seg_head.decoder", "affinity_head.decoder"].
    cfg.MODEL.COPS.FROZEN_PREFIXES = []
    # Pad images to a multiple of this size (-1: the backbone's size divisibility). ASPP with
    # image pooling needs a fixed size when INPUT.CROP.ENABLED.
    cfg.MODEL.COPS.SIZE_DIVISIBILITY = -1
    # Name in POST_PROCESSOR_REGISTRY of the post-processor used at inference.
    cfg.MODEL.COPS.POST_PROCESSOR = "AMWCPostProcessor"
    # Whether inference also returns "instances" (masks, classes, boxes, scores).
    cfg.MODEL.COPS.PREDICT_INSTANCES = True
    # Whether inference also returns "sem_seg_head" (the semantic head's logits at the output
    # size, the authors' "orig_sem_seg"; the evaluators then score its mIoU too). Off: a
    # [K, height, width] float32 tensor costs more than the rest of the post-processing
    # (docs/benchmarks.md), and the authors score only "sem_seg" and "panoptic_seg".
    cfg.MODEL.COPS.PREDICT_SEM_SEG_HEAD = False
    # Inference conventions (AMWCPostProcessor); the defaults are the authors'
    # (panoptic_seg_affinity.py, post_processing.py, utils.interpolate_mask, losses.MaskScore).
    # Solve the AMWC on the whole padded grid (authors) or only on the image's part of it.
    cfg.MODEL.COPS.SOLVE_PADDED_GRID = True
    # Units of STUFF_AREA / INSTANCE_AREA at inference: "input" (network-input pixels, stride**2
    # per grid pixel of the solved grid, padding included: authors) or "output" (output pixels).
    cfg.MODEL.COPS.AREA_UNITS = "input"
    # Resize of the segment map and sem_seg from the input size to the output size:
    # F.interpolate mode "nearest" (authors) or "nearest-exact".
    cfg.MODEL.COPS.RESIZE_MODE = "nearest"
    # Resize of the upsampled logits (sem_seg_head, the instance score) to the output size:
    # "nearest" (authors) or "bilinear" (Detectron2's sem_seg_postprocess).
    cfg.MODEL.COPS.LOGITS_RESIZE_MODE = "nearest"
    # Edge term of the instance score: "positions" (authors' MaskScore: sums divided by the
    # number of map positions, per distance) or "edges" (means over the edges themselves).
    cfg.MODEL.COPS.INSTANCE_SCORE_EDGE_MEAN = "positions"
    # Log the exact PQ of the training batch's AMWC solution (fully differentiable stage).
    cfg.MODEL.COPS.LOG_TRAIN_PQ = True

    # ---------------------------------------------------------------- COPS, fully differentiable
    # Keys that follow the authors' code (their train_net.py, utils.py, losses.py); the defaults
    # are the authors' behaviour.
    cops = cfg.MODEL.COPS
    # One padded (empty) mask per ground-truth segment left unmatched, paired with it in the PQ
    # surrogate and an extra MWC label in the backward (authors' utils.py ComputeBestGroundTruth,
    # losses.py add_semantic_costs_to_instance_costs). False: labels = segments + free classes.
    cops.PAD_UNMATCHED_GT = True
    # PQ surrogate: constant added to numerator and denominator of each class ratio (authors:
    # PanopticQualityLoss eps 0.1; with 0 a class seen only as false positives has no gradient).
    cops.SURROGATE_RATIO_EPS = 0.1
    # PQ surrogate counting rule: "original" (authors' PanopticQualityLoss: every segment in one
    # pair, with an empty counterpart when unmatched; a matched pair below IoU 0.5 is a soft FN
    # only) or "pq" (soft TP/FP/FN of Kirillov's PQ: exact PQ on hard masks).
    cops.SURROGATE_RULE = "original"
    # Thing pairs without overlap may be matched (authors' MatchMasksPair); False: never.
    cops.SURROGATE_MATCH_ZERO_OVERLAP = True
    # The surrogate's foreground probability uses INSTANCE_AREA / SURROGATE_INSTANCE_AREA_DIVISOR
    # and STUFF_AREA / SURROGATE_STUFF_AREA_DIVISOR grid pixels. Authors (training):
    # INSTANCE_AREA / 4 and STUFF_AREA / 4 / STUFF_AREA_DOWNSAMPLING_FACTOR_TRAIN (4) = / 16.
    cops.SURROGATE_INSTANCE_AREA_DIVISOR = 4.0
    cops.SURROGATE_STUFF_AREA_DIVISOR = 16.0
    # Weight of crowd pixels in the surrogate's IoUs and the AMWC layer's node gradient; they
    # belong to no ground-truth segment. Authors: 1 (panoptic_weights are 1 on crowd); 0 ignores them.
    cops.SURROGATE_CROWD_WEIGHT = 1.0
    # Dropout on the calibrated edge costs in training: an edge cost is set to 0 with this
    # probability, no 1 / (1 - p) rescaling (authors: nn.Dropout(DROPOUT) * (1 - DROPOUT), 0.1).
    cops.EDGE_DROPOUT = 0.1
    # Thing clusters with fewer grid pixels get no mask, in training and at inference (authors:
    # IGNORE_INSTANCE_SIZE_AMC // 4 = 12 // 4 = 3). 1 keeps every cluster.
    cops.MIN_THING_CLUSTER_SIZE = 3
    # Every this many iterations the fully differentiable stage prints surrogate PQ, train PQ and
    # the calibration scalars to the log (they go to EventStorage / metrics.json every iteration).
    cops.LOG_PERIOD = 20

    # Per-part learning rates of the fully differentiable stage (authors' train_net.py
    # build_optimizer with FINE_TUNING_MODE, LEARNING_RATE_REDUCTION_PER_STAGE = 20,
    # FREEZE_SEM_SEG_TILL = FREEZE_EDGE_COSTS_TILL = 1). Parameter i of the model whose name
    # matches LR_GROUP_PATTERNS[k] (fnmatch pattern, also matching at a module boundary:
    # "a.b" matches "a.b.c.weight") trains at BASE_LR / (LR_REDUCTION_PER_STAGE *
    # LR_GROUP_STAGES[k]), BASE_LR for stage 0. Used only when MODEL.COPS.FULLY_DIFFERENTIABLE;
    # empty patterns = Detectron2's default parameter groups.
    cfg.SOLVER.LR_REDUCTION_PER_STAGE = 20.0
    cfg.SOLVER.LR_GROUP_PATTERNS = [
        "sem_seg_head.head",                      # /40 (authors: sem_seg_head.head)
        "sem_seg_head.predictor",                 # /20
        "calibration.semantic_*",                 # BASE_LR (authors: seg_cost_weights)
        "affinity_head.head",                     # /60 (authors: AFF_EMBED_head.affinity_head)
        "affinity_head.classifiers.*.convs",      # /40 (authors: classifiers[i][:-1])
        "affinity_head.classifiers.*.predictor",  # /20 (authors: classifiers[i][-1])
        "calibration.edge_*",                     # BASE_LR (authors: edge_costs_weights)
    ]
    cfg.SOLVER.LR_GROUP_STAGES = [2, 1, 0, 3, 2, 1, 0]
    # Trainable parameters that match no pattern are frozen (authors: FINE_TUNING_MODE trains
    # only the listed parts: backbone and both decoders stay fixed). False: they train at BASE_LR.
    cfg.SOLVER.LR_GROUP_FREEZE_OTHERS = True
    return cfg
