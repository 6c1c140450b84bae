"""ImageNet-pretrained backbones: torchvision/timm state dicts -> our flax `backbone` variables, by name mapping.

    variables = model.init(key, images)
    variables = load_backbone_weights(variables, "resnet101.safetensors", backbone="resnet")

Files: a flat state dict (torch names as keys, arrays in torch layout) saved as `.safetensors` (e.g. the
`model.safetensors` of the Hugging Face repos timm/resnet101.tv_in1k or timm/xception71.tf_in1k, or
`safetensors.torch.save_file(model.state_dict(), path)`) or as `.npz` (`np.savez(path, **state_dict)`).

Mapping (the parameter names of models/resnet.py and models/xception.py mirror the torch ones):
  resnet    conv1 / bn1                   -> stem_conv / stem_bn
            conv1.0, .1, .3, .4, .6 / bn1 -> stem_conv1, stem_bn1, stem_conv2, stem_bn2, stem_conv3 / stem_bn3
                                             (deep stem of timm resnet*s; needs stem="deeplab")
            layerS.i.convK / bnK          -> layerS_blocki/convK, bnK
            layerS.i.downsample.0 / .1    -> layerS_blocki/downsample_conv, downsample_bn
  xception  stem.J.conv / stem.J.bn       -> stemJ/conv, stemJ/bn
            blocks.i.stack.convK.X        -> blocki/convK/X      (X = conv_dw, bn_dw, conv_pw, bn_pw)
            blocks.i.shortcut.conv / .bn  -> blocki/shortcut/conv, shortcut/bn
  vgg16     features.0, 2, 5, ..., 28     -> conv1_1, conv1_2, conv2_1, ..., conv5_3 (torchvision vgg16)
            classifier.0 / .3 (fc6 / fc7) -> outside the backbone, where the model has a counterpart
                                             (vgg_head_weights): the LargeFOV head's fc6 / fc7 by DeepLab's
                                             decimation (fc6 [4096,512*7*7] -> every 4th filter, taps 0, 3, 6 of
                                             the 7x7 -> [3,3,512,1024]; fc7 every 4th filter and input), and the
                                             classification branch's fc6 / fc7 as they are (the 7x7x512 pool
                                             flattened in torch's channel-major order, permuted to ours)
  resnet38  conv1a, bn7                   -> conv1a, bn7 (the torch layout of the PSA / SEAM repositories'
            bB[_i].conv_branchK / bn_...  -> bB[_i]/conv_branchK, bB[_i]/bn_branchK    resnet38d.py, i.e. the
                                             MXNet ilsvrc-cls_rna-a1_cls1000_ep-0001.params after their
                                             convert_mxnet_to_torch, saved as .safetensors / .npz); the
                                             deformable offsets of B6/B7 (deformable=True) are not in such
                                             files and start at zero (the plain convolution, DCN's init)
  leaves    conv .weight [O,I,kh,kw]      -> kernel [kh,kw,I,O] (transpose (2, 3, 1, 0); depthwise [C,1,kh,kw]
                                             -> [kh,kw,1,C], flax's feature_group_count=C layout)
            conv .bias                    -> bias (VGG's convs)
            BN .weight / .bias            -> params scale / bias
            BN .running_mean / _var       -> batch_stats mean / var
Ignored (named in the log line): *.num_batches_tracked and the ImageNet classifier (fc.*, head.fc.*,
classifier.6.*; VGG's classifier.0/.3 too when the model has no fc6 / fc7 to fill: fc6/fc7 then stay random).
Everything else must match exactly: missing and unexpected names are listed, and the first shape mismatch (in
natural name order) is named with both shapes and the file. ResNet-D files (timm resnet*d: avg-pool shortcut
downsample.1/.2) have no counterpart in our ResNet and are rejected.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import flax
import jax.numpy as jnp
import numpy as np

from semeda_jax.models.builder import BACKBONES
from semeda_jax.models.vgg import VGG16_FEATURES, vgg16_conv_names

IGNORED = re.compile(r"(^|\.)num_batches_tracked$|^fc\.|^head\.fc\.|^classifier\.6\.")
VGG_CLASSIFIER = re.compile(r"^classifier\.[03]\.(weight|bias)$")  # fc6 / fc7 of torchvision's VGG
_RESNET_RULES = (
    (r"conv1", "stem_conv"),
    (r"bn1", "stem_bn"),
    (r"layer(\d)\.(\d+)\.(conv\d|bn\d)", r"layer\1_block\2/\3"),
    (r"layer(\d)\.(\d+)\.downsample\.0", r"layer\1_block\2/downsample_conv"),
    (r"layer(\d)\.(\d+)\.downsample\.1", r"layer\1_block\2/downsample_bn"),
)
_DEEP_STEM_RULES = (
    (r"conv1\.0", "stem_conv1"), (r"conv1\.1", "stem_bn1"), (r"conv1\.3", "stem_conv2"),
    (r"conv1\.4", "stem_bn2"), (r"conv1\.6", "stem_conv3"), (r"bn1", "stem_bn3"),
)
_XCEPTION_RULES = (
    (r"stem\.(\d)\.(conv|bn)", r"stem\1/\2"),
    (r"blocks\.(\d+)\.stack\.(conv\d)\.(conv_dw|bn_dw|conv_pw|bn_pw)", r"block\1/\2/\3"),
    (r"blocks\.(\d+)\.shortcut\.(conv|bn)", r"block\1/shortcut/\2"),
)
_VGG_RULES = tuple((rf"features\.{index}", name) for index, name in zip(VGG16_FEATURES, vgg16_conv_names()))
_RESNET38_RULES = (
    (r"(conv1a|bn7)", r"\1"),
    (r"(b\d(?:_\d)?)\.((?:conv|bn)_branch\w+)", r"\1/\2"),
)
_LEAVES = {  # torch leaf -> (collection, flax leaf) for conv modules and for BN modules
    "conv": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
    "bn": {"weight": ("params", "scale"), "bias": ("params", "bias"),
           "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")},
}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The arrays of a `.safetensors` or `.npz` state dict by name; ValueError for another extension."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".safetensors":
        from safetensors.numpy import load_file  # imported here: only .safetensors files need it
        return load_file(path)
    if extension == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    raise ValueError(f"{path}: unknown weight-file extension {extension!r}; valid extensions are "
                     "['.npz', '.safetensors'] (convert a torch .pth with "
                     "safetensors.torch.save_file(torch.load(path), 'weights.safetensors'))")


def detect_backbone(names) -> str | None:
    """'resnet', 'xception' or 'vgg16' by the state dict's module names, None if none of them."""
    if any(name.startswith("features.") for name in names):
        return "vgg16"
    if any(name.startswith(("conv1a.", "b2.")) for name in names):
        return "resnet38"
    if any(name.startswith(("blocks.", "stem.")) for name in names):
        return "xception"
    if any(name.startswith("layer1.") for name in names):
        return "resnet"
    return None


