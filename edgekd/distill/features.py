"""What every feature-distillation method shares: taps, hooks, a dry pass, tap pairing and connectors.

A *tap* is a place in a network whose feature map a method reads: a zoo model declares its stage outputs in
``model.taps`` (shallow to deep) and, for pre-activation features, an ``nn.ReLU`` whose input is the
pre-activation (``model.preact_taps``) and the BatchNorm feeding it (``model.preact_bn``). Any other model is
tapped by module path. A recipe names taps by index into the declared list (``1``, ``-1``), by declared name
(``layer2``) or by module path (``body.layer3.1.bn2``: the output of that module).

Connectors (the trainable maps from student to teacher channels) are sized by a dry forward pass at
construction, so the optimizer, which is built from ``distiller.parameters()`` before the first batch, sees
them. They live in the Distiller, never in the student: the exported student carries none of them, and no
hook stays on either network between forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.base import DistillContext, Distiller, restrict_to_student_classes
from edgekd.distill.options import TapOptions, TapRef
from edgekd.errors import EdgekdError
from edgekd.models._common import evaluating
from edgekd.schema_base import Section


# ------------------------------------------------------------------------------------------------ taps
@dataclass(frozen=True)
class Tap:
    """Where to read a feature map: the ``read`` side (output, or input[0]) of the module at ``path``."""

    name: str  # as the user sees it: the declared tap name, or the module path
    path: str
    read: Literal["output", "input"]
    bn_path: str | None = None  # BatchNorm whose output is this pre-activation, when known


@dataclass(frozen=True)
class FeatureShape:
    channels: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"


def declared_taps(model: nn.Module) -> list[str]:
    return list(getattr(model, "taps", None) or [])


def describe_taps(model: nn.Module, role: str) -> str:
    names = declared_taps(model)
    if names:
        listed = ", ".join(f"{index}={name}" for index, name in enumerate(names))
        return f"available: {listed}, or a module path of the {role}"
    children = [name for name, _ in model.named_children()][:8]
    return f"the {role} declares no taps; give module paths, e.g. {', '.join(children) or '(none)'}"


def resolve_tap(model: nn.Module, ref: TapRef, *, preact: bool, role: str, where: str) -> Tap:
    """The tap ``ref`` of ``model``: pre-activation when ``preact`` and the model declares one.

    A model without a pre-activation point for a tap (MobileNetV2's linear bottlenecks already are
    pre-activation; torchvision declares none) gives the tap's output instead.
    """
    names = declared_taps(model)
    if isinstance(ref, int) and not isinstance(ref, bool) and -len(names) <= ref < len(names):
        index = ref % len(names)
    elif isinstance(ref, str) and ref in names:
        index = names.index(ref)
    elif isinstance(ref, str) and ref and _has_module(model, ref):
        module = model.get_submodule(ref)
        # a BatchNorm's output is a pre-activation whose statistics it knows (the OFD margin uses them)
        bn_path = ref if isinstance(module, nn.BatchNorm2d) else None
        return Tap(ref, ref, "output", bn_path)
    else:
        raise EdgekdError(f"{where}: the {role} has no tap {ref!r} ({describe_taps(model, role)})")
    if preact:
        preact_path = (getattr(model, "preact_taps", None) or [None] * len(names))[index]
        if preact_path is not None:
            bn_path = (getattr(model, "preact_bn", None) or [None] * len(names))[index]
            return Tap(names[index], preact_path, "input", bn_path)
    return Tap(names[index], names[index], "output")


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def resolve_taps(
    model: nn.Module, refs: Sequence[TapRef] | None, *, preact: bool, role: str, where: str
) -> list[Tap]:
    """``refs`` resolved; None means every declared tap (an error for a model that declares none)."""
    if refs is None:
        if not declared_taps(model):
            raise EdgekdError(f"{where}: {describe_taps(model, role)}")
        refs = list(range(len(declared_taps(model))))
    return [resolve_tap(model, ref, preact=preact, role=role, where=where) for ref in refs]


# ------------------------------------------------------------------------------------------------ hooks
class FeatureCapture:
    """Records the feature maps at ``taps`` while ``model`` runs.

    ``run(x)`` attaches the hooks, runs the model, removes them and returns ``(output, features)``, so no
    hook outlives the call (the student is later exported and evaluated untouched). ``attach()``/``remove()``
    (or ``with capture:``) keep them for several forwards; each forward overwrites the last one's features.
    When a module runs twice in one forward, its last call wins.
    """

    def __init__(self, model: nn.Module, taps: Sequence[Tap]):
        self.model = model
        self.taps = tuple(taps)
        self._handles: list[Any] = []
        self._features: dict[int, torch.Tensor] = {}

    def attach(self) -> FeatureCapture:
        if self._handles:
            return self
        for index, tap in enumerate(self.taps):
            module = self.model.get_submodule(tap.path)
            if tap.read == "input":
                # a pre-hook sees the input before the module runs; an in-place module would overwrite it
                copy = bool(getattr(module, "inplace", False))
                self._handles.append(module.register_forward_pre_hook(self._input_hook(index, copy)))
            else:
                self._handles.append(module.register_forward_hook(self._output_hook(index)))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._features.clear()

    def __enter__(self) -> FeatureCapture:
        return self.attach()

    def __exit__(self, *_: Any) -> None:
        self.remove()

    def _input_hook(self, index: int, copy: bool):
        def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            self._features[index] = inputs[0].clone() if copy else inputs[0]

        return hook

    def _output_hook(self, index: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._features[index] = output

        return hook

    def run(self, *inputs: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        attached_here = not self._handles
        self.attach()
        self._features.clear()
        try:
            output = self.model(*inputs)
            return output, self.collect()
        finally:
            if attached_here:
                self.remove()

    def collect(self) -> list[torch.Tensor]:
        """The last forward's features in tap order; the capture then lets go of them (and their graph)."""
        missing = [tap.path for index, tap in enumerate(self.taps) if index not in self._features]
        if missing:
            raise EdgekdError(
                f"feature taps {', '.join(missing)} were not reached by the model's forward pass"
            )
        features = [self._features[index] for index in range(len(self.taps))]
        self._features.clear()
        return features


