"""SRM (Tran et al., paper 004): knowledge distillation by sparse representation matching, in three stages.

Stage 1, *dictionaries*: for each chosen teacher tap (C channels; default every declared tap that has a
student tap of the same height and width: the outputs of the down-sampling stages, as the paper) a
dictionary of M = ⌊μ·C⌋ atoms and a scalar bias learn to reconstruct each pixel from its k = max(1, ⌊λ·M⌋)
largest sigmoid similarities (sparse_coding.py), on MSE, with the teacher frozen in eval mode, over the
student's training images (and unlabelled ones when the recipe has them). Only the dictionaries train; the
stage keeps the epoch of best validation reconstruction (R², the share of the features' variance the codes
explain). The dictionaries are an artifact: another recipe with the same teacher can load them.

Stage 2, *pretrain*: each student tap (same H×W as its teacher tap) gets its own dictionary of M atoms. The
teacher's sparse codes label it: per pixel the index of the largest code, learnt by cross-entropy against
the student's per-pixel similarities; per image the spatial mean of the codes, learnt by binary
cross-entropy against the spatial mean of the student's similarities. Loss Σ_taps (CE_pixel + BCE_image).
The cross-entropy treats the similarities, normalised over the atoms, as the pixel's distribution over
atoms (``pixel_ce: similarities``, the paper's eq. 4); the authors' code feeds the similarities to a softmax
as logits (``pixel_ce: sigmoid_logits``). The student's layers up to its deepest tap and the student
dictionaries train; the classifier does not. The stage keeps the epoch of best validation pixel agreement.

Stage 3, *kd*: the pre-trained student with a fresh head learns with Hinton KD, ``(1 - α)·CE + α·T²·KL``,
or with CE alone when the teacher's head has none of the student's classes (cross-task); the stage's notes
in the report say which.

The dictionaries are training-only: the exported student has exactly the student's parameters.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.features import FeatureDistiller, TapPair, pair_taps, probe_shapes, resolve_taps
from edgekd.distill.methods.kd import KD
from edgekd.distill.options import SRMOptions
from edgekd.distill.payload import Items, Mapping, Number, PayloadSchema, Tensor, Text
from edgekd.distill.plan import Artifact, Networks, Stage, check_payload
from edgekd.distill.registry import implements
from edgekd.distill.sparse_coding import (
    SparseDictionary,
    SparseLabels,
    atom_count,
    kept_codes,
    label_losses,
    pixel_agreement,
    reconstruction_error,
    reconstruction_mse,
    sparse_labels,
)
from edgekd.distill.transfer_check import transfer_check_stages
from edgekd.errors import EdgekdError
from edgekd.models._common import evaluating

ARTIFACT_FORMAT = "edgekd.srm.dictionaries/1"
# What SRMDictionaries.artifact writes: per teacher tap its C x M atoms and its scalar bias (M = ⌊μ·C⌋ atoms,
# k = max(1, ⌊λ·M⌋) kept codes), with the μ and λ they were learnt with and the teacher's fingerprint.
DICTIONARIES_SCHEMA = PayloadSchema(
    "an SRM dictionaries file",
    ARTIFACT_FORMAT,
    Mapping(
        {
            "teacher": Text(hex_digits=64),
            "atoms_per_channel": Number(),
            "sparsity": Number(),
            "taps": Items(
                Mapping(
                    {
                        "name": Text(),
                        "channels": Number(integer=True, minimum=1, binds="channels"),
                        "atoms": Number(integer=True, minimum=1, binds="atoms"),
                        "k": Number(integer=True, minimum=1, maximum="atoms"),
                        "dictionary": Tensor(("channels", "atoms")),
                        "bias": Tensor(()),
                    }
                )
            ),
        }
    ),
)


def check_dictionaries_options(payload, options: SRMOptions, where: str) -> None:
    """Valid dictionaries were learnt with this recipe's μ and λ."""
    for field in ("atoms_per_channel", "sparsity"):
        if abs(payload[field] - getattr(options, field)) > 1e-12:
            raise EdgekdError(
                f"{where}: the dictionaries were learnt with {field} {payload[field]}, the recipe's "
                f"distill.srm.{field} is {getattr(options, field)}; make them agree"
            )


def dictionary_shapes(pairs: list[TapPair], options: SRMOptions) -> list[tuple[str, int, int, int]]:
    """(teacher tap, channels C, atoms M, kept codes k) of each pair's teacher dictionary under the options."""
    shapes = []
    for pair in pairs:
        channels = pair.teacher_shape.channels
        atoms = atom_count(channels, options.atoms_per_channel)
        shapes.append((pair.teacher.name, channels, atoms, kept_codes(atoms, options.sparsity)))
    return shapes


