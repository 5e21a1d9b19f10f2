"""Every distillation method's options: the recipe's `distill.<method>:` blocks.

They live apart from the methods' code, which needs torch, so that loading or validating a recipe, and the
JSON schema, can list every method's options without importing it (see catalog.py). Each class is one
method's block; the method's implementation reads the validated instance as ``self.options``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgekd.schema_base import MAX_EPOCHS, Section

# A tap as a recipe names it: an index into the model's declared taps, a declared name or a module path.
TapRef = int | str


class TapOptions(Section):
    """The tap fields every feature method's options share."""

    teacher_taps: list[TapRef] | None = Field(
        None,
        description="Teacher taps to distill from: indices into the model's declared taps (0 = shallowest, "
        "-1 = deepest), declared names (layer2) or module paths (the module's output). "
        "Default: the method's own choice (every declared tap for most methods).",
    )
    student_taps: list[TapRef] | None = Field(
        None,
        description="Student taps paired in order with teacher_taps (same length; maps of other sizes are "
        "resized). Default: each teacher tap gets the deepest student tap of the same height and width.",
    )

    @model_validator(mode="after")
    def _check_pairing(self) -> TapOptions:
        if self.student_taps is not None:
            if self.teacher_taps is None:
                raise ValueError("student_taps: give teacher_taps too, so the pairs are explicit")
            if len(self.student_taps) != len(self.teacher_taps):
                raise ValueError(
                    f"student_taps: {len(self.student_taps)} taps cannot pair with "
                    f"{len(self.teacher_taps)} teacher_taps; give as many of each"
                )
        if self.teacher_taps is not None and not self.teacher_taps:
            raise ValueError("teacher_taps: give at least one tap, or leave it out for the default")
        return self


# ------------------------------------------------------------------------------------------ scratch
class ScratchOptions(Section):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


# ------------------------------------------------------------------------------------------ kd
class KDOptions(Section):
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T of both networks.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the distillation term; CE gets 1 - alpha.")


# ------------------------------------------------------------------------------------------ finetune
class FinetuneOptions(Section):
    head: Literal["fresh", "restricted"] = Field(
        "fresh",
        description="'fresh': a new K-way classifier; 'restricted': the teacher's classifier rows of the "
        "student's classes (the model starts as the restricted teacher).",
    )
    trainable: Literal["all", "last_stage", "head"] = Field(
        "last_stage",
        description="What is trained: 'last_stage' (the last declared stage and all after it, as the SKD "
        "paper's baseline), 'head' (the classifier only) or 'all'.",
    )
    lr_factor: float = Field(
        0.1, gt=0, le=1, description="Multiplies train.optimizer.lr: fine-tuning takes smaller steps."
    )


# ------------------------------------------------------------------------------------------ transfer check
class TransferCheckOptions(Section):
    """SRM's "quality of intermediate knowledge transfer" (paper 004, Table II), for methods that pre-train the
    student's intermediate layers (SRM, FitNet)."""

    train: Literal["head", "all"] = Field(
        "head",
        description="After pre-training, a fresh classifier learns with CE alone: 'head' trains only it "
        "(linear probing), 'all' the whole student (whole network update).",
    )
    epochs: int = Field(
        20, ge=1, le=MAX_EPOCHS, description="Epochs of the check (the paper: 60 for head, 200 for all)."
    )