def flax_path(name: str, backbone: str, deep_stem: bool = False) -> tuple[str, tuple[str, ...]] | None:
    """Torch name -> (collection, path inside the backbone subtree), or None for a name with no counterpart.

    E.g. ("layer3.4.conv2.weight", "resnet") -> ("params", ("layer3_block4", "conv2", "kernel")).
    """
    module, _, leaf = name.rpartition(".")
    rules = {"xception": _XCEPTION_RULES, "vgg16": _VGG_RULES, "resnet38": _RESNET38_RULES}.get(
        backbone, (_DEEP_STEM_RULES if deep_stem else ()) + _RESNET_RULES)
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, module)
        if match:
            path = tuple(match.expand(replacement).split("/"))
            kind = "bn" if "bn" in path[-1] else "conv"
            if leaf not in _LEAVES[kind]:
                return None
            collection, flax_leaf = _LEAVES[kind][leaf]
            return collection, path + (flax_leaf,)
    return None


def _natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: layer3.4 before layer3.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _shape(shape) -> str:
    return "(" + ",".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _leaves(tree: Mapping, prefix: tuple = ()) -> dict[tuple[str, ...], object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)}: {shown}" + (", ..." if len(names) > limit else "")


def _is_offset(path: tuple[str, ...]) -> bool:
    """A deformable convolution's offset conv (models/deformable.py): in no ImageNet file, starts at zero."""
    return "offset" in path