def check_dictionaries_fit(payload, pairs: list[TapPair], options: SRMOptions, where: str) -> None:
    """Valid dictionaries hold exactly one dictionary per teacher tap this recipe pairs, in its order, of the
    channels, atoms and kept codes the options give that tap."""
    wanted = dictionary_shapes(pairs, options)
    held = [(tap["name"], tap["channels"], tap["atoms"], tap["k"]) for tap in payload["taps"]]
    held_names, wanted_names = [shape[0] for shape in held], [shape[0] for shape in wanted]
    if held_names != wanted_names:
        raise EdgekdError(
            f"{where}: the file holds dictionaries of {len(held)} teacher taps ({', '.join(held_names)}); "
            f"allowed: the {len(wanted)} this recipe pairs ({', '.join(wanted_names)})"
        )
    for index, (have, need) in enumerate(zip(held, wanted, strict=True)):
        if have != need:
            raise EdgekdError(
                f"{where}: taps[{index}] ({have[0]}) is {_describe_dictionary(have)}; allowed: "
                f"{_describe_dictionary(need)} (its channels under this recipe's atoms_per_channel and sparsity)"
            )


def _describe_dictionary(shape: tuple[str, int, int, int]) -> str:
    _, channels, atoms, k = shape
    return f"{channels} channels, {atoms} atoms, k={k}"


def check_dictionaries_networks(payload, networks: Networks, options: SRMOptions, where: str) -> None:
    pairs = srm_pairs(networks.teacher, networks.student, options, networks.input_shape, "distill.srm")
    check_dictionaries_fit(payload, pairs, options, where)
    if networks.teacher_weights:
        check_dictionaries_teacher(payload, networks.teacher, where)


def check_dictionaries_teacher(payload, teacher: nn.Module, where: str) -> None:
    """Dictionaries fit only the teacher (its weights) they were learnt on."""
    if payload["teacher"] != teacher_fingerprint(teacher):
        raise EdgekdError(
            f"{where}: these dictionaries were learnt on another teacher (weights fingerprint "
            f"{payload['teacher'][:12]}, this run's teacher {teacher_fingerprint(teacher)[:12]}); they fit only "
            "the teacher they were learnt on"
        )


DICTIONARIES = Artifact(
    "dictionaries",
    "dictionaries.pt",
    "objective",
    "the teacher's dictionaries and biases per tap (and the teacher's fingerprint)",
    schema=DICTIONARIES_SCHEMA,
    check=check_dictionaries_options,
    fits=check_dictionaries_networks,
)
PRETRAINED_STUDENT = Artifact(
    "pretrained_student",
    "pretrained_student.pt",
    "student",
    "the student after SRM's intermediate pre-training (its classifier untrained)",
)


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 of the teacher's weights and buffers: dictionaries fit only the teacher they were learnt on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def srm_pairs(teacher, student, options: SRMOptions, input_shape, where: str) -> list[TapPair]:
    """Teacher/student tap pairs of the same height and width; an error names the compatible student taps of
    any pair that differs, and any chosen teacher tap left without one."""
    pairs = pair_taps(teacher, student, options, input_shape, preact=False, where=where)
    for pair in pairs:
        if pair.teacher_shape.size != pair.student_shape.size:
            raise EdgekdError(
                f"{where}.student_taps: student tap '{pair.student.name}' is {_size(pair.student_shape)} but "
                f"teacher tap '{pair.teacher.name}' is {_size(pair.teacher_shape)}; SRM pairs maps of the same "
                f"height and width: {_student_taps_of(student, pair.teacher_shape.size, input_shape, where)}"
            )
    if options.teacher_taps is not None and options.student_taps is None:
        paired = {pair.teacher.name for pair in pairs}
        teacher_taps = resolve_taps(teacher, options.teacher_taps, preact=False, role="teacher", where=where)
        shapes = probe_shapes(teacher, teacher_taps, input_shape, role="teacher", where=where)
        for tap, shape in zip(teacher_taps, shapes, strict=True):
            if tap.name not in paired:
                raise EdgekdError(
                    f"{where}.teacher_taps: teacher tap '{tap.name}' ({_size(shape)}) has no student tap left "
                    f"to pair with: {_student_taps_of(student, shape.size, input_shape, where)}"
                )
    return pairs


