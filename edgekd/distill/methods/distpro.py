"""DistPro (Deng et al., paper 002): search a distillation process by meta-optimisation, then replay it.

Pathways connect the student's taps to the teacher's (pathways.py): every (teacher tap i, student tap j)
pair (the paper's; `pairs: deeper_or_same` keeps j ≥ i) times the transform variants (3, the paper's CIFAR
setting), each scored by the hierarchical context loss. The student learns CE + Σ_p α_p·HCL_p, where
α = softmax(concat(α̃, g))[:N] (the biased softmax), α̃ starting at 1 (the paper's α_0).

*Search* (its own stage, on a seeded 80/20 split of the labelled training images, never the validation or
test images; the student's lr ×0.1 after each quarter of it, the paper's 10/20/30 of 40 epochs): each step,
before the student's own optimizer step, α̃ moves by Adam along the hyper-gradient of the validation CE
through one unrolled optimizer step (hypergradient.py: a finite difference, computed functionally on copies,
so nothing leaks into the live weights). α is recorded every `record_every` steps: that schedule is the
*process*, an artifact another recipe can load (transfer across data and similar networks: the pathways
must have the same names).

*Replay*: a fresh student (the plan's initial weights) trains over the whole run with α_t read from the
process by linear interpolation in training progress; only θ (student and transforms) is updated. Baselines
as options: `weights: final` (the last searched α held constant: the paper's "use α_T") and `weights: equal`
(1/N each, no search). The replay is seeded as a plan's first stage (stages.py: a fresh-student stage), so a
replay and its `weights: equal` reference see the same data order and start from the same student and
transforms: they differ in the weights alone.

*Clip* (the paper's §3.4, `drop_below` τ = 0.5, `drop: per_step`): at every step of the search and of the
replay, a pathway whose α̃ at that step is at most τ is not computed (its term is left out, its weight counts
as 0; the others keep their weights) and its transform is not stepped; it comes back when α̃ rises above τ
again. In the search α̃ of a left-out pathway still moves: through the softmax's shared normaliser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.base import Distiller
from edgekd.distill.features import FeatureCapture, Tap, probe_shapes, resolve_taps
from edgekd.distill.hypergradient import finite_difference_hypergradient
from edgekd.distill.options import DistProOptions
from edgekd.distill.pathways import (
    Pathway,
    PathwayTransform,
    allowed_pairs,
    hcl_loss,
    interpolate_process,
    process_weights,
)
from edgekd.distill.payload import Items, Mapping, Number, PayloadSchema, Tensor, Text
from edgekd.distill.plan import Artifact, Networks, Stage, check_payload
from edgekd.distill.registry import implements
from edgekd.errors import EdgekdError

PROCESS_FORMAT = "edgekd.distpro.process/1"
# What DistProSearch.artifact writes: the pathways' names, and α (softmax weights, so in [0, 1]) and α̃ of
# every pathway at each recorded search step, those steps increasing from 0 to the steps searched.
PROCESS_SCHEMA = PayloadSchema(
    "a DistPro process file",
    PROCESS_FORMAT,
    Mapping(
        {
            "pathways": Items(Text(), binds="pathways", unique=True),
            "searched_steps": Number(integer=True, minimum=1, binds="searched_steps"),
            "steps": Items(
                Number(integer=True, minimum=0, maximum="searched_steps"), binds="steps", order="increasing"
            ),
            "alpha": Tensor(("steps", "pathways"), minimum=0.0, maximum=1.0),
            "logits": Tensor(("steps", "pathways")),
        },
        optional={"bias": Number(nullable=True), "searched_on": Mapping()},
    ),
)


def check_process_options(payload, options: DistProOptions, where: str) -> None:
    """A process is replayed only by the weightings that use one."""
    if options.weights == "equal":
        raise EdgekdError(f"{where}: distill.distpro.weights 'equal' uses no process; remove the artifact")


def check_pathways(payload, pathways: list[str], where: str) -> None:
    """The process was searched over this recipe's pathways, by name and in order."""
    theirs = payload["pathways"]
    if theirs != pathways:
        raise EdgekdError(
            f"{where}: the process was searched over {len(theirs)} pathways ({_first_names(theirs)}), this "
            f"recipe has {len(pathways)} ({_first_names(pathways)}); the pathways must match by name"
        )