# ------------------------------------------------------------------------------------------ fitnet
class FitNetOptions(Section):
    teacher_tap: TapRef | None = Field(
        None,
        description="The teacher's hint tap: index into its declared taps, declared name or module path. "
        "Default: the middle declared tap.",
    )
    student_tap: TapRef | None = Field(
        None,
        description="The student's guided tap (resized to the hint's size if it differs). Default: the "
        "deepest student tap of the hint's height and width.",
    )
    variant: Literal["romero", "repdistiller"] = Field(
        "romero",
        description="'romero': hint stage, then KD (the paper); 'repdistiller': one stage of CE + "
        "task_hint_weight·hint (the RepDistiller benchmark's FitNet).",
    )
    hint_epochs: int | None = Field(
        None,
        ge=0,
        le=MAX_EPOCHS,
        description="Epochs of the hint stage before the task stage (0: none). Default: romero one eighth "
        "of train.epochs (at least 1 when there are 2 or more; edgekd's choice, the paper fixes none), "
        "repdistiller 0.",
    )
    regressor_kernel: Literal[1, 3] = Field(1, description="Kernel size of the regressor's convolution.")
    task_hint_weight: float | None = Field(
        None,
        ge=0,
        description="Weight of the hint MSE during the task stage. Default: romero 0, repdistiller 100.",
    )
    kd_alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Task stage: weight of Hinton KD; CE gets 1 - kd_alpha. Default: romero 0.9 (as the "
        "`kd` method), repdistiller 0.",
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the task stage's KD term.")
    transfer_check: TransferCheckOptions | None = Field(
        None,
        description="Romero variant: after the hint stage, train a fresh classifier from the hinted student "
        "with CE and report its accuracy (the student that goes on to the task stage is not changed).",
    )


# The values an unset FitNet option takes under each variant.
VARIANT_DEFAULTS = {
    "romero": {"task_hint_weight": 0.0, "kd_alpha": 0.9},
    "repdistiller": {"task_hint_weight": 100.0, "kd_alpha": 0.0, "hint_epochs": 0},
}


def resolved_option(options: FitNetOptions, name: str) -> float:
    value = getattr(options, name)
    return VARIANT_DEFAULTS[options.variant][name] if value is None else value


# ------------------------------------------------------------------------------------------ at
class ATOptions(TapOptions):
    beta: float = Field(
        1000.0, ge=0, description="The paper's beta: the term is (beta/2) * sum of map distances."
    )
    p: float = Field(
        2.0, gt=0, description="Exponent of |activation| in the attention map (the paper uses 2)."
    )
    min_map_size: int = Field(
        4,
        ge=1,
        description="Default taps: only the teacher's declared taps whose maps are at least this high and wide "
        "(the shallowest when none is). Ignored when teacher_taps is given.",
    )


# ------------------------------------------------------------------------------------------ rkd, rkd_ft
class RKDOptions(Section):
    distance_weight: float = Field(25.0, ge=0, description="Weight of the distance-wise term.")
    angle_weight: float = Field(50.0, ge=0, description="Weight of the angle-wise term.")


class RKDFinetuneOptions(RKDOptions):
    embedding_epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs of the RKD embedding stage; fine-tuning gets the rest of train.epochs. Default: "
        "half of train.epochs.",
    )


# ------------------------------------------------------------------------------------------ ofd, skd
class OFDOptions(TapOptions):
    weight: float = Field(
        1e-3,
        ge=0,
        description="Multiplies the summed partial L2 distance per image (1/1000: the paper's CIFAR setting).",
    )


class SKDOptions(TapOptions):
    weight: float = Field(
        2.0,
        ge=0,
        description="lambda in L = CE + (lambda/2) * L_KD; 2 gives the distillation terms weight 1, as OFD.",
    )
    beta: float = Field(
        2.0,
        gt=1,
        description="Depth weighting beta^-(L-1-i) of tap i (deepest = 1); 2 is OFD's per-tap weighting.",
    )
    fm_scale: float = Field(
        1e-3,
        ge=0,
        description="Multiplies the per-image partial L2 feature distance (the reference divides by 1000).",
    )
    tm_scale: float = Field(
        1e-3,
        ge=0,
        description="Multiplies the spectral-norm (transmitting matrix) term; 0 turns it off. 1/1000 like "
        "fm_scale keeps the paper's equal weighting of the two terms.",
    )
    power_iterations: int = Field(
        0,
        ge=0,
        le=1000,
        description="How the largest singular value's vectors are found: 0 (default) exactly, from the "
        "eigenvectors of the smaller Gram matrix, so the gradient is the exact one; N > 0: N power-iteration "
        "steps, an approximation whose gradient can be several % off where the top two singular values are "
        "close (a speed option, not the method).",
    )


