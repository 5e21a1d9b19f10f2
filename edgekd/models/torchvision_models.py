"""``torchvision:<name>``: any torchvision.models classifier, randomly initialized (never downloads weights).

The torchvision network becomes ``model.body`` with its final nn.Linear replaced by nn.Identity, and that
Linear becomes ``model.classifier``, so the zoo convention holds: ``classifier(body(x))`` is the network's
forward. ``body(x)`` is the classifier's input, which comes *after* the dropout many torchvision heads apply
(MobileNet, EfficientNet, MnasNet, GoogLeNet, Inception, VGG). The embedding that distillation reads must not
be: ``model.embedding_path`` names the first of the dropout modules just before the head (its input is the
penultimate features, deterministic in train mode), or ``classifier`` where no dropout precedes the head.

Taps (paths start with ``body.``):

* ResNet, ResNeXt, Wide ResNet: ``layer1`` .. ``layer4``.
* Others: the children of the feature trunk (``features``, ``trunk_output`` for RegNet, ``layers`` for
  MnasNet, else the network's own top-level children), keeping the last child at each spatial size, found by
  running the network once on a 128x128 image on the meta device (free). Children from the global pooling
  on are the head and never taps. A new stage starts where the map shrinks to 3/4 or less.
* No taps where that probe fails or the trunk is not channels-first: ViT, MaxViT, Swin.

torchvision has no module whose input is a stage's pre-activation, so ``preact_taps``/``preact_bn`` are None.
A state_dict saved from the plain torchvision network (keys like ``fc.weight``) loads as well, and so does one
of a network adapted by hand the usual way: images of other than 3 channels get a first convolution of the
same shape taking them, and ``model_args: {stem: small}`` a 3x3 stride-1 first convolution and no stem
max-pool (see _adapt_stem).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models._common import accept_bare_network_keys, evaluating
from edgekd.models.registry import register_model
from edgekd.schema_base import shown_value

_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_TRUNK_NAMES = ("features", "trunk_output", "layers")
_CHANNELS_LAST_TRUNKS = (torchvision.models.SwinTransformer,)
_PROBE_SIZE = (
    128  # large enough for every torchvision trunk (Inception v3 needs 75), small enough to be quick
)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_RESHAPES = (nn.Identity, nn.Flatten)  # change no value: the walk to the embedding passes over them


class TorchvisionClassifier(nn.Module):
    def __init__(
        self,
        arch: str,
        body: nn.Module,
        head_path: str,
        classifier: nn.Linear,
        taps: list[str],
        embedding_path: str = "classifier",
        stem: str = "imagenet",
    ):
        super().__init__()
        self.arch = arch
        self.stem = stem
        self.head_path = head_path
        self.embedding_path = embedding_path
        self.body = body
        self.classifier = classifier
        self.taps = taps
        self.preact_taps: list[str | None] = [None] * len(taps)
        self.preact_bn: list[str | None] = [None] * len(taps)
        self.register_load_state_dict_pre_hook(accept_bare_network_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def _final_linear(arch: str, body: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """The last nn.Linear registered in the network, which is its classification head in torchvision."""
    linears = [(path, module) for path, module in body.named_modules() if isinstance(module, nn.Linear)]
    if not linears or linears[-1][1].out_features != num_classes:
        raise EdgekdError(
            f"model 'torchvision:{arch}' has no final nn.Linear classifier, which edgekd needs; "
            "choose another model"
        )
    return linears[-1]


def _embedding_path(body: nn.Module, head_path: str) -> str:
    """The module whose input is the network's embedding: the first of the dropout modules registered
    right before the head (reshapes passed over), as ``body.<path>``; ``classifier`` when none is.

    Registration order stands for run order here: every torchvision classifier registers its head modules
    in the order its forward calls them (a Sequential head, or GoogLeNet's and Inception's avgpool, dropout,
    fc). A dropout further up (in ViT's encoder, VGG's first) is not right before the head: a module that
    changes values (LayerNorm, ReLU, Linear) ends the walk. With an MLP head (MobileNetV3, VGG) the
    embedding is the hidden layer's activation, the features the classifier itself reads.
    """
    leaves = [(path, module) for path, module in body.named_modules() if not any(module.children())]
    head = next(index for index, (path, _) in enumerate(leaves) if path == head_path)
    first_dropout = None
    for path, module in reversed(leaves[:head]):
        if isinstance(module, _DROPOUTS):
            first_dropout = path
        elif not isinstance(module, _RESHAPES):
            break
    return f"body.{first_dropout}" if first_dropout else "classifier"


@dataclass(frozen=True)
class _Stem:
    """What edgekd changes in a torchvision network's input end, the way users adapt one by hand."""

    in_channels: int
    small: bool  # `stem: small`: a 3x3 stride-1 first convolution and no stem max-pool