def _check_names(path: str, names, backbone: str, targets: dict, deep_stem: bool) -> None:
    """ValueError for a wrong-backbone file, an unsupported variant, or missing / unexpected names."""
    found = detect_backbone(names)
    if found is None:
        raise ValueError(f"{path}: not a ResNet, ResNet-38, Xception or VGG state dict (first names: "
                         f"{sorted(names)[:5]})")
    if found != backbone:
        raise ValueError(f"{path}: holds {found} weights but backbone={backbone!r}; load it into a "
                         f"backbone={found!r} model")
    if backbone == "resnet" and any(".downsample.2." in name for name in names):
        raise ValueError(f"{path}: a ResNet-D state dict (avg-pool shortcut downsample.1/.2, timm resnet*d); our "
                         "ResNet has a strided 1x1 shortcut: use torchvision/timm resnet101 or timm resnet101s")
    model_deep = ("params", ("stem_conv1", "kernel")) in targets
    if backbone == "resnet" and deep_stem != model_deep:
        file_stem, want = ("deep (conv1.0/.3/.6)", "deeplab") if deep_stem else ("standard 7x7 (conv1)", "standard")
        raise ValueError(f"{path}: the file has a {file_stem} stem but the model does not; build the model "
                         f"with stem={want!r}")
    mapped = {name: flax_path(name, backbone, deep_stem) for name in names}
    unexpected = sorted((n for n, p in mapped.items() if p not in targets), key=_natural_key)
    covered = set(mapped.values())
    missing = sorted(("/".join(("backbone",) + p)
                      for c, p in targets if (c, p) not in covered and not _is_offset(p)), key=_natural_key)
    if unexpected or missing:
        parts = [f"unexpected names in the file ({_listing(unexpected)})"] if unexpected else []
        parts += [f"model parameters missing from the file ({_listing(missing)})"] if missing else []
        raise ValueError(f"{path}: does not match the {backbone} backbone: " + "; ".join(parts))


