"""A teacher given as a file (`teacher.file`): a `torch.export` program (.pt2) or an ONNX model (.onnx),
run as a frozen nn.Module that returns logits. No Python class of the teacher is needed, and none is run.

How each format is loaded, and why that runs none of the file's code:

* ``.onnx``: ONNX Runtime parses the protobuf (a graph of standard operators and their weights; it has no
  place for Python code) into a CPU session. No custom-operator library is registered, so a node of an
  unknown domain fails the load. A model whose weights live in external data files is refused: only the
  one file named by the recipe is read.
* ``.pt2``: ``torch.export.load`` is *not* safe on its own for a file from elsewhere: it unpickles
  (``weights_only=False``) any weight, constant or sample input stored as a pickle, evaluates symbolic-shape
  strings with sympy, and turns the program's guards into Python source. So edgekd reads the archive into
  memory first and checks it before torch sees it (`check_exported_archive`): every weight and constant is
  a raw tensor (no pickle, no custom object), the sample inputs load with ``torch.load(weights_only=True)``
  (torch tries that first, so its pickle fallback is never reached), there are no guards, every shape
  expression is a plain symbol, and every graph node calls an ATen/prims operator or a harmless `operator`
  function. Only then are the same bytes handed to ``torch.export.load``.

What a file does not expose is a module tree: methods that read the teacher's features, embedding or
weights cannot use it (the catalog's `logits_only` says which methods can).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgekdError

FILE_FORMATS = {".pt2": "torch.export program", ".onnx": "ONNX model (ONNX Runtime, CPU)"}

# Graph targets a teacher's program may call: tensor operators, and the `operator` functions torch.export
# writes for indexing and shape arithmetic. Anything else (e.g. "torch.os.system") is refused.
SAFE_TARGET_PREFIXES = ("torch.ops.aten.", "torch.ops.prims.")
SAFE_OPERATOR_TARGETS = frozenset(
    f"_operator.{name}"
    for name in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "eq", "ne", "lt", "le")
)
# A symbolic dimension as torch.export writes it (sympy source, evaluated on load): a named symbol with
# boolean assumptions, integers and arithmetic only. No attribute access, call or string beyond the name.
_SYMBOL = r"Symbol\('[a-z]+[0-9]*', (?:[a-z]+=(?:True|False)(?:, )?)*\)"
SAFE_EXPRESSION = re.compile(rf"(?:{_SYMBOL}|[0-9]+|[-+*/() ])*")


class FileTeacher(nn.Module):
    """A frozen teacher read from a file: `forward` returns its logits. `input_shape` (C, H, W) and
    `num_classes` are read from the file; `weight_count` is the number of weights it stores."""

    def __init__(self, path: Path, input_shape: tuple[int, int, int], num_classes: int, weight_count: int):
        super().__init__()
        self.path = path
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.weight_count = weight_count

    @property
    def format_name(self) -> str:
        return FILE_FORMATS[self.path.suffix]

    def describe(self) -> str:
        return f"file '{self.path.name}' ({self.format_name})"


class ExportedProgramTeacher(FileTeacher):
    """A `torch.export` program, run as the graph module it unlifts to (on the run's device)."""

    def __init__(self, path: Path, program: torch.export.ExportedProgram):
        graph_input, logits = program_io_shapes(program)
        module = program.module()
        super().__init__(path, graph_input, logits, sum(p.numel() for p in module.parameters()))
        self.program = module.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.program(images)

    def train(self, mode: bool = True) -> ExportedProgramTeacher:
        # The program was exported in eval mode (frozen BatchNorm statistics); an unlifted graph module
        # refuses train(), and a teacher is never trained.
        return self


class OnnxTeacher(FileTeacher):
    """An ONNX model run by ONNX Runtime on the CPU: images go in as float32 numpy, logits come back on
    the images' device. There is no gradient through it (a teacher is frozen)."""

    def __init__(
        self, path: Path, session: Any, input_shape: tuple[int, int, int], num_classes: int, weights: int
    ):
        super().__init__(path, input_shape, num_classes, weights)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.detach().to("cpu", torch.float32).numpy()
        (logits,) = self.session.run(None, {self.input_name: batch})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(images.device)


# --------------------------------------------------------------------------------------------- loading
def load_teacher_file(path: Path, field: str = "teacher.file") -> FileTeacher:
    """The teacher in `path` (.pt2 or .onnx), checked safe to load; bad input is a one-line EdgekdError."""
    path = Path(path)
    if path.suffix not in FILE_FORMATS:
        raise EdgekdError(
            f"{field}: '{path}' has the suffix '{path.suffix}'; allowed: .pt2 (torch.export.save) or .onnx"
        )
    if not path.is_file():
        raise EdgekdError(f"{field}: '{path}' does not exist; allowed: a .pt2 or .onnx file")
    loader = load_exported_program if path.suffix == ".pt2" else load_onnx_model
    return loader(path, field)


def load_exported_program(path: Path, field: str) -> ExportedProgramTeacher:
    data = path.read_bytes()  # read once: the bytes checked are the bytes torch loads
    check_exported_archive(data, path, field)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise EdgekdError(
            f"{field}: '{path}' cannot be loaded as a torch.export program ({one_line(exc)})"
        ) from None
    try:
        return ExportedProgramTeacher(path, program)
    except ValueError as exc:
        raise EdgekdError(f"{field}: '{path}': {exc}") from None


def check_exported_archive(data: bytes, path: Path, field: str) -> None:
    """Refuse a .pt2 archive holding anything torch.export.load would unpickle or evaluate (module doc)."""
    where = f"{field}: '{path}'"
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise EdgekdError(f"{where} is not a torch.export archive (a zip file written by torch.export.save)")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        models = [name for name in names if re.fullmatch(r"[^/]+/models/[^/]+\.json", name)]
        if len(models) != 1:
            raise EdgekdError(
                f"{where} holds {len(models)} programs; allowed: one (torch.export.save of one program)"
            )
        root, model = models[0].split("/")[0], Path(models[0]).stem
        for kind in ("weights", "constants"):
            config = read_json(archive, f"{root}/data/{kind}/{model}_{kind}_config.json", where)
            check_payloads(config, kind, where)
        check_sample_inputs(archive.read(f"{root}/data/sample_inputs/{model}.pt"), where)
        check_program(read_json(archive, models[0], where), where)


def read_json(archive: zipfile.ZipFile, name: str, where: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (KeyError, ValueError):
        raise EdgekdError(f"{where} lacks a readable '{name}' (not written by torch.export.save)") from None


def check_payloads(config: Any, kind: str, where: str) -> None:
    """Every weight/constant is stored as raw tensor bytes: a pickled one would be unpickled with code."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise EdgekdError(f"{where}: its {kind} table is not torch.export's")
    for name, entry in entries.items():
        pickled = entry.get("use_pickle") is not False if isinstance(entry, dict) else True
        if pickled or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_")):
            raise EdgekdError(
                f"{where}: {kind[:-1]} '{name}' is stored as a pickle or a Python object, which could run code "
                "when loaded; refused (allowed: plain tensors, as torch.export.save writes them)"
            )


def check_sample_inputs(data: bytes, where: str) -> None:
    """torch loads the sample inputs weights_only first and unpickles them freely when that fails: they must
    load weights_only here, so torch never gets to its fallback."""
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        raise EdgekdError(
            f"{where}: its sample inputs hold Python objects besides tensors, which could run code when "
            "unpickled; refused"
        ) from None


def check_program(program: Any, where: str) -> None:
    """No guard code (turned into Python source), only plain symbols in shape expressions (evaluated by
    sympy), and only operator calls from the allowed set in the graph."""
    if not isinstance(program, dict) or program.get("guards_code"):
        raise EdgekdError(f"{where}: its program carries guard code, which is run as Python; refused")
    for expression in values_of_key(program, "expr_str"):
        if not isinstance(expression, str) or not SAFE_EXPRESSION.fullmatch(expression):
            raise EdgekdError(
                f"{where}: a shape expression {str(expression)[:60]!r} is not a plain symbol; refused"
            )
    graph = program.get("graph_module", {}).get("graph", {})
    for node in graph.get("nodes", []):
        target = node.get("target") if isinstance(node, dict) else None
        if not isinstance(target, str) or not (
            target.startswith(SAFE_TARGET_PREFIXES) or target in SAFE_OPERATOR_TARGETS
        ):
            raise EdgekdError(
                f"{where}: its graph calls {str(target)[:60]!r}; allowed: ATen/prims operators only"
            )
    if graph.get("custom_obj_values"):
        raise EdgekdError(f"{where}: its graph holds custom Python objects; refused")


def values_of_key(tree: Any, key: str):
    """Every value stored under `key` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key:
                yield value
            yield from values_of_key(value, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from values_of_key(item, key)


def program_io_shapes(program: torch.export.ExportedProgram) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) of the program's one image input and its number of logits, from the graph's shapes."""
    inputs = [
        node for node in program.graph.nodes if node.op == "placeholder" and node.name in user_inputs(program)
    ]
    output = next(node for node in program.graph.nodes if node.op == "output").args[0]
    if len(inputs) != 1 or len(output) != 1:
        raise ValueError(
            f"it takes {len(inputs)} inputs and gives {len(output)} outputs; allowed: one of each"
        )
    return static_image_shape(inputs[0].meta["val"].shape), static_classes(output[0].meta["val"].shape)


def user_inputs(program: torch.export.ExportedProgram) -> set[str]:
    return set(program.graph_signature.user_inputs)


def static_image_shape(shape) -> tuple[int, int, int]:
    dims = list(shape)[1:]
    if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
        raise ValueError(f"its input has shape {list(shape)}; allowed: N x C x H x W with fixed C, H, W")
    return int(dims[0]), int(dims[1]), int(dims[2])


def static_classes(shape) -> int:
    dims = list(shape)
    if len(dims) != 2 or not isinstance(dims[1], int):
        raise ValueError(f"its output has shape {dims}; allowed: N x K logits with a fixed K")
    return int(dims[1])


def load_onnx_model(path: Path, field: str) -> OnnxTeacher:
    import onnx
    import onnxruntime

    where = f"{field}: '{path}'"
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        raise EdgekdError(f"{where} is not an ONNX model (its protobuf does not parse)") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise EdgekdError(f"{where} keeps weights in external data files; allowed: one self-contained file")
    try:
        session = onnxruntime.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EdgekdError(f"{where} cannot be loaded by ONNX Runtime ({one_line(exc)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    try:
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"it takes {len(inputs)} inputs and gives {len(outputs)} outputs; allowed: one of each"
            )
        shape, classes = static_image_shape(inputs[0].shape), static_classes(outputs[0].shape)
    except ValueError as exc:
        raise EdgekdError(f"{where}: {exc}") from None
    weights = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    return OnnxTeacher(path, session, shape, classes, weights)


def check_teacher_fits(
    teacher: FileTeacher, num_classes: int, image_shape: tuple[int, int, int], field: str
) -> None:
    """The file's input is the data's images and its logits are the teacher's classes."""
    if tuple(teacher.input_shape) != tuple(image_shape):
        raise EdgekdError(
            f"{field}: '{teacher.path}' takes images of {fmt_shape(teacher.input_shape)}; the data's are "
            f"{fmt_shape(image_shape)} (allowed: a teacher exported for the recipe's data)"
        )
    if teacher.num_classes != num_classes:
        raise EdgekdError(
            f"{field}: '{teacher.path}' gives {teacher.num_classes} logits; the teacher's classes are "
            f"{num_classes} (teacher.classes, else every class of the data); allowed: one logit per class"
        )


def fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
