"""A segmentation model = backbone + head + optional auxiliary heads, built from flat keyword fields.

    model = build_model("deeplab_v3plus", num_classes=21, backbone="resnet", depth=101, output_stride=16)
    outputs = model.apply(variables, images, train=False)        # {"logits": [B,h,w,C] float32, ...}
    outputs, updates = model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": key})

`MODELS` names a head and the model's defaults; `BACKBONES`, `HEADS` and `AUX_HEADS` map names to flax
classes. Each field goes to exactly the components whose constructor declares it (the BN settings and
`dtype` to every BatchNormed one, `output_stride` / `base_width` to backbone and head, `num_classes` to the
heads), so a field no component takes is an error naming it. The head shares the model's scope: the parameter
tree is {backbone, <head's submodules>, aux_heads_<i>}, as before the split, so checkpoints and pretrained
backbones keep their paths. An auxiliary head takes (features, train) and returns a dict of named outputs that
join "logits" in the model's output dict (loss terms read them by name, objective.py). A head returns logits,
or (logits, {name: features}) to share features with the aux heads (RelationNet's head shares the relation
module's output as "classifier_input", which its similarity subnet reads). `class_branch=True` adds the guidance
paper's classification branch (models/guidance.py) at params["class_branch"]: "class_logits" [B,C] join the
outputs and are added to "logits" before upsampling.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from semeda_jax import crf
from semeda_jax.models.deeplab import ASPPHead, ASPPLHead, DecoderHead, LargeFOVHead
from semeda_jax.models.guidance import ClassificationBranch
from semeda_jax.models.layers import check_remat
from semeda_jax.models.pac import PACHead
from semeda_jax.models.relation import RelationHead
from semeda_jax.models.resnet import ResNet
from semeda_jax.models.resnet38 import ResNet38
from semeda_jax.models.similarity import SimilarityHead
from semeda_jax.models.vgg import VGG16
from semeda_jax.models.xception import Xception
from semeda_jax.validation import ConfigError

BACKBONES = {"resnet": ResNet, "xception": Xception, "vgg16": VGG16, "resnet38": ResNet38}
DEFAULT_DEPTHS = {"resnet": 101, "xception": 71, "vgg16": 16, "resnet38": 38}
HEADS = {"aspp_l": ASPPLHead, "aspp": ASPPHead, "decoder": DecoderHead, "pac": PACHead, "largefov": LargeFOVHead,
         "relation": RelationHead}
# name -> flax class; a paper's extra outputs register here (RelationNet's similarity subnet: "pair_logits")
AUX_HEADS: dict[str, type[nn.Module]] = {"similarity": SimilarityHead}
# Model name -> its head and the defaults of its fields.
MODELS = {
    "deeplab_v2": dict(head="aspp_l", output_stride=8),
    "deeplab_v3": dict(head="aspp", output_stride=16),
    "deeplab_v3plus": dict(head="decoder", output_stride=16),
    "deeplab_v3_pac": dict(head="pac", output_stride=16),
    # RelationNet (models/resnet38.py, relation.py, similarity.py): ResNet-38 + DCN in B6/B7 + relation module
    "relationnet": dict(head="relation", backbone="resnet38", output_stride=8, deformable=True),
    # The guidance paper (models/guidance.py): DeepLab-LargeFOV on VGG-16 at OS8, and with the classification
    # branch; ResNet-101 at OS16 with the same two 1024-filter convs (its Fig. 2 framework) and the branch.
    "deeplab_largefov": dict(head="largefov", backbone="vgg16", output_stride=8),
    "deeplab_largefov_guidance": dict(head="largefov", backbone="vgg16", output_stride=8, class_branch=True),
    "deeplab_guidance": dict(head="largefov", backbone="resnet", output_stride=16, class_branch=True),
}
# Fields the builder itself reads (not passed to a constructor); `pretrained` is read by train.py;
# `class_branch` True adds models.guidance.ClassificationBranch (its fields class_* then become valid).
BUILDER_FIELDS = ("backbone", "aux_heads", "pretrained", "class_branch")
# Fields a backbone does not take although its class declares them (Xception keeps its own BN epsilon), or
# accepts unused (VGG-16 has no batch norm, so the model-wide BN settings do nothing there).
WITHHELD = {"resnet": ("num_classes",), "xception": ("num_classes", "bn_epsilon", "stem"),
            "vgg16": ("num_classes", "stem", "bn_mode", "bn_momentum", "bn_epsilon", "bn_group_size"),
            "resnet38": ("num_classes", "stem")}


class SegmentationModel(nn.Module):
    """backbone(images) -> features dict; head(features) -> "logits"; each aux head adds its named outputs.

    images [B,H,W,3] -> {"logits": [B,h,w,num_classes] float32, ...}. With a `class_branch` (the guidance
    paper's Eq. 3) also "class_logits" [B,num_classes], broadcast-added to the head's scores at the head's
    resolution (before any upsampling), so "logits" = s_l + s_g.
    """
    backbone: nn.Module
    head: nn.Module
    aux_heads: tuple[nn.Module, ...] = ()
    class_branch: nn.Module | None = None
    # A parameter-free layer (outputs, images) -> outputs applied last, e.g. crf.CRFLayer (config.model.crf_layer).
    refiner: object = None

    @property
    def dtype(self):
        """The compute dtype (the head's; every component gets the same)."""
        return self.head.dtype

    def setup(self):
        nn.share_scope(self, self.head)  # the head's submodules sit at the top level (aspp, classifier, ...)

    def __call__(self, images, train: bool = False) -> dict:
        features = self.backbone(images, train)
        logits = self.head(features, train)
        if isinstance(logits, tuple):  # (logits, features the head shares with the aux heads)
            logits, shared = logits
            features = {**features, **shared}
        outputs = {"logits": logits.astype(jnp.float32)}
        if self.class_branch is not None:
            class_logits = self.class_branch(features, train)
            outputs = {"logits": outputs["logits"] + class_logits[:, None, None, :], "class_logits": class_logits}
        for aux in self.aux_heads:
            extra = aux(features, train)
            clash = sorted(set(extra) & set(outputs))
            if clash:
                raise ValueError(f"aux_heads: outputs {clash} are produced twice")
            outputs.update(extra)
        return outputs if self.refiner is None else self.refiner(outputs, images)


def constructor_fields(cls: type[nn.Module]) -> tuple[str, ...]:
    """The constructor attributes of a flax module class (without flax's own `parent` and `name`)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name"))


def _split_names(value) -> list[str]:
    return [name.strip() for name in str(value or "").split("+") if name.strip()]


def build_model(name: str, **fields) -> SegmentationModel:
    """The model `name` of MODELS with `fields` (num_classes, backbone, depth, ...) routed to its components;
    ValueError names an unknown model, backbone, head or a field no component takes."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are {sorted(MODELS)}")
    spec = dict(MODELS[name])
    head_cls = HEADS[spec.pop("head")]
    fields = {**spec, **fields}
    backbone = fields.get("backbone") or "resnet"
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: unknown {backbone!r}; valid backbones are {list(BACKBONES)}")
    if backbone in ("xception", "vgg16", "resnet38") and fields.get("stem", "standard") != "standard":
        raise ValueError(f"stem: {fields['stem']!r} is a ResNet stem; backbone={backbone!r} has its own stem, "
                         "leave stem at 'standard'")
    if fields.get("depth") is None:
        fields["depth"] = DEFAULT_DEPTHS[backbone]
    remat = fields.pop("remat", "none")
    check_remat(remat)
    if "remat" in constructor_fields(BACKBONES[backbone]):
        fields["remat"] = remat
    elif remat != "none":
        takers = [name for name, cls in BACKBONES.items() if "remat" in constructor_fields(cls)]
        raise ValueError(f"remat: backbone {backbone!r} has no rematerialised blocks, so only 'none' is valid "
                         f"(the backbones that take it: {takers})")
    aux_names = _split_names(fields.get("aux_heads"))
    unknown_aux = [a for a in aux_names if a not in AUX_HEADS]
    if unknown_aux:
        raise ValueError(f"aux_heads: unknown {unknown_aux}; valid auxiliary heads are {sorted(AUX_HEADS)}")
    backbone_cls = BACKBONES[backbone]
    branch = [(ClassificationBranch, ())] if fields.get("class_branch") else []
    components = [(backbone_cls, WITHHELD[backbone]), (head_cls, ()), *branch,
                  *((AUX_HEADS[a], ()) for a in aux_names)]
    taken = set(BUILDER_FIELDS).union(WITHHELD[backbone], *(constructor_fields(cls) for cls, _ in components))
    unknown = sorted(set(fields) - taken)
    if unknown:
        raise ValueError(f"model {name!r}: unknown argument(s) {unknown}; valid arguments are {sorted(taken)}")
    built = [cls(**{k: v for k, v in fields.items() if k in constructor_fields(cls) and k not in withheld})
             for cls, withheld in components]
    class_branch = built.pop(2) if branch else None
    return SegmentationModel(built[0], built[1], tuple(built[2:]), class_branch=class_branch)


def build_segmentation_model(config: ml_collections.ConfigDict, num_classes: int) -> SegmentationModel:
    """The model of config.model (every field but `name`, `pretrained` and `crf_layer` routed to a component;
    `crf_layer` True puts crf.CRFLayer with config.eval.crf's settings on the logits);
    config.mixed_precision switches the compute dtype to bfloat16 (parameters stay float32). A bad field is a
    one-line ConfigError "config.model: ..."."""
    fields = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "pretrained", "crf_layer")}
    if config.mixed_precision:
        fields["dtype"] = jnp.bfloat16
    try:
        model = build_model(config.model.name, num_classes=num_classes, **fields)
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None
    if config.model.get("crf_layer"):  # the guidance CRF on the logits, in training and inference (crf.py)
        model = model.clone(refiner=crf.CRFLayer(**crf.options_from_config(config.eval.crf, config.data)))
    return model