def convert_state_dict(state_dict: Mapping[str, np.ndarray], params: Mapping, batch_stats: Mapping, *,
                       backbone: str, source: str = "state dict") -> tuple[dict, dict, list[str]]:
    """Torch-layout `state_dict` -> new (params, batch_stats) backbone subtrees shaped like the given ones.

    `params` / `batch_stats` are the backbone subtrees (leaves: arrays or jax.ShapeDtypeStruct; only shape and
    dtype are read). Returns them filled (jnp arrays in the targets' dtypes) and the ignored names. `source`
    names the file in errors.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: unknown {backbone!r}; valid backbones are {list(BACKBONES)}")
    targets = {("params", p): leaf for p, leaf in _leaves(params).items()}
    targets.update({("batch_stats", p): leaf for p, leaf in _leaves(batch_stats).items()})
    ignored = sorted((n for n in state_dict if IGNORED.search(n)), key=_natural_key)
    names = [n for n in state_dict if not IGNORED.search(n) and not VGG_CLASSIFIER.match(n)]
    deep_stem = "conv1.0.weight" in state_dict
    _check_names(source, names, backbone, targets, deep_stem)

    filled = {}
    for name in sorted(names, key=_natural_key):
        collection, path = flax_path(name, backbone, deep_stem)
        value = np.asarray(state_dict[name])
        converted = value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value
        target = targets[collection, path]
        if converted.shape != tuple(target.shape):
            arrow = f" -> {_shape(converted.shape)}" if converted.ndim == 4 else ""
            raise ValueError(f"{source}: {name} has shape {_shape(value.shape)}{arrow} but "
                             f"{'/'.join(('backbone',) + path)} expects {_shape(target.shape)}")
        filled[collection, path] = jnp.asarray(converted, dtype=target.dtype)

    def rebuild(tree: Mapping, collection: str, prefix: tuple = ()) -> dict:
        return {key: rebuild(value, collection, prefix + (key,)) if isinstance(value, Mapping)
                else jnp.zeros(value.shape, value.dtype) if _is_offset(prefix + (key,))
                else filled[collection, prefix + (key,)] for key, value in tree.items()}

    return rebuild(params, "params"), rebuild(batch_stats, "batch_stats"), ignored


def _fc_layers(state_dict: Mapping[str, np.ndarray], source: str) -> tuple[np.ndarray, ...] | None:
    """(fc6 weight [F,C*49], fc6 bias [F], fc7 weight [F,F], fc7 bias [F]) of a torchvision VGG state dict,
    None when it holds none of them; ValueError when only some are there."""
    names = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias")
    present = [name for name in names if name in state_dict]
    if not present:
        return None
    if len(present) < len(names):
        raise ValueError(f"{source}: has {present} but not all of {list(names)} (VGG's fc6 and fc7)")
    return tuple(np.asarray(state_dict[name]) for name in names)


def _filled(target: Mapping, source: str, where: str, **leaves: np.ndarray) -> dict:
    """{leaf: jnp array in the target's dtype} after checking every shape against `target` (a params subtree)."""
    for leaf, value in leaves.items():
        if value.shape != tuple(target[leaf].shape):
            raise ValueError(f"{source}: VGG's fc6/fc7 give {where}/{leaf} the shape {_shape(value.shape)} but "
                             f"the model has {_shape(target[leaf].shape)}")
    return {leaf: jnp.asarray(value, dtype=target[leaf].dtype) for leaf, value in leaves.items()}


def vgg_head_weights(state_dict: Mapping[str, np.ndarray], params: Mapping, *,
                     source: str = "state dict") -> tuple[dict, list[str]]:
    """torchvision VGG's fc6 / fc7 (classifier.0 / .3) -> {top-level params key: filled subtree} for the parts
    of the model's `params` that take them, and the names of the classifier tensors nothing took.

    LargeFOV head (params "fc6" kernel [3,3,C,F'], "fc7" [1,1,F',F']): DeepLab's decimation, filters and fc7
    inputs every (F / F')-th (4096 -> 1024), fc6 taps 0, 3, 6 of the 7x7 in both directions.
    Classification branch (params "class_branch" fc6 kernel [7*7*C,F], fc7 [F,F]): the weights as they are;
    torch flattens the pooled [C,7,7] channel-major, our dense layer reads the NHWC [7,7,C] pool row-major.
    ValueError (naming `source`) for a shape neither reading gives.
    """
    layers = _fc_layers(state_dict, source)
    if layers is None:
        return {}, []
    w6, b6, w7, b7 = layers
    width, flat = w6.shape
    channels = flat // 49
    filled = {}
    if "fc6" in params and np.ndim(params["fc6"]["kernel"]) == 4:  # the LargeFOV head
        step = max(1, width // params["fc6"]["kernel"].shape[-1])
        kernel6 = w6.reshape(width, channels, 7, 7)[::step, :, ::3, ::3].transpose(2, 3, 1, 0)
        filled["fc6"] = _filled(params["fc6"], source, "fc6", kernel=kernel6, bias=b6[::step])
        filled["fc7"] = _filled(params["fc7"], source, "fc7", kernel=w7[::step, ::step].T[None, None],
                                bias=b7[::step])
    if "class_branch" in params:
        branch = params["class_branch"]
        kernel6 = w6.reshape(width, channels, 7, 7).transpose(2, 3, 1, 0).reshape(flat, width)
        filled["class_branch"] = {
            **branch,
            "fc6": _filled(branch["fc6"], source, "class_branch/fc6", kernel=kernel6, bias=b6),
            "fc7": _filled(branch["fc7"], source, "class_branch/fc7", kernel=w7.T, bias=b7)}
    unused = [] if filled else sorted((n for n in state_dict if VGG_CLASSIFIER.match(n)), key=_natural_key)
    return filled, unused


def _summarise_ignored(ignored: list[str]) -> str:
    counters = [n for n in ignored if n.endswith("num_batches_tracked")]
    others = [n for n in ignored if not n.endswith("num_batches_tracked")]
    parts = others + ([f"{len(counters)} x *.num_batches_tracked"] if counters else [])
    return ", ".join(parts) if parts else "nothing"


def load_backbone_weights(variables: Mapping, path: str, *, backbone: str,
                          log: Callable[[str], None] = print) -> Mapping:
    """A copy of `variables` ({"params", "batch_stats"} of a DeepLab) with the backbone read from `path` (for
    vgg16 also the head's / classification branch's fc6 and fc7, vgg_head_weights).

    Pure: `variables` is not modified; every other subtree (heads, ...) is passed through unchanged (the same
    objects, so a caller can tell which subtrees were loaded). FrozenDict
    in, FrozenDict out. Raises ValueError (naming `path`) for an unknown extension, a file of the other backbone,
    missing or unexpected names, or the first shape mismatch; logs one line with what was loaded and ignored.
    """
    frozen = isinstance(variables, flax.core.FrozenDict)
    variables = flax.core.unfreeze(variables) if frozen else dict(variables)
    if "backbone" not in variables.get("params", {}):
        raise ValueError(f"variables have no params['backbone'] (params keys: {sorted(variables.get('params', {}))})")
    state_dict = read_state_dict(path)
    params, batch_stats, ignored = convert_state_dict(
        state_dict, variables["params"]["backbone"], variables.get("batch_stats", {}).get("backbone", {}),
        backbone=backbone, source=path)
    heads, unused = {}, []
    if backbone == "vgg16":
        heads, unused = vgg_head_weights(state_dict, variables["params"], source=path)
    variables["params"] = {**variables["params"], "backbone": params, **heads}
    if batch_stats:
        variables["batch_stats"] = {**variables["batch_stats"], "backbone": batch_stats}
    into = ", ".join(["the backbone", *heads])
    log(f"[pretrained] {path}: loaded {len(state_dict) - len(ignored) - len(unused)} {backbone} tensors into "
        f"{into}; ignored {_summarise_ignored(sorted(ignored + unused, key=_natural_key))}")
    return flax.core.freeze(variables) if frozen else variables