# ------------------------------------------------------------------------------------------ refilled
class RefilledOptions(Section):
    """The defaults are the method paper 003 reports as REFILLED (§4, Fig. 3): per-batch class centres (eq. 7),
    an exponentially decaying λ and no temperature on the student's triplet probabilities (§4.2).
    `kd_decay: 1` gives its REFILLED⁻ (fixed λ); `centres: global` the authors' newer code."""

    embedding_epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs of the embedding stage; the classifier stage gets the rest of train.epochs. "
        "Default: half of train.epochs.",
    )
    margin: float = Field(0.2, gt=0, le=2, description="Semi-hard triplets: 0 < d(a,n) - d(a,p) <= margin.")
    triplet_temperature: float = Field(4.0, gt=0, description="τ of the teacher's triplet probabilities.")
    student_temperature: float = Field(
        1.0,
        gt=0,
        description="τ of the student's triplet probabilities. Default 1, i.e. none: the paper applies the "
        "temperature to the teacher's only (§4.2: 'only apply the temperature in P(φ_T)').",
    )
    triplet_weight: float = Field(
        1000.0,
        gt=0,
        description="Weight of the triplet KL (the authors' code scales it by 500-1000: on normalised "
        "embeddings the probabilities move little).",
    )
    centres: Literal["batch", "global"] = Field(
        "batch",
        description="Class centres of the teacher's embedding: over each batch ('batch', the paper's eq. 7, "
        "the default) or over the student's training images ('global', the authors' newer code).",
    )
    posterior_temperature: float = Field(2.0, gt=0, description="τ of the local posteriors (eq. 8, 9).")
    kd_weight: float = Field(
        1.0,
        ge=0,
        description="λ: weight of the local KD term at the first epoch of the classifier stage (the paper "
        "gives no value; edgekd's default).",
    )
    kd_decay: float = Field(
        0.97,
        gt=0,
        le=1,
        description="λ is multiplied by this each epoch of the classifier stage. Below 1 (default 0.97): "
        "the paper's exponentially decaying λ, its full REFILLED (the rate is edgekd's choice: the paper "
        "gives none; 0.97 brings λ to about 5 % after 100 epochs). 1: constant λ, the paper's REFILLED⁻ "
        "and the authors' newer code.",
    )


# ------------------------------------------------------------------------------------------ srm
class SRMOptions(TapOptions):
    atoms_per_channel: float = Field(
        2.0,
        gt=1,
        le=16,
        description="μ: each teacher tap of C channels gets a dictionary of M = floor(μ·C) atoms (the paper "
        "validates 1.5, 2, 3).",
    )
    sparsity: float = Field(
        0.02,
        gt=0,
        lt=1,
        description="λ: a sparse code keeps the k = max(1, floor(λ·M)) largest similarities (the paper "
        "validates 0.01, 0.02, 0.03).",
    )
    dictionary_epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs of stage 1 (the teacher's dictionaries; the student does not train, so they are "
        "not part of train.epochs). Default: one eighth of train.epochs, at least 1 (edgekd's choice).",
    )
    pretrain_epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs of stage 2 (the student's intermediate layers); stage 3 (KD) gets the rest of "
        "train.epochs. Default: 4/9 of train.epochs, the paper's 160 pre-training to 200 KD epochs.",
    )
    pixel_ce: Literal["similarities", "sigmoid_logits"] = Field(
        "similarities",
        description="Pixel-level cross-entropy: against the student's similarities normalised over the atoms "
        "('similarities', the paper's eq. 4) or with the similarities fed to a softmax as logits "
        "('sigmoid_logits', the authors' code).",
    )
    balance: Literal["paper", "mean"] = Field(
        "paper",
        description="How stage 2's terms are weighed against each other. 'paper': as the sums of eq. 4-5 "
        "(pixel CE summed over every image and pixel, image BCE over every image), divided by one constant "
        "(the batch's pixel count at the largest tap) so that the learning rate does not depend on batch size "
        "or resolution: a tap's pixel term weighs H_l W_l / P, its image term 1 / P. 'mean': every term a "
        "mean (per pixel, per image), so each image term weighs H_l W_l times more relative to its pixel term "
        "than in the paper.",
    )
    pixel_weight: float = Field(1.0, ge=0, description="Weight of the pixel-level cross-entropy.")
    image_weight: float = Field(1.0, ge=0, description="Weight of the image-level binary cross-entropy.")
    temperature: float = Field(
        4.0, gt=0, description="Stage 3: KD temperature T (the paper validates 2, 4, 8)."
    )
    alpha: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Stage 3: weight of the KD term, CE gets 1 - alpha (the paper validates 0.25, 0.5, 0.75). "
        "CE alone when the teacher's head has none of the student's classes.",
    )
    chunk_elements: int = Field(
        1 << 18,
        ge=1024,
        description="Sparse codes computed at once (pixels × atoms per chunk): bounds the memory of the codes, "
        "B·H·W·M floats at a tap, without changing the result.",
    )
    transfer_check: TransferCheckOptions | None = Field(
        None,
        description="After stage 2, train a fresh classifier from the pre-trained student with CE and report "
        "its accuracy (the student that goes on to stage 3 is not changed).",
    )


