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
join "logits" in the model's output dict (loss terms read them by name, objective.py).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from semeda_jax.models.deeplab import ASPPHead, ASPPLHead, DecoderHead
from semeda_jax.models.pac import PACHead
from semeda_jax.models.resnet import ResNet
from semeda_jax.models.xception import Xception
from semeda_jax.validation import ConfigError

BACKBONES = {"resnet": ResNet, "xception": Xception}
DEFAULT_DEPTHS = {"resnet": 101, "xception": 71}
HEADS = {"aspp_l": ASPPLHead, "aspp": ASPPHead, "decoder": DecoderHead, "pac": PACHead}
AUX_HEADS: dict[str, type[nn.Module]] = {}  # name -> flax class; a paper's extra outputs register here
# Model name -> its head and the defaults of its fields.
MODELS = {
    "deeplab_v2": dict(head="aspp_l", output_stride=8),
    "deeplab_v3": dict(head="aspp", output_stride=16),
    "deeplab_v3plus": dict(head="decoder", output_stride=16),
    "deeplab_v3_pac": dict(head="pac", output_stride=16),
}
# Fields the builder itself reads (not passed to a constructor); `pretrained` is read by train.py.
BUILDER_FIELDS = ("backbone", "aux_heads", "pretrained")
# Fields a backbone does not take although its class declares them (Xception keeps its own BN epsilon).
WITHHELD = {"resnet": ("num_classes",), "xception": ("num_classes", "bn_epsilon", "stem")}


class SegmentationModel(nn.Module):
    """backbone(images) -> features dict; head(features) -> "logits"; each aux head adds its named outputs.

    images [B,H,W,3] -> {"logits": [B,h,w,num_classes] float32, ...}.
    """
    backbone: nn.Module
    head: nn.Module
    aux_heads: tuple[nn.Module, ...] = ()

    @property
    def dtype(self):
        """The compute dtype (the head's; every component gets the same)."""
        return self.head.dtype

    def setup(self):
        nn.share_scope(self, self.head)  # the head's submodules sit at the top level (aspp, classifier, ...)

    def __call__(self, images, train: bool = False) -> dict:
        features = self.backbone(images, train)
        outputs = {"logits": self.head(features, train).astype(jnp.float32)}
        for aux in self.aux_heads:
            extra = aux(features, train)
            clash = sorted(set(extra) & set(outputs))
            if clash:
                raise ValueError(f"aux_heads: outputs {clash} are produced twice")
            outputs.update(extra)
        return outputs


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
    if backbone == "xception" and fields.get("stem", "standard") != "standard":
        raise ValueError(f"stem: {fields['stem']!r} is a ResNet stem; backbone='xception' has its own stem, "
                         "leave stem at 'standard'")
    if fields.get("depth") is None:
        fields["depth"] = DEFAULT_DEPTHS[backbone]
    aux_names = _split_names(fields.get("aux_heads"))
    unknown_aux = [a for a in aux_names if a not in AUX_HEADS]
    if unknown_aux:
        raise ValueError(f"aux_heads: unknown {unknown_aux}; valid auxiliary heads are {sorted(AUX_HEADS)}")
    backbone_cls = BACKBONES[backbone]
    components = [(backbone_cls, WITHHELD[backbone]), (head_cls, ()),
                  *((AUX_HEADS[a], ()) for a in aux_names)]
    taken = set(BUILDER_FIELDS).union(WITHHELD[backbone], *(constructor_fields(cls) for cls, _ in components))
    unknown = sorted(set(fields) - taken)
    if unknown:
        raise ValueError(f"model {name!r}: unknown argument(s) {unknown}; valid arguments are {sorted(taken)}")
    built = [cls(**{k: v for k, v in fields.items() if k in constructor_fields(cls) and k not in withheld})
             for cls, withheld in components]
    return SegmentationModel(built[0], built[1], tuple(built[2:]))


def build_segmentation_model(config: ml_collections.ConfigDict, num_classes: int) -> SegmentationModel:
    """The model of config.model (every field but `name` and `pretrained` routed to a component);
    config.mixed_precision switches the compute dtype to bfloat16 (parameters stay float32). A bad field is a
    one-line ConfigError "config.model: ..."."""
    fields = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "pretrained")}
    if config.mixed_precision:
        fields["dtype"] = jnp.bfloat16
    try:
        return build_model(config.model.name, num_classes=num_classes, **fields)
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None