def probe_shapes(
    model: nn.Module, taps: Sequence[Tap], input_shape: tuple[int, int, int], *, role: str, where: str
) -> list[FeatureShape]:
    """Channels and spatial size of each tap, from one no-grad eval-mode pass on a zero image.

    Zeros rather than random numbers: the pass must not draw from the seeded generator. Every submodule's
    own train/eval mode is restored afterwards.
    """
    reference = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    image = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    with evaluating(model), torch.no_grad():
        _, features = FeatureCapture(model, taps).run(image)
    shapes = []
    for tap, feature in zip(taps, features, strict=True):
        if not isinstance(feature, torch.Tensor) or feature.dim() != 4:
            got = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature).__name__
            raise EdgekdError(
                f"{where}: the {role}'s tap '{tap.name}' gives {got}, not a (batch, channels, height, width) "
                "feature map; choose a convolutional stage"
            )
        shapes.append(FeatureShape(*feature.shape[1:]))
    return shapes


# ------------------------------------------------------------------------------------------------ pairs
@dataclass(frozen=True)
class TapPair:
    teacher: Tap
    student: Tap
    teacher_shape: FeatureShape
    student_shape: FeatureShape


def pair_taps(
    teacher: nn.Module,
    student: nn.Module,
    options: TapOptions,
    input_shape: tuple[int, int, int],
    *,
    preact: bool,
    where: str,
    default_teacher_taps: Sequence[TapRef] | None = None,
    fields: tuple[str, str] = ("teacher_taps", "student_taps"),
) -> list[TapPair]:
    """Teacher/student tap pairs, shallow to deep.

    Explicit ``student_taps`` pair in order, whatever their sizes (the method resizes). Otherwise each teacher
    tap takes the deepest unused student tap of the same height and width, deeper than the previous pair's;
    a teacher tap without one is left out, and an EdgekdError is raised when none has one.
    """
    teacher_where, student_where = (f"{where}.{field}" for field in fields)
    teacher_refs = options.teacher_taps if options.teacher_taps is not None else default_teacher_taps
    teacher_taps = resolve_taps(teacher, teacher_refs, preact=preact, role="teacher", where=teacher_where)
    student_taps = resolve_taps(
        student, options.student_taps, preact=preact, role="student", where=student_where
    )
    teacher_shapes = probe_shapes(teacher, teacher_taps, input_shape, role="teacher", where=teacher_where)
    student_shapes = probe_shapes(student, student_taps, input_shape, role="student", where=student_where)
    if options.student_taps is not None:
        return [
            TapPair(teacher_taps[i], student_taps[i], teacher_shapes[i], student_shapes[i])
            for i in range(len(teacher_taps))
        ]
    pairs = _pair_by_size(teacher_taps, teacher_shapes, student_taps, student_shapes)
    if not pairs:
        raise EdgekdError(
            f"{where}: no student tap has the height and width of a teacher tap (teacher: "
            f"{_list_shapes(teacher_taps, teacher_shapes)}; student: {_list_shapes(student_taps, student_shapes)}); "
            f"pair taps explicitly with {teacher_where} and {student_where}"
        )
    return pairs