# ------------------------------------------------------------------------------------------ distpro
class DistProOptions(Section):
    """Every default is the paper's (002, §3-4.1, its CIFAR setting); where an option allows something else,
    its description names whose choice that is."""

    teacher_taps: list[TapRef] | None = Field(
        None,
        description="The teacher's taps pathways may start from (indices, declared names or module paths). "
        "Default: every declared tap (the outputs of its down-sampling stages, the paper's choice).",
    )
    student_taps: list[TapRef] | None = Field(
        None,
        description="The student's taps pathways may lead from (not paired in order: `pairs` decides). "
        "Default: every declared tap.",
    )
    weights: Literal["process", "final", "equal"] = Field(
        "process",
        description="Pathway weights while the student trains: 'process' (the searched α schedule, linearly "
        "interpolated over the run: DistPro), 'final' (the last searched α held constant: the paper's 'use "
        "α_T'), 'equal' (1/N each, no search: its 'equally weighted').",
    )
    pairs: Literal["all", "deeper_or_same"] = Field(
        "all",
        description="Which (teacher tap i, student tap j) pairs are pathways: 'all' (the paper: its eq. 2 sums "
        "over every pair, 9 connections on CIFAR) or 'deeper_or_same', j >= i (ReviewKD's low-to-high "
        "restriction, which the authors' release and the paper's ImageNet search space follow).",
    )
    variants: int = Field(
        3,
        ge=1,
        le=8,
        description="Transform blocks per tap pair (the paper's CIFAR search: 3, so 3 x 9 = 27 pathways; its "
        "ImageNet search and the authors' release: 1). Each is the paper's one specified architecture (Fig. "
        "4a), initialised apart (pathways.py says why).",
    )
    search_epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs of the search stage (on a seeded 80/20 split of the training images; not part of "
        "train.epochs). Its student's lr is multiplied by 0.1 after each quarter of them (the paper: 40 "
        "epochs, x0.1 at 10, 20, 30), unless distill.stages gives the search another schedule. Default: "
        "train.epochs / 6, at least 1 (the paper: 40 search for 240 training).",
    )
    bias: float | None = Field(
        1.0,
        description="g of the biased softmax α = softmax(concat(α̃, g))[:N]; null: a plain softmax over α̃.",
    )
    alpha_init: float = Field(
        1.0,
        description="α̃ of every pathway when the search starts (the paper's α_0 = 1, §3.3: the unnormalised "
        "weight; with g = 1 every pathway starts level with the bias, α = 1/(N+1), and above drop_below).",
    )
    alpha_lr: float = Field(
        0.05, gt=0, le=100, description="Adam learning rate of α̃ (the paper 0.05; its code 0.1)."
    )
    alpha_betas: list[float] = Field(
        default_factory=lambda: [0.5, 0.999], min_length=2, max_length=2, description="Adam betas of α̃."
    )
    record_every: int = Field(1, ge=1, description="Record α every this many search steps.")
    drop_below: float | None = Field(
        0.5,
        description="τ of the paper's clip (§3.4): a pathway whose α̃ is at most τ is left out of the loss "
        "(not computed, its transform not stepped); `drop` says when. null computes every pathway at every "
        "step.",
    )
    drop: Literal["per_step", "whole_run"] = Field(
        "per_step",
        description="'per_step' (the paper): at every step of the search and of the replay, the pathways whose "
        "α̃ at that step is at most drop_below, so a pathway leaves and may come back; 'whole_run' (edgekd's "
        "earlier rule): only in the replay, the pathways whose α̃ never exceeded drop_below in the search.",
    )
    weight: float = Field(
        1.0, gt=0, description="Multiplies the weighted pathway losses (CE + weight·Σ α_p·HCL_p)."
    )