def _size(shape) -> str:
    return f"{shape.height}x{shape.width}"


def _student_taps_of(student, size: tuple[int, int], input_shape, where: str) -> str:
    """'student taps of 8x8: 0=layer1' or what the student has instead."""
    taps = resolve_taps(student, None, preact=False, role="student", where=where)
    shapes = probe_shapes(student, taps, input_shape, role="student", where=where)
    listed = [f"{index}={tap.name}" for index, (tap, shape) in enumerate(zip(taps, shapes, strict=True))]
    fitting = [name for name, shape in zip(listed, shapes, strict=True) if shape.size == size]
    if fitting:
        return f"student taps of {size[0]}x{size[1]}: {', '.join(fitting)}"
    every = ", ".join(f"{name} {_size(shape)}" for name, shape in zip(listed, shapes, strict=True))
    return f"the student has no tap of {size[0]}x{size[1]} (its taps: {every})"


class _SRMStage(FeatureDistiller):
    method = "srm"
    preact = False
    learns_from_unlabeled = True

    def build_pairs(self, student, teacher, options):
        return srm_pairs(teacher, student, options, self.input_shape, self.where)

    def teacher_dictionary_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, atoms M, kept codes k) of each teacher tap's dictionary under the options."""
        return [(channels, atoms, k) for _, channels, atoms, k in dictionary_shapes(self.pairs, self.options)]


class SRMDictionaries(_SRMStage):
    """Stage 1: the teacher's dictionaries learn to reconstruct its feature maps from sparse codes."""

    selection_metric_name = "recon_r2"

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        shapes = self.teacher_dictionary_shapes()
        self.dictionaries = nn.ModuleList(SparseDictionary(channels, atoms) for channels, atoms, _ in shapes)
        self.kept = [k for _, _, k in shapes]

    def trainable_parameters(self):
        return list(self.dictionaries.parameters())

    def forward_train(self, images, labels):
        # the student does not train here; its logits (eval mode: its BatchNorm statistics stay) feed the logs
        with torch.no_grad(), evaluating(self.student):
            logits = self.student(images)
        return logits, self.label_free_terms(images)

    def label_free_terms(self, images):
        _, maps = self.teacher_features(images)
        errors = [
            reconstruction_mse(features, dictionary, k, self.options.chunk_elements)
            for features, dictionary, k in zip(maps, self.dictionaries, self.kept, strict=True)
        ]
        return {"recon": sum(errors)}

    @torch.no_grad()
    def validation_reconstruction(self, data, device) -> list[tuple[float, float]]:
        """(MSE, R²) of each tap's reconstruction over the validation images; R² = 1 − SSE / SST, SST the
        squared deviations of the features from their per-channel means."""
        squared = [0.0] * len(self.pairs)
        moments = [ChannelMoments() for _ in self.pairs]
        for images, _ in data.eval_loader("val"):
            _, maps = self.teacher_features(images.to(device))
            for index, (features, dictionary, k) in enumerate(
                zip(maps, self.dictionaries, self.kept, strict=True)
            ):
                squared[index] += reconstruction_error(
                    features, dictionary, k, self.options.chunk_elements
                ).item()
                moments[index].add(features)
        return [
            (sse / max(moment.elements, 1), 1.0 - sse / moment.total if moment.total > 0 else 0.0)
            for sse, moment in zip(squared, moments, strict=True)
        ]

    def selection_metric(self, data, device) -> float:
        scores = self.validation_reconstruction(data, device)
        return sum(r2 for _, r2 in scores) / len(scores)

    def stage_measures(self, data, device) -> dict[str, float]:
        measures = {}
        for pair, (mse, r2) in zip(self.pairs, self.validation_reconstruction(data, device), strict=True):
            measures[f"{pair.teacher.name}.val_mse"] = mse
            measures[f"{pair.teacher.name}.val_r2"] = r2
        return measures

    def stage_notes(self) -> str:
        taps = "; ".join(
            f"{pair.teacher.name}: {channels} channels, {atoms} atoms, k={k}"
            for pair, (channels, atoms, k) in zip(self.pairs, self.teacher_dictionary_shapes(), strict=True)
        )
        return f"teacher dictionaries ({taps})"

    def artifact(self, name: str) -> dict:
        return {
            "format": ARTIFACT_FORMAT,
            "teacher": teacher_fingerprint(self.teacher),
            "atoms_per_channel": float(self.options.atoms_per_channel),
            "sparsity": float(self.options.sparsity),
            "taps": [
                {
                    "name": pair.teacher.name,
                    "channels": dictionary.channels,
                    "atoms": dictionary.atoms,
                    "k": k,
                    "dictionary": dictionary.atoms_matrix.detach().cpu().clone(),
                    "bias": dictionary.bias.detach().cpu().clone(),
                }
                for pair, dictionary, k in zip(self.pairs, self.dictionaries, self.kept, strict=True)
            ],
        }