def _first_names(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def check_process_networks(payload, networks: Networks, options: DistProOptions, where: str) -> None:
    teacher_taps, student_taps = distpro_taps(networks.teacher, networks.student, options)
    pathways, _ = pathways_between(teacher_taps, student_taps, options)
    check_pathways(payload, [pathway.name for pathway in pathways], where)


PROCESS = Artifact(
    "process",
    "process.pt",
    "objective",
    "the searched distillation process: α of every pathway at the recorded search steps",
    schema=PROCESS_SCHEMA,
    check=check_process_options,
    fits=check_process_networks,
)

WHERE = "distill.distpro"


def distpro_taps(teacher, student, options: DistProOptions) -> tuple[list[Tap], list[Tap]]:
    """The teacher's and the student's taps pathways may join."""
    teacher_taps = resolve_taps(
        teacher, options.teacher_taps, preact=False, role="teacher", where=f"{WHERE}.teacher_taps"
    )
    student_taps = resolve_taps(
        student, options.student_taps, preact=False, role="student", where=f"{WHERE}.student_taps"
    )
    return teacher_taps, student_taps


def pathways_between(
    teacher_taps: list[Tap], student_taps: list[Tap], options: DistProOptions
) -> tuple[list[Pathway], list[tuple[int, int]]]:
    """Every pathway the options allow, and the (teacher tap, student tap) indices each joins."""
    pairs = allowed_pairs(len(teacher_taps), len(student_taps), options.pairs)
    if not pairs:
        raise EdgekdError(f"{WHERE}.pairs: no (teacher tap, student tap) pair is allowed")
    ends = [(i, j) for i, j in pairs for _ in range(options.variants)]
    pathways = [
        Pathway(teacher_taps[i].name, student_taps[j].name, variant)
        for i, j in pairs
        for variant in range(options.variants)
    ]
    return pathways, ends


class _DistProStage(Distiller):
    """The pathways between the chosen taps, their transforms and the weighted loss both stages train on."""

    where = WHERE

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        if teacher is None:
            raise EdgekdError(f"{self.where}: this method needs a teacher")
        if context.input_shape is None:
            raise EdgekdError(f"{self.where}: the input shape is needed to size the transforms")
        shape = tuple(context.input_shape)
        teacher_taps, student_taps = distpro_taps(teacher, student, options)
        teacher_shapes = probe_shapes(teacher, teacher_taps, shape, role="teacher", where=self.where)
        student_shapes = probe_shapes(student, student_taps, shape, role="student", where=self.where)
        self.pathways, self.ends = pathways_between(teacher_taps, student_taps, options)
        self.transforms = nn.ModuleList(
            PathwayTransform(student_shapes[j].channels, teacher_shapes[i].channels, teacher_shapes[i].size)
            for i, j in self.ends
        )
        # `active`: the pathways the stage trains at all (their transforms in its optimizer); `computed`: those
        # computed at the current step (the per-step clip), a subset of them
        self.active = [True] * len(self.pathways)
        self.computed = [True] * len(self.pathways)
        self.teacher_capture = FeatureCapture(teacher, teacher_taps)
        self.student_capture = FeatureCapture(student, student_taps)

    @torch.no_grad()
    def teacher_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher_capture.run(images)[1]

    def clipping_per_step(self) -> bool:
        return self.options.drop_below is not None and self.options.drop == "per_step"

    def clip(self, logits: torch.Tensor) -> None:
        """The paper's per-step clip: this step computes the pathways whose α̃ (``logits``) exceeds τ."""
        if self.clipping_per_step():
            self.computed = (logits > self.options.drop_below).tolist()

    def pathway_on(self, index: int) -> bool:
        return self.active[index] and self.computed[index]

    def losses(self, images, labels, teacher_maps, alpha) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The student's logits, its CE and Σ_p α_p·HCL_p over the pathways computed at this step (0 without
        ``alpha``)."""
        logits, student_maps = self.student_capture.run(images)
        ce = F.cross_entropy(logits, labels)
        if alpha is None:
            return logits, ce, ce.new_zeros(())
        weighted = ce.new_zeros(())
        for index, (transform, (i, j)) in enumerate(zip(self.transforms, self.ends, strict=True)):
            if self.pathway_on(index):
                weighted = weighted + alpha[index] * hcl_loss(transform(student_maps[j]), teacher_maps[i])
        return logits, ce, self.options.weight * weighted

    def forward(self, images, labels, teacher_maps=None, alpha=None) -> torch.Tensor:
        """L_train (CE + weighted pathways) with ``alpha``, L_val (CE alone) without: what the hyper-gradient
        differentiates (through functional calls on copies of the weights)."""
        _, ce, weighted = self.losses(images, labels, teacher_maps, alpha)
        return ce + weighted

    def trainable_parameters(self):
        dropped = {
            id(p) for index, t in enumerate(self.transforms) if not self.active[index] for p in t.parameters()
        }
        return [p for p in self.parameters() if p.requires_grad and id(p) not in dropped]

    def trained_names(self) -> list[str]:
        """The names (in this module) of what the stage's optimizer steps at this step: the hyper-gradient's
        weights w (a clipped pathway's transform gets no gradient, so the optimizer leaves it where it is)."""
        resting = {
            id(p)
            for index, t in enumerate(self.transforms)
            if not self.computed[index]
            for p in t.parameters()
        }
        trained = {id(p) for p in self.trainable_parameters() if id(p) not in resting}
        return [name for name, p in self.named_parameters() if id(p) in trained]

    def pathway_names(self) -> list[str]:
        return [pathway.name for pathway in self.pathways]


class DistProSearch(_DistProStage):
    """The search stage: θ on the search-train images, α̃ on the hyper-gradient of the search-val CE."""

    not_data_parallel = (
        "steps the pathway weights from each process's own hyper-gradient, so the processes would diverge"
    )

    reads_validation_images = True

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.alpha_logits = nn.Parameter(
            torch.full((len(self.pathways),), float(options.alpha_init)), requires_grad=False
        )
        self.alpha_optimizer = torch.optim.Adam(
            [self.alpha_logits], lr=options.alpha_lr, betas=tuple(options.alpha_betas)
        )
        self.recorded_steps: list[int] = []
        self.recorded_alpha: list[list[float]] = []
        self.recorded_logits: list[list[float]] = []
        self.steps_done = 0
        self.val_batches = None
        self.search_images: dict[str, int] = {}
        self._cached: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def alpha(self) -> torch.Tensor:
        return process_weights(self.alpha_logits.detach(), self.options.bias)

    def prepare_stage(self, data, device) -> None:
        self.data = data
        self.search_images = {"train_images": len(data.train), "val_images": len(data.val)}

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.val_batches = None  # each epoch starts the search-val images from the first batch (resumable)

    def next_val_batch(self, device):
        """The next search-val batch (fixed order, no augmentation), cycling through them."""
        batch = next(self.val_batches, None) if self.val_batches is not None else None
        if batch is None:
            self.val_batches = iter(self.data.eval_loader("val"))
            batch = next(self.val_batches)
        images, labels = batch
        return images.to(device), labels.to(device)

    def before_step(self, images, labels, optimizer) -> None:
        if self.steps_done % self.options.record_every == 0:
            self.record()
        maps = self.teacher_maps(images)
        self._cached = (images, maps)
        val_images, val_labels = self.next_val_batch(images.device)
        self.clip(self.alpha_logits.detach())
        alpha_grad = self.alpha_hypergradient((images, labels, maps), (val_images, val_labels), optimizer)
        # chain rule from α to α̃ through the (biased) softmax
        logits = self.alpha_logits.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(process_weights(logits, self.options.bias), logits, alpha_grad)
        self.alpha_logits.grad = grad
        self.alpha_optimizer.step()
        self.alpha_logits.grad = None
        self.steps_done += 1

    def alpha_hypergradient(self, train_args, val_args, optimizer) -> torch.Tensor:
        """∇_α L_val through the unrolled step. With every pathway clipped, L_train does not depend on α: the
        gradient is 0 (Adam's momentum still moves α̃, so pathways can come back)."""
        alpha = self.alpha()
        if not any(self.pathway_on(index) for index in range(len(self.pathways))):
            return torch.zeros_like(alpha)
        hyper = finite_difference_hypergradient(
            self, self.trained_names(), train_args, val_args, alpha, optimizer
        )
        return hyper.alpha_grad

    def record(self) -> None:
        self.recorded_steps.append(self.steps_done)
        self.recorded_alpha.append([round(float(a), 8) for a in self.alpha()])
        self.recorded_logits.append([round(float(a), 8) for a in self.alpha_logits.detach()])

    def forward_train(self, images, labels):
        self.clip(self.alpha_logits.detach())  # α̃ as the search just moved it: the step trains with it
        maps = (
            self._cached[1]
            if self._cached is not None and self._cached[0] is images
            else self.teacher_maps(images)
        )
        logits, ce, weighted = self.losses(images, labels, maps, self.alpha())
        return logits, {"ce": ce, "pathways": weighted}

    # α̃'s optimizer and the recorded process are checkpointed with the stage (state_dict's extra state), so
    # an interrupted search resumes where it stopped
    def get_extra_state(self):
        return {
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "steps": list(self.recorded_steps),
            "alpha": [list(row) for row in self.recorded_alpha],
            "logits": [list(row) for row in self.recorded_logits],
            "steps_done": self.steps_done,
            "search_images": dict(self.search_images),
        }

    def set_extra_state(self, state) -> None:
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.recorded_steps = list(state["steps"])
        self.recorded_alpha = [list(row) for row in state["alpha"]]
        self.recorded_logits = [list(row) for row in state["logits"]]
        self.steps_done = state["steps_done"]
        self.search_images = dict(state["search_images"])

    def artifact(self, name: str) -> dict:
        if not self.recorded_steps or self.recorded_steps[-1] != self.steps_done:
            self.record()  # the final α, after the last step
        return {
            "format": PROCESS_FORMAT,
            "pathways": self.pathway_names(),
            "bias": self.options.bias,
            "searched_steps": self.steps_done,
            "steps": list(self.recorded_steps),
            "alpha": torch.tensor(self.recorded_alpha),
            "logits": torch.tensor(self.recorded_logits),
            "searched_on": {
                "teacher": type(self.teacher).__name__,
                "student": type(self.student).__name__,
                **self.search_images,
            },
        }

    def stage_measures(self, data, device) -> dict[str, float]:
        # per search step: the hyper-gradient's 4 student forwards and 4 backward passes (θ-gradient, v, and
        # ∇α at w ± εv), one teacher forward, then the student's own step (1 forward, 1 backward)
        return {
            "search_steps": float(self.steps_done),
            "student_forwards": 5.0 * self.steps_done,
            "student_backwards": 5.0 * self.steps_done,
            "teacher_forwards": float(self.steps_done),
            "computed_pathway_share": self.computed_share(),
        }

    def computed_share(self) -> float:
        """The share of pathways the clip computed, over the recorded steps (the paper: ~40 % on CIFAR)."""
        if not self.clipping_per_step() or not self.recorded_logits:
            return 1.0
        logits = torch.tensor(self.recorded_logits)
        return float((logits > self.options.drop_below).float().mean())

    def stage_notes(self) -> str:
        final = self.alpha()
        top = sorted(zip(final.tolist(), self.pathway_names(), strict=True), reverse=True)[:3]
        listed = ", ".join(f"{name} {value:.3f}" for value, name in top)
        return f"searched {len(self.pathways)} pathways; final α, largest: {listed}"


@implements("distpro")
class DistProReplay(_DistProStage):
    """A fresh student trained with the pathway weights the options name: the searched process replayed over
    the run, its final α, or 1/N each."""

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.process = None
        self.replay = None  # the process (α and α̃) over this run's steps, built at the first step
        self.current = torch.full((len(self.pathways),), 1.0 / len(self.pathways))
        # a replayed process clipped per step leaves some trained transforms without a gradient in some steps
        self.unused_parameters = options.weights == "process" and self.clipping_per_step()

    def use_artifact(self, name: str, payload: dict) -> None:
        where = f"distill.artifacts.distpro.{name}"
        check_payload(PROCESS, payload, self.options, where)
        check_pathways(payload, self.pathway_names(), where)
        alpha = torch.as_tensor(payload["alpha"], dtype=torch.float32)
        logits = torch.as_tensor(payload["logits"], dtype=torch.float32)
        if self.options.drop_below is not None:
            self.active = self.ever_computed(logits)
        if self.options.weights == "final":
            self.current = alpha[-1]
            self.clip(logits[-1])  # the last searched α̃ decides the clip of every step
        else:
            self.process = (payload["steps"], alpha, logits, payload["searched_steps"])

    def ever_computed(self, logits: torch.Tensor) -> list[bool]:
        """The pathways some step of the replay computes (the others' transforms stay out of the optimizer):
        per step, those whose replayed α̃ exceeds τ somewhere (the last searched α̃ alone for 'final'; the
        interpolation never rises above both its ends); whole run, those whose α̃ exceeded τ in the search."""
        if self.clipping_per_step() and self.options.weights == "final":
            logits = logits[-1:]
        return (logits > self.options.drop_below).any(0).tolist()

    def on_step_start(self, step: int, steps: int) -> None:
        if self.options.weights == "process":
            if self.replay is None:
                recorded, alpha, logits, searched = self.process
                self.replay = (
                    interpolate_process(recorded, alpha, steps, searched),
                    interpolate_process(recorded, logits, steps, searched),
                )
            weights_at, logits_at = self.replay
            self.current = weights_at(step)
            self.clip(logits_at(step))

    def forward_train(self, images, labels):
        logits, ce, weighted = self.losses(
            images, labels, self.teacher_maps(images), self.current.to(images.device)
        )
        return logits, {"ce": ce, "pathways": weighted}

    def stage_notes(self) -> str:
        kept = sum(self.active)
        what = {
            "process": "the searched process, interpolated over the run",
            "final": "the last searched α, constant",
            "equal": f"1/{len(self.pathways)} each",
        }[self.options.weights]
        return f"pathway weights: {what}; {kept} of {len(self.pathways)} pathways trained"


def search_epochs(options: DistProOptions, epochs: int) -> int:
    return options.search_epochs if options.search_epochs is not None else max(1, epochs // 6)


def search_schedule(epochs: int) -> dict:
    """The paper's search schedule: the student's lr ×0.1 after each quarter of the search (10, 20 and 30 of
    its 40 epochs), fewer milestones where the search is too short to have three."""
    milestones = sorted({epochs * quarter // 4 for quarter in (1, 2, 3)} - {0})
    return {"name": "multistep", "milestones": milestones, "gamma": 0.1}


def distpro_plan(options: DistProOptions, train) -> list[Stage]:
    searched = options.weights != "equal"
    replay = Stage(
        "replay",
        DistProReplay,
        "a fresh student, CE + Σ α_t·HCL over the pathways, θ only",
        None,
        train.epochs,
        fresh_student=searched,
        consumes=(PROCESS,) if searched else (),
    )
    if not searched:
        return [replay]
    epochs = search_epochs(options, train.epochs)
    search = Stage(
        "search",
        DistProSearch,
        "student + transforms on 80 % of the training images; α by hyper-gradient on the other 20 %",
        "last",
        epochs,
        produces=(PROCESS,),
        view="holdout",
        schedule=search_schedule(epochs),
    )
    return [search, replay]