def _build(arch: str, num_classes: int, kwargs: dict[str, Any], stem: _Stem) -> nn.Module:
    try:
        network = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise EdgekdError(f"model_args for 'torchvision:{arch}' are not accepted: {error}") from None
    if stem.in_channels != 3 or stem.small:
        _adapt_stem(arch, network, stem)
    return network


def _adapt_stem(arch: str, network: nn.Module, stem: _Stem) -> None:
    """Replace the first convolution (every torchvision classifier registers its stem's first) by one taking
    ``stem.in_channels`` channels, and with ``stem.small`` make it 3x3 stride 1 and drop the max-pool that
    follows it: what ``model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False); model.maxpool = nn.Identity()``
    does to a ResNet, so that a teacher trained so loads."""
    path, first = next(
        ((path, module) for path, module in network.named_modules() if isinstance(module, nn.Conv2d)),
        (None, None),
    )
    if first is None or first.groups != 1:
        raise EdgekdError(
            f"model 'torchvision:{arch}' has no plain first convolution edgekd can adapt; "
            "use 3-channel images (`data.channels: 3`) and stem: imagenet"
        )
    kernel, stride, padding = (3, 1, 1) if stem.small else (first.kernel_size, first.stride, first.padding)
    replacement = nn.Conv2d(
        stem.in_channels, first.out_channels, kernel, stride, padding, bias=first.bias is not None
    )
    # torchvision initializes its stem convolutions so (ResNet, MobileNet, EfficientNet): a teacher trained in
    # the run starts as torchvision's own would
    nn.init.kaiming_normal_(replacement.weight, mode="fan_out", nonlinearity="relu")
    network.set_submodule(path, replacement)
    if stem.small:
        pool = _stem_pool(network)
        if pool is None:
            raise EdgekdError(
                f"model_args.stem: 'small' is not available for 'torchvision:{arch}' (allowed for ResNet, "
                "ResNeXt, Wide ResNet, ShuffleNet, MobileNet, EfficientNet, MnasNet, RegNet: networks whose stem "
                "is one convolution, maybe with a max-pool); use stem: imagenet"
            )
        if pool:
            network.set_submodule(pool, nn.Identity())


def _stem_pool(network: nn.Module) -> str | None:
    """The path of the stem's max-pool ('' when the stem has none), None when edgekd does not know the stem."""
    if isinstance(getattr(network, "maxpool", None), nn.MaxPool2d):
        return "maxpool"  # ResNet, ResNeXt, Wide ResNet, ShuffleNet V2
    known = (
        torchvision.models.MobileNetV2,
        torchvision.models.MobileNetV3,
        torchvision.models.EfficientNet,
        torchvision.models.MNASNet,
        torchvision.models.RegNet,
    )
    return "" if isinstance(network, known) else None


def _trunk_taps(
    arch: str, body: nn.Module, num_classes: int, kwargs: dict[str, Any], stem: _Stem
) -> list[str]:
    """Probe a meta-device twin of the network (free), or the network itself where no twin can be built."""
    if isinstance(body, _CHANNELS_LAST_TRUNKS):
        return []
    try:
        with torch.device("meta"):
            twin = _build(arch, num_classes, kwargs, stem)
    except Exception:  # RegNet computes its widths with .tolist(), which meta tensors cannot do
        twin = body
    return _probe(twin, stem.in_channels)