def term_weights(pixels_per_tap: list[int], balance: str) -> list[tuple[float, float]]:
    """(pixel, image) weight of each tap's mean terms (label_losses). 'paper': eq. 4-5's sums over images and
    pixels divided by N·P, P the largest tap's pixels: Σ_n Σ_ij CE = N·H_l·W_l·(mean CE) and Σ_n BCE =
    N·(mean BCE), so the pixel term weighs H_l·W_l/P and the image term 1/P; the constant N·P is the
    learning rate's to absorb. 'mean': both 1."""
    if balance == "mean":
        return [(1.0, 1.0)] * len(pixels_per_tap)
    largest = max(pixels_per_tap)
    return [(pixels / largest, 1.0 / largest) for pixels in pixels_per_tap]


class SRMPretrain(_SRMStage):
    """Stage 2: the student's taps learn the teacher's pixel- and image-level sparse labels."""

    selection_metric_name = "pixel_agree"

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        shapes = self.teacher_dictionary_shapes()
        self.kept = [k for _, _, k in shapes]
        # filled from the stage-1 artifact (use_artifact); frozen: only the student side learns here
        self.teacher_dictionaries = nn.ModuleList(
            SparseDictionary(channels, atoms) for channels, atoms, _ in shapes
        ).requires_grad_(False)
        self.student_dictionaries = nn.ModuleList(
            SparseDictionary(pair.student_shape.channels, atoms)
            for pair, (_, atoms, _) in zip(self.pairs, shapes, strict=True)
        )
        self._dictionaries_loaded = False
        self._trained = [*self.student_parameters_reaching_taps(), *self.student_dictionaries.parameters()]

    def trainable_parameters(self):
        return list(self._trained)

    def use_artifact(self, name: str, payload: dict) -> None:
        where = f"distill.artifacts.srm.{name}"
        check_payload(DICTIONARIES, payload, self.options, where)
        check_dictionaries_teacher(payload, self.teacher, where)
        check_dictionaries_fit(payload, self.pairs, self.options, where)
        with torch.no_grad():
            for tap, dictionary in zip(payload["taps"], self.teacher_dictionaries, strict=True):
                dictionary.atoms_matrix.copy_(tap["dictionary"])
                dictionary.bias.copy_(tap["bias"])
        self._dictionaries_loaded = True

    def teacher_labels(self, images) -> list[SparseLabels]:
        _, maps = self.teacher_features(images)
        return [
            sparse_labels(features, dictionary, k, self.options.chunk_elements)
            for features, dictionary, k in zip(maps, self.teacher_dictionaries, self.kept, strict=True)
        ]

    def forward_train(self, images, labels):
        return self.distill_terms(images)  # no label term: the classifier does not train in this stage

    def distill_terms(self, images):
        assert self._dictionaries_loaded, "stage 2 needs the teacher's dictionaries (use_artifact)"
        targets = self.teacher_labels(images)
        logits, maps = self.student_features(images)
        pixel_terms, image_terms = [], []
        weights = term_weights(
            [features.shape[-2] * features.shape[-1] for features in maps], self.options.balance
        )
        for features, dictionary, labels, (pixel_weight, image_weight) in zip(
            maps, self.student_dictionaries, targets, weights, strict=True
        ):
            pixel, image = label_losses(
                features, dictionary, labels, self.options.pixel_ce, self.options.chunk_elements
            )
            pixel_terms.append(pixel_weight * pixel)
            image_terms.append(image_weight * image)
        return logits, {
            "pixel_ce": self.options.pixel_weight * sum(pixel_terms),
            "image_bce": self.options.image_weight * sum(image_terms),
        }

    @torch.no_grad()
    def validation_agreement(self, data, device) -> list[float]:
        """Per tap, the % of validation pixels whose most similar student atom is the teacher's label."""
        agree, pixels = [0] * len(self.pairs), [0] * len(self.pairs)
        with evaluating(self):
            for images, _ in data.eval_loader("val"):
                images = images.to(device)
                targets = self.teacher_labels(images)
                _, maps = self.student_features(images)
                for index, (features, dictionary, labels) in enumerate(
                    zip(maps, self.student_dictionaries, targets, strict=True)
                ):
                    agree[index] += int(pixel_agreement(features, dictionary, labels))
                    pixels[index] += labels.pixel.numel()
        return [100.0 * a / max(n, 1) for a, n in zip(agree, pixels, strict=True)]

    def selection_metric(self, data, device) -> float:
        scores = self.validation_agreement(data, device)
        return sum(scores) / len(scores)

    def stage_measures(self, data, device) -> dict[str, float]:
        return {
            f"{pair.student.name}.val_pixel_agree": score
            for pair, score in zip(self.pairs, self.validation_agreement(data, device), strict=True)
        }

    def stage_notes(self) -> str:
        pairs = ", ".join(f"{p.teacher.name}→{p.student.name} ({_size(p.student_shape)})" for p in self.pairs)
        return f"pixel CE form '{self.options.pixel_ce}'; taps {pairs}"