def check_config(config: ml_collections.ConfigDict) -> dict:
    """config.model (stages.check_config) -> the model's abstract outputs {name: ShapeDtypeStruct} on a 1x33x33
    input: a one-line ConfigError "config.model..." when the model does not build or trace, its BN groups do not
    divide the (micro-)batch, or `pretrained` is not a weights file."""
    model = build_segmentation_model(config, config.dataset.num_classes)
    group = config.model.get("bn_group_size") or 0
    micro_batch = config.data.batch_size // max(int(config.train.grad_accum_steps), 1)
    if group < 0 or (group and micro_batch % group):
        raise ConfigError(f"config.model.bn_group_size: {group} must be >= 0 and divide the (micro-)batch of "
                          f"{micro_batch} images")
    key = jax.random.PRNGKey(0)
    try:
        outputs = jax.eval_shape(functools.partial(model.init_with_output, train=False),
                                 {"params": key, "dropout": key}, jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))[0]
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None
    pretrained = config.model.get("pretrained")
    if pretrained and not (os.path.isfile(os.path.expanduser(pretrained))
                           and pretrained.endswith((".safetensors", ".npz"))):
        raise ConfigError(f"config.model.pretrained: {pretrained} is not a .safetensors or .npz file (expected "
                          f"a state dict of the {config.model.get('backbone', 'resnet')} backbone)")
    return outputs
