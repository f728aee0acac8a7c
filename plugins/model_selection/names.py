"""Display names and architecture families for JumpStart and timm model ids.

`display_name` shortens a JumpStart id as the seed notebook does (drops `tensorflow-ic-`,
a leading `imagenet-` and a trailing `-classification-N`), so the seed table's names come
back: `tensorflow-ic-imagenet-mobilenet-v1-075-160-classification-4` -> `mobilenet-v1-075-160`.

`model_family` names the architecture a plot colours by ("MobileNet v2", "EfficientNet-V2",
"BiT", "Swin", ...). It is parsed from the id alone, so a report can derive it for rows that
lack a `family` field. Unknown timm architectures fall back to their leading name stem
(e.g. "dla"), and "other" is returned only when nothing can be parsed at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import re

OTHER = "other"
# Prefixes the seed notebook drops from JumpStart ids for display.
DISPLAY_PREFIXES = ("tensorflow-ic-", "pytorch-ic-", "imagenet-")
CLASSIFICATION_SUFFIX = re.compile(r"-classification-\d+$")
# Prefixes that say nothing about the architecture (JumpStart framework/task, TF Hub collection,
# timm's test models, TF-ported and legacy weights).
FAMILY_PREFIXES = ("tensorflow-ic-", "pytorch-ic-", "imagenet-", "tf2-preview-", "test-", "tf-", "legacy-")

# Ordered: the first pattern that matches the normalised name (lower case, "_" -> "-",
# architecture prefixes and a timm ".tag" removed) gives the family.
FAMILY_RULES: tuple[tuple[str, str], ...] = (
    (r"^bit-|^resnetv2-.*-bit$|^resnetv2-.*x\d+-bit", "BiT"),
    (r"^inception-?resnet", "Inception-ResNet"),
    (r"^inception-?next", "InceptionNeXt"),
    (r"^inception", "Inception"),
    (r"^(gc-)?efficientnet-?v2", "EfficientNet-V2"),
    (r"^efficientnet-?lite", "EfficientNet-Lite"),
    (r"^efficientnet", "EfficientNet"),
    (r"^efficientformer", "EfficientFormer"),
    (r"^efficientvit", "EfficientViT"),
    (r"^efficientvim", "EfficientViM"),
    (r"^mobilenet-?edgetpu", "MobileNet EdgeTPU"),
    (r"^mobilenet-?v?(\d)(?!\d)", r"MobileNet v\1"),
    (r"^mobilevit", "MobileViT"),
    (r"^mobileone", "MobileOne"),
    (r"^swin-?v2", "Swin V2"),
    (r"^swin", "Swin"),
    (r"^pnasnet", "PNASNet"),
    (r"^nasnet", "NASNet"),
    (r"^(se)?mnasnet", "MnasNet"),
    (r"^spnasnet", "Single-Path NAS"),
    (r"^cait", "CaiT"),
    (r"^deit", "DeiT"),
    (r"^vitamin", "ViTamin"),
    (r"^tiny-vit", "TinyViT"),
    (r"^mvit-?v2", "MViT v2"),
    (r"^nextvit", "Next-ViT"),
    (r"^(vit\d*|flexivit|naflexvit|samvit)(-|$)|^[a-z]+\d*-vit-", "ViT"),
    (r"^convnext-?v2", "ConvNeXt V2"),
    (r"^convnext", "ConvNeXt"),
    (r"^haloregnet", "HaloNet"),
    (r"^regnet", "RegNet"),
    (r"^lcnet", "LCNet"),
    (r"^res2net|^res2next", "Res2Net"),
    (r"^resmlp", "ResMLP"),
    (r"^resnest", "ResNeSt"),
    (r"^resnet-?rs", "ResNet-RS"),
    (r"^(se|eca-?|gc|sk|csp|bat-)?resnext", "ResNeXt"),
    (r"^resnet-?v2|^resnetv2", "ResNet v2"),
    (r"^wide-?resnet", "Wide ResNet"),
    (r"^tresnet", "TResNet"),
    (r"^(se|eca|gc|sk|csp)?resnet", "ResNet"),
    (r"^repvgg", "RepVGG"),
    (r"^vgg", "VGG"),
    (r"^densenet", "DenseNet"),
    (r"^xception", "Xception"),
    (r"^dpn", "DPN"),
    (r"^dla", "DLA"),
    (r"^hrnet", "HRNet"),
    (r"^(rep)?ghostnet", "GhostNet"),
    (r"^rexnet", "ReXNet"),
    (r"^levit", "LeViT"),
    (r"^beit", "BEiT"),
    (r"^eva", "EVA"),
    (r"^maxx?vit", "MaxViT"),
    (r"^coatnext|^coatnet", "CoAtNet"),
    (r"^coat", "CoaT"),
    (r"^davit", "DaViT"),
    (r"^fastvit", "FastViT"),
    (r"^focalnet", "FocalNet"),
    (r"^gcvit", "GC ViT"),
    (r"^hiera", "Hiera"),
    (r"^(gmixer|mixer)", "MLP-Mixer"),
    (r"^gmlp", "gMLP"),
    (r"^poolformer", "PoolFormer"),
    (r"^caformer|^convformer", "MetaFormer"),
    (r"^pvt", "PVT"),
    (r"^twins", "Twins"),
    (r"^volo", "VOLO"),
    (r"^xcit", "XCiT"),
    (r"^nf|^dm-nfnet|^eca-nfnet", "NFNet"),
    (r"^(cs|se|cs3|cs3se)?darknet|^cspdarknet", "DarkNet"),
    (r"^cs3(se-)?edgenet", "EdgeNet"),
    (r"^cspnext", "CSPNeXt"),
    (r"^tinynet", "TinyNet"),
    (r"^mixnet", "MixNet"),
    (r"^fbnet", "FBNet"),
    (r"^hardcorenas", "HardCoRe-NAS"),
    (r"^senet|^legacy-senet", "SENet"),
    (r"^byobnet", "BYOBNet"),
    (r"^crossvit", "CrossViT"),
    (r"^convit", "ConViT"),
    (r"^convmixer", "ConvMixer"),
    (r"^edgenext", "EdgeNeXt"),
    (r"^mambaout", "MambaOut"),
    (r"^(se|lamhalo|halo\d?|eca-)?botne(t|xt)", "BoTNet"),
    (r"^(se|eca-)?halone(t|xt)", "HaloNet"),
    (r"^(ese-|eca-)?vovnet", "VoVNet"),
    (r"^lambda-resnet", "LambdaNet"),
    (r"^eca-resnet", "ResNet"),
    (r"^aimv2", "AIMv2"),
    (r"^iformer", "iFormer"),
    (r"^lowformer", "LowFormer"),
    (r"^rdnet", "RDNet"),
    (r"^sam2-hiera", "Hiera"),
    (r"^shvit", "SHViT"),
    (r"^swiftformer", "SwiftFormer"),
    (r"^cpubone", "CPUBone"),
    (r"^csatv2", "CSATv2"),
    (r"^selecsls", "SelecSLS"),
    (r"^tnt", "TNT"),
    (r"^pit", "PiT"),
    (r"^nest", "NesT"),
    (r"^sequencer", "Sequencer"),
    (r"^visformer", "Visformer"),
    (r"^gernet", "GENet"),
    (r"^hgnet", "HGNet"),
    (r"^repvit", "RepViT"),
    (r"^starnet", "StarNet"),
    (r"^fasternet", "FasterNet"),
)
_COMPILED = tuple((re.compile(pattern), family) for pattern, family in FAMILY_RULES)


def display_name(model_id: str | None) -> str:
    """The id without `tensorflow-ic-`, a leading `imagenet-` and `-classification-N`, as the seed's table names it."""
    if model_id is None:
        return ""
    name = str(model_id).strip()
    for prefix in DISPLAY_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return CLASSIFICATION_SUFFIX.sub("", name) or str(model_id)


def _normalised(model_id: str) -> str:
    name = str(model_id).strip().lower().split(".")[0].replace("_", "-")
    stripped = True
    while stripped:
        stripped = False
        for prefix in FAMILY_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return CLASSIFICATION_SUFFIX.sub("", name)


def model_family(model_id: str) -> str:
    """The readable architecture family of a JumpStart or timm id; a bare name stem if unmapped, "other" if none."""
    name = _normalised(model_id)
    for pattern, family in _COMPILED:
        match = pattern.search(name)
        if match:
            return match.expand(family)
    stem = re.match(r"[a-z]+", name)
    return stem.group(0) if stem else OTHER


def row_family(row: Mapping[str, Any]) -> str:
    """A result row's family: its own, else the one its model id implies."""
    return str(row.get("family") or model_family(str(row.get("model_id") or "")))