class ChannelMoments:
    """Running per-channel sums of a feature map's values and squares, for its total squared deviation."""

    def __init__(self):
        self.count = 0  # pixels
        self.sums: torch.Tensor | float = 0.0
        self.squares = 0.0

    def add(self, features: torch.Tensor) -> None:
        per_channel = features.double().transpose(0, 1).flatten(1)  # (C, B·H·W)
        self.count += per_channel.shape[1]
        self.sums = self.sums + per_channel.sum(1)
        self.squares += float(per_channel.square().sum())

    @property
    def elements(self) -> int:
        return self.count * (self.sums.numel() if isinstance(self.sums, torch.Tensor) else 0)

    @property
    def total(self) -> float:
        """Σ (x − mean of its channel)² over every element seen."""
        if not self.count:
            return 0.0
        return self.squares - float(torch.as_tensor(self.sums).square().sum()) / self.count


@implements("srm")
class SRMTask(KD):
    """Stage 3: Hinton KD from the pre-trained student (fresh head), with the options' T and α, or CE alone
    when the teacher's head has none of the student's classes."""

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        if teacher is None:
            raise EdgekdError("distill.srm: this method needs a teacher")
        self.uses_kd = context.teacher_class_ids is not None and options.alpha > 0
        self.learns_from_unlabeled = self.uses_kd

    def forward_train(self, images, labels):
        if self.uses_kd:
            return super().forward_train(images, labels)
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def stage_notes(self) -> str:
        if self.uses_kd:
            return f"KD: (1 - α)·CE + α·T²·KL, T={self.options.temperature:g}, α={self.options.alpha:g}"
        if self.context.teacher_class_ids is None:
            return "CE alone: the teacher's head has none of the student's classes"
        return "CE alone: distill.srm.alpha is 0"


def srm_epochs(options: SRMOptions, epochs: int) -> tuple[int, int]:
    """(dictionary epochs, pre-training epochs); stage 3 gets train.epochs minus the pre-training."""
    pretrain = (
        options.pretrain_epochs if options.pretrain_epochs is not None else max(1, round(epochs * 4 / 9))
    )
    if pretrain >= epochs:
        raise EdgekdError(
            f"distill.srm.pretrain_epochs: {pretrain} leaves no KD stage in train.epochs {epochs}; give fewer, "
            "or more train.epochs"
        )
    dictionaries = options.dictionary_epochs if options.dictionary_epochs is not None else max(1, epochs // 8)
    return dictionaries, pretrain


def srm_plan(options: SRMOptions, train) -> list[Stage]:
    dictionaries, pretrain = srm_epochs(options, train.epochs)
    return [
        Stage(
            "dictionaries",
            SRMDictionaries,
            "the teacher's dictionaries only, sparse-code reconstruction MSE",
            "metric",
            dictionaries,
            produces=(DICTIONARIES,),
        ),
        Stage(
            "pretrain",
            SRMPretrain,
            "the student up to its deepest tap + its dictionaries, pixel CE + image BCE on the teacher's codes",
            "metric",
            pretrain,
            consumes=(DICTIONARIES,),
            produces=(PRETRAINED_STUDENT,),
        ),
        *transfer_check_stages(options.transfer_check),
        Stage(
            "kd",
            SRMTask,
            "fresh head, the whole student: KD (or CE alone without the teacher's classes)",
            None,
            train.epochs - pretrain,
            fresh_head=True,
            consumes=(PRETRAINED_STUDENT,),
        ),
    ]