def _probe(network: nn.Module, in_channels: int) -> list[str]:
    """Run the network once, recording each trunk child's output size up to the global pooling."""
    trunk_path = next(
        (name for name in _TRUNK_NAMES if isinstance(getattr(network, name, None), nn.Module)), ""
    )
    sizes: dict[str, tuple[int, int]] = {}

    def record(path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                sizes[path] = (output.shape[-2], output.shape[-1])

        return hook

    handles = []
    for name, child in network.get_submodule(trunk_path).named_children():
        if isinstance(child, _GLOBAL_POOLS):
            break  # what follows is the head
        handles.append(child.register_forward_hook(record(f"{trunk_path}.{name}" if trunk_path else name)))
    image = torch.zeros(1, in_channels, _PROBE_SIZE, _PROBE_SIZE, device=next(network.parameters()).device)
    try:
        with evaluating(network), torch.no_grad():
            network(image)
    except Exception:  # a network that cannot run at the probe size (ViT, MaxViT) simply gets no taps
        return []
    finally:
        for handle in handles:
            handle.remove()
    return _stage_ends(sizes)


def _stage_ends(sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Group children (in run order) into stages by output size and keep the last child of each stage.

    A child starts a new stage when its map is at most 3/4 the size of the current stage's first map, so
    unpadded convolutions that trim a pixel or two (Inception v3) do not each become a stage.
    """
    taps: list[str] = []
    stage_size = 0
    for path, (height, width) in sizes.items():
        size = max(height, width)
        if taps and size > stage_size:
            break  # never expected in a classifier; stop rather than declare growing taps
        if not taps or size <= 0.75 * stage_size:
            taps.append(path)
            stage_size = size
        else:
            taps[-1] = path
    return taps


_COMMON = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0")


def _suggest(name: str, available: list[str]) -> str:
    """The closest torchvision names, not all ~80 of them: the error stays one readable line."""
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.7)
    listed = close or [common for common in _COMMON if common in available]
    lead = "did you mean" if close else "e.g."
    return f"{lead} {', '.join(listed)} ({len(available)} classifiers: torchvision.models.list_models())"


@register_model("torchvision:<name>", hint="any torchvision.models classifier, e.g. torchvision:resnet18")
def torchvision_model(
    num_classes: int, in_channels: int, name: str, stem: str = "imagenet", **kwargs: Any
) -> TorchvisionClassifier:
    """``kwargs`` go to the torchvision builder (e.g. ``dropout``); ``weights`` is always None.

    ``in_channels`` other than 3 replaces the first convolution by one of the same shape taking that many
    channels; ``stem: small`` makes it 3x3 stride 1 and removes the stem's max-pool (see _adapt_stem).
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise EdgekdError(f"model 'torchvision:{name}' is unknown; {_suggest(name, available)}")
    if stem not in ("imagenet", "small"):
        raise EdgekdError(
            f"model_args.stem: {shown_value(stem)} is not allowed; give imagenet (torchvision's own stem) or "
            "small (a 3x3 stride-1 first convolution, no max-pool: the usual adaptation for small images)"
        )
    if "weights" in kwargs:
        raise EdgekdError(
            "model_args.weights: not allowed; edgekd never downloads weights (give a checkpoint instead)"
        )
    if name in ("googlenet", "inception_v3"):
        # auxiliary heads would make the training forward return a tuple; init_weights=True silences a
        # warning about torchvision's future default
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    input_end = _Stem(in_channels=in_channels, small=stem == "small")
    body = _build(name, num_classes, kwargs, input_end)
    head_path, classifier = _final_linear(name, body, num_classes)
    embedding_path = _embedding_path(body, head_path)
    body.set_submodule(head_path, nn.Identity())
    if all(isinstance(getattr(body, stage, None), nn.Module) for stage in _RESNET_STAGES):
        taps = list(_RESNET_STAGES)
    else:
        taps = _trunk_taps(name, body, num_classes, kwargs, input_end)
    taps = [f"body.{tap}" for tap in taps]
    return TorchvisionClassifier(name, body, head_path, classifier, taps, embedding_path, stem)
