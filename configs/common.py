"""The fields every experiment config has, with their defaults; experiment files change only a few.

Sections: dataset (what to read), data (crops, batches, augmentation), model, loss (a '+'-joined mix of term
names), losses (each term's weight and hyperparameters, `losses.<name>`), sampler (which pixels the loss terms
count), edge_net (g_phi pre-training or a checkpoint), optimizer (SGD + momentum, warm-up then poly decay), train
(length, logging, eval and checkpoint cadence), eval (trimap widths, plots), parallel (device mesh and parameter
sharding), mixed_precision, export (the exported model's size and platforms).

Batch sizes are GLOBAL: `data.batch_size` images per step over all processes and devices (each process reads
batch_size / process_count); it must be a multiple of the data-parallel device count times
`train.grad_accum_steps`. `data.eval_batch_size` is global too, rounded up to a multiple of the devices.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections
from ml_collections.config_dict import placeholder

from semeda_jax import data


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.stages = ("train", "eval")  # train pre-trains g_phi first when the loss needs it

    # Read by semeda_jax.data.build_reader: `root` is the dataset folder (for "synthetic": where to write it;
    # unset = a parameter-hash folder under `cache_dir`, default ~/.cache/semeda_jax). The keys after val_split
    # are read by the datasets named (their builders in semeda_jax/data/__init__.py; unset = the builder's
    # default); a key set for a dataset that does not read it is a ConfigError.
    config.dataset = ml_collections.ConfigDict(dict(
        name="synthetic",
        root=ml_collections.config_dict.placeholder(str),
        cache_dir=ml_collections.config_dict.placeholder(str),
        num_classes=21,
        train_split="train",
        val_split="val",
        # synthetic: the generator's parameters (data/synthetic.py)
        num_train=ml_collections.config_dict.placeholder(int),
        num_val=ml_collections.config_dict.placeholder(int),
        image_size=ml_collections.config_dict.placeholder(tuple),
        void_width=ml_collections.config_dict.placeholder(int),
        seed=ml_collections.config_dict.placeholder(int),
        # voc: the SBD folder for split "train_aug", the label folder under root
        sbd_root=ml_collections.config_dict.placeholder(str),
        label_dir=ml_collections.config_dict.placeholder(str),
        # cityscapes: "gtFine" | "gtCoarse"
        annotation=ml_collections.config_dict.placeholder(str),
        # coco_stuff: "auto" (default) | "stuffthingmaps" | "trainids"
        label_format=ml_collections.config_dict.placeholder(str),
        # tfds: a TFDS dataset by name (data/tfds_reader.py), exported once under cache_dir; unset = the defaults
        # data_dir TFDS's own, image_key "image", label_key "segmentation_mask", label_offset 0, void_values (255,)
        tfds_name=ml_collections.config_dict.placeholder(str),
        data_dir=ml_collections.config_dict.placeholder(str),
        image_key=ml_collections.config_dict.placeholder(str),
        label_key=ml_collections.config_dict.placeholder(str),
        label_offset=ml_collections.config_dict.placeholder(int),
        void_values=ml_collections.config_dict.placeholder(tuple),
        class_names=ml_collections.config_dict.placeholder(tuple),
    ))
    config.data = ml_collections.ConfigDict(dict(
        crop_size=(321, 321),
        scale_range=(0.5, 2.0),
        batch_size=6,
        mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375),
        eval_pad_size=(512, 512),  # labels' padded size; images are padded to it times input_scale
        eval_batch_size=4,
        # Resize factor of the images the network sees (training scales multiply it; evaluation resizes the
        # images and upsamples the logits to the full-resolution labels). SEMEDA's DeepLab v2 on Cityscapes: 0.5.
        input_scale=1.0,
    ))
    config.model = ml_collections.ConfigDict(dict(
        name="deeplab_v3plus", backbone="resnet", depth=101, base_width=64, output_stride=16, stem="deeplab",
        bn_mode="frozen",
        # ImageNet weights for the backbone: a .safetensors / .npz torchvision or timm state dict
        # (semeda_jax/models/pretrained.py); "" = random initialisation (with a warning).
        pretrained="",
        # bn_mode="train": batch statistics over groups of this many samples of the global batch (None or 0 =
        # the whole global batch, i.e. fully synchronized BN); see semeda_jax/models/layers.py.
        bn_group_size=ml_collections.config_dict.placeholder(int),
        # '+'-joined names of models.AUX_HEADS whose named outputs join "logits" (loss terms read them).
        aux_heads="",
        # True: the guided-filter mean-field CRF (config.eval.crf's settings) refines the logits inside the
        # model, in training (unrolled, differentiable) and inference; our extension, the guidance paper trains
        # piecewise (semeda_jax/crf.py, CRFLayer). No parameters: not part of the checkpoint fingerprint.
        crf_layer=False,
        # What the backward pass recomputes of each ResNet / Xception block instead of storing it: "none",
        # "blocks" (all but the block's input) or a jax.checkpoint_policies name (models/layers.py REMAT_MODES).
        remat="none"))
    # bfloat16 activations and matmuls; parameters, optimiser state, BN statistics and the loss stay float32.
    config.mixed_precision = False
    config.parallel = ml_collections.ConfigDict(dict(
        spatial_partitions=1,           # chips per image: height split over the `spatial` mesh axis (docs/usage.md)
        param_sharding="replicated",    # or "data": big parameter/optimiser leaves split over `data` (ZeRO-3)
    ))

    config.loss = "ce+semeda"
    # One section per loss term (semeda_jax/objective.py's registry): its weight in the mix and its
    # hyperparameters; only the sections of the terms in config.loss are read.
    # class_weights (and focal's alpha): None or one number per class, e.g. --config.losses.ce.class_weights=
    # "(1,2,...)" (weighted means, losses/common.py); max_distance: None or the surface maps' truncation in pixels.
    config.losses = ml_collections.ConfigDict(dict(
        ce=dict(weight=1.0, class_weights=placeholder(tuple)),
        # normalize: scale-normalised SEMEDA, an extension of this project (losses/semeda.py); False = the paper.
        semeda=dict(weight=1.0, lambdas=(2.0, 4.0, 0.0), reduction="mean_pixels_sum_channels", normalize=False),
        sobel=dict(weight=1.0, coefficient=4.0, reduction="mean_pixels_sum_channels"),
        bal=dict(weight=1.0, kernel="gaussian", size=35, sigma=3.0, beta=0.5, down=4),
        ohem=dict(weight=1.0, threshold=0.6, min_kept=0),
        scl=dict(weight=1.0),
        # Sigmoid BCE of the guidance model's class_logits against the classes present in the label map.
        multilabel=dict(weight=1.0),
        # The loss zoo (losses/dice.py, focal.py, lovasz.py, surface.py); defaults = the functions'.
        dice=dict(weight=1.0, smooth=0.0, eps=1e-7, per_image=False, absent="zero", squared=False,
                  class_weights=placeholder(tuple)),
        gdl=dict(weight=1.0, smooth=0.0, eps=1e-7, per_image=False, class_weights=placeholder(tuple)),
        tversky=dict(weight=1.0, alpha=0.3, beta=0.7, smooth=0.0, eps=1e-7, per_image=False, absent="zero",
                     class_weights=placeholder(tuple)),
        focal=dict(weight=1.0, gamma=2.0, alpha=placeholder(tuple), class_weights=placeholder(tuple)),
        lovasz=dict(weight=1.0, per_image=False, classes="present", class_weights=placeholder(tuple)),
        # Boundary loss: not bounded below, paired with a regional term at a small weight ("ce+surface").
        surface=dict(weight=0.01, max_distance=placeholder(int), class_weights=placeholder(tuple)),
    ))
    # A pixel sampler: name "" (none) or "ohem" (losses.ohem_kept_mask; mmseg's OHEMPixelSampler): each step
    # the pixels it keeps are the only ones the terms taking a pixel mask count (ce, bal, dice, gdl, tversky,
    # focal, lovasz, surface; objective.py). One section per sampler; "ce" with "ohem" = the "ohem" term.
    config.sampler = ml_collections.ConfigDict(dict(name="", ohem=dict(threshold=0.6, min_kept=0)))

    config.edge_net = ml_collections.ConfigDict(dict(
        checkpoint="",      # a WORKDIR/edge_net folder of an earlier run; "" = pre-train in this workdir
        steps=1000,
        batch_size=16,
        learning_rate=1e-2,
    ))
    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=5e-4, momentum=0.9, weight_decay=1e-4, warmup_steps=0, poly_power=0.9))
    config.train = ml_collections.ConfigDict(dict(
        steps=30000, log_every=50, eval_every=2000, checkpoint_every=1000, keep_checkpoints=3,
        grad_accum_steps=1,  # k > 1: each step sums the gradients of k micro-batches of batch_size / k
        # Log logit_grad_norm_<term>: the L2 norm of each weighted term's gradient w.r.t. the model's logits.
        log_logit_grad_norms=False,
        # A WORKDIR/checkpoints folder (or a run's workdir) whose params + BN statistics start this run at step
        # 0 (fresh optimiser and schedule; same parameter tree); "" = random / config.model.pretrained init.
        init_checkpoint="",
        # True: init_checkpoint may be of another model (e.g. without this one's relation module or aux head):
        # only its arrays whose path and shape match this model's are loaded, the rest start fresh (logged).
        init_partial=False,
        # Comma-separated training fields a resume may find changed (e.g. "data.batch_size"); each change is
        # logged. Any other change of what training does refuses the resume (checkpointing.training_fingerprint).
        resume_changes=""))
    # f1_groups: "" or "helen" (merged F1 of brows, eyes, nose, mouth and overall, SPEC.md 1(c)).
    # Boundary IoU band width and boundary F tolerance in pixels, 0 = per image from its diagonal (2% and 0.8%);
    # num_worst_images: the galleries of the images of lowest mIoU / Boundary IoU in the report (0 = none).
    config.eval = ml_collections.ConfigDict(dict(trimap_widths=(1, 2, 3, 5, 10, 20, 40), num_plot_images=8,
                                                 f1_groups="", boundary_width=0, boundary_tolerance=0,
                                                 num_worst_images=8))
    # The eval stage's and predict's inference (semeda_jax/inference.py); periodic evaluation during training is
    # always whole-image single-scale, and this one runs once more at the end of training when it differs.
    # mode: whole | sliding (window, stride, blend) | shifted (shifts = n x n); views: scales x flip, fused by
    # fusion (avg | max | avg+max | learned); postprocess: "" or a name of inference.POSTPROCESSORS.
    config.eval.inference = ml_collections.ConfigDict(dict(
        mode="whole", window=(0, 0), stride=(0, 0), blend="uniform", shifts=4, scales=(1.0,), flip=False,
        fusion="avg", postprocess=""))
    # The guided-filter mean-field CRF (semeda_jax/crf.py), used when postprocess = "guided_crf": window radius,
    # eps on 0-255 intensities (10: the guidance paper's), mean-field iterations T, pairwise weight w (0 = off),
    # compatibility (potts | content: Eqs. 6-7 from the model's class_logits, lambda = lam). The paper gives no
    # radius, T, w or lambda. config.model.crf_layer uses the same settings. Tuned on synthetic 96x128 images
    # (docs/results.md, the CRF study) the best was radius 8, eps <= 10, weight 16, T 1 (+5.2 mIoU against
    # +1.3 with these defaults): scale the radius to ~1/12 of the image's short side, raise the weight to 8-16.
    config.eval.crf = ml_collections.ConfigDict(dict(radius=4, eps=10.0, iterations=5, weight=1.0,
                                                     compatibility="potts", lam=1.0))
    # The learn_fusion stage (semeda_jax/fusion.py): per-class view weights for fusion "learned" (guidance
    # paper Eqs. 9-10), fitted with the network frozen on `pixels_per_image` random valid pixels of every image
    # of `split` (never the validation split), Adam for `steps` at `learning_rate`; -> WORKDIR/fusion_weights.json.
    config.eval.learn_fusion = ml_collections.ConfigDict(dict(split="train", pixels_per_image=256, steps=300,
                                                              learning_rate=0.05))
    # Training phases (semeda_jax/phases.py): order = comma-separated phase names, one section per phase with
    # its split, annotation, loss, steps or epochs, schedule, learning rate and eval cadence; "" = one phase.
    config.phases = ml_collections.ConfigDict(dict(order=""))
    # The export stage (semeda_jax/export.py): the eval-time model as jax.export and SavedModel artifacts with a
    # symbolic batch at the fixed size pad_size (H, W) (unset = data.eval_pad_size; the input is that size times
    # data.input_scale), lowered for `platforms` (of "cpu", "cuda", "rocm", "tpu") -> WORKDIR/export.
    config.export = ml_collections.ConfigDict(dict(pad_size=placeholder(tuple), platforms=("cpu", "cuda", "tpu")))
    return config


SMOKE_DEPTHS = {"resnet": 18, "xception": 26, "resnet38": 38, "vgg16": 16}  # ResNet-18; Xception with one
# middle-flow block; ResNet-38 and VGG-16 have one depth (smoke narrows them only)
SMOKE_DATASET = dict(num_train=16, num_val=6, image_size=(40, 48))  # for a dataset that generates its images
SMOKE = {"smoke": (None, ("smoke",))}  # the variant group of every config file: `:smoke`


def shrink_for_smoke(config: ml_collections.ConfigDict) -> None:
    """Tiny everything: a run of seconds that exercises every stage (tests and `:smoke` variants)."""
    reads = data.dataset_fields(config.dataset.name)
    config.dataset.update({k: v for k, v in SMOKE_DATASET.items() if k in reads})
    config.model.update(depth=SMOKE_DEPTHS[config.model.backbone], base_width=4)
    if config.model.get("bn_group_size"):
        config.model.bn_group_size = 2  # groups must divide the smoke batch of 4
    config.data.update(crop_size=(32, 32), batch_size=4, eval_pad_size=(40, 48), eval_batch_size=4)
    config.edge_net.update(steps=30, batch_size=4)
    config.train.update(steps=12, log_every=4, eval_every=6, checkpoint_every=4)
    config.eval.num_plot_images = 4


def parse_variants(arg: str | None, config_file: str,
                   groups: Mapping[str, tuple[str | None, Sequence[str]]]) -> dict[str, str | None]:
    """The `:variant` of a config file: 'ppce,smoke' -> {group: its token, else its default} for `groups`
    {group: (default, known tokens)}, at most one token per group; a ValueError names the file and the bad
    token (with the known ones) or the two tokens of one group."""
    chosen = {group: default for group, (default, _) in groups.items()}
    given = {}
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        group = next((name for name, (_, tokens) in groups.items() if token in tokens), None)
        if group is None:
            known = sorted(t for _, tokens in groups.values() for t in tokens)
            raise ValueError(f"{config_file}: unknown variant {token!r}; known: {known}")
        if group in given:
            raise ValueError(f"{config_file}: variants {given[group]!r} and {token!r} both choose the {group}; "
                             f"give one of {list(groups[group][1])}")
        chosen[group] = given[group] = token
    return chosen