def _pair_by_size(
    teacher_taps: list[Tap],
    teacher_shapes: list[FeatureShape],
    student_taps: list[Tap],
    student_shapes: list[FeatureShape],
) -> list[TapPair]:
    pairs = []
    next_student = 0  # pairs stay in depth order on both sides
    for tap, shape in zip(teacher_taps, teacher_shapes, strict=True):
        same_size = [
            index
            for index in range(next_student, len(student_taps))
            if student_shapes[index].size == shape.size
        ]
        if same_size:
            chosen = same_size[-1]  # the end of the student's stage at that resolution
            pairs.append(TapPair(tap, student_taps[chosen], shape, student_shapes[chosen]))
            next_student = chosen + 1
    return pairs


def _list_shapes(taps: list[Tap], shapes: list[FeatureShape]) -> str:
    return ", ".join(f"{tap.name} {shape}" for tap, shape in zip(taps, shapes, strict=True))


# ------------------------------------------------------------------------------------------------ maps
def connector(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Student channels to teacher channels: a convolution and a BatchNorm (the Overhaul connector)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    # He initialization, as the zoo models use, so the connector starts at the feature maps' scale
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    bn = nn.BatchNorm2d(out_channels)
    return nn.Sequential(conv, bn)


def resize_to(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a (B, C, H, W) map to ``size``: average pooling to shrink (keeps the mean energy of each
    region), bilinear interpolation otherwise."""
    height, width = features.shape[-2:]
    if (height, width) == tuple(size):
        return features
    if height >= size[0] and width >= size[1]:
        return F.adaptive_avg_pool2d(features, size)
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------ base
class FeatureDistiller(Distiller):
    """A Distiller that reads feature maps of both networks at paired taps.

    Subclasses set ``method`` (its registry name, for error messages) and ``preact`` (pre-activation
    features), may override ``default_teacher_taps``, and call ``teacher_features``/``student_features``.
    """

    method = "features"
    preact = False

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, options: Section, context: DistillContext
    ):
        super().__init__(student, teacher, options, context)
        self.where = f"distill.{self.method}"
        if teacher is None:
            raise EdgekdError(f"{self.where}: this method needs a teacher")
        if context.input_shape is None:
            raise EdgekdError(
                f"{self.where}: the input shape (channels, height, width) is needed to size the connectors"
            )
        self.input_shape = tuple(context.input_shape)
        self.pairs = self.build_pairs(student, teacher, options)
        self.teacher_capture = FeatureCapture(teacher, [pair.teacher for pair in self.pairs])
        self.student_capture = FeatureCapture(student, [pair.student for pair in self.pairs])

    def build_pairs(self, student: nn.Module, teacher: nn.Module, options: Any) -> list[TapPair]:
        return pair_taps(
            teacher,
            student,
            options,
            self.input_shape,
            preact=self.preact,
            where=self.where,
            default_teacher_taps=self.default_teacher_taps(teacher),
        )

    def default_teacher_taps(self, teacher: nn.Module) -> list[TapRef] | None:
        return None  # every declared tap

    def make_connectors(self, kernel_size: int = 1) -> nn.ModuleList:
        return nn.ModuleList(
            connector(pair.student_shape.channels, pair.teacher_shape.channels, kernel_size)
            for pair in self.pairs
        )

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The teacher's logits on the student's classes (None when it has none of them) and its tap
        features, without gradient."""
        logits, features = self.teacher_capture.run(images)
        if self.context.teacher_class_ids is None:
            return None, features
        return restrict_to_student_classes(logits, self.context), features

    def student_parameters_reaching_taps(self) -> list[nn.Parameter]:
        """The student's trainable parameters that its tap features depend on (its layers up to the deepest
        tap), found by one backward pass from the taps on a blank batch in eval mode (so no BatchNorm
        statistic moves): what a stage that trains only through the taps should optimise."""
        candidates = [p for p in self.student.parameters() if p.requires_grad]
        blank = torch.zeros(2, *self.input_shape, device=candidates[0].device, dtype=candidates[0].dtype)
        with evaluating(self.student):
            _, features = self.student_capture.run(blank)
            total = sum(feature.sum() for feature in features)
            grads = torch.autograd.grad(total, candidates, allow_unused=True)
        return [p for p, grad in zip(candidates, grads, strict=True) if grad is not None]

    def student_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.student_capture.run(images)
