"""DEPLOY.md: how to feed and run each artifact of a run, written from the artifacts' own metadata.

Per artifact: its preprocessing (read back from the file, as a deployment would read it), a short inference
snippet for its runtime that needs numpy and that runtime only (no edgekd), and the runtime's own benchmark
command. The snippets are run as written by tests/test_deploy_guide.py, so they must stay self-contained.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.exporters import ModelIO, read_metadata
from edgekd.fileio import write_text
from edgekd.formats import FORMATS
from edgekd.layout import RunLayout
from edgekd.records import ArtifactRecord, ShippedStudent

# The file a snippet reads its example image from: an H×W×C uint8 array (edgekd's own pixel convention).
EXAMPLE_IMAGE = "image.npy"

SNIPPET_HEAD = """\
import numpy as np
{runtime_import}

image = np.load("{example}")  # H×W×C uint8 pixels, {colour}, already resized to {height}×{width}
mean = np.array({mean}, dtype=np.float32)
std = np.array({std}, dtype=np.float32)
batch = ((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]  # 1×C×H×W
class_names = {class_names}
"""

RUNTIME_SNIPPETS = {
    "onnx": (
        "import onnxruntime as ort",
        """\
session = ort.InferenceSession("{path}", providers=["CPUExecutionProvider"])
logits = session.run(["{output_name}"], {{"{input_name}": batch}})[0]
print(class_names[int(logits[0].argmax())])
""",
    ),
    "openvino": (
        "import openvino as ov",
        """\
compiled = ov.Core().compile_model("{path}", "CPU")
logits = compiled(batch)[compiled.output(0)]
print(class_names[int(logits[0].argmax())])
""",
    ),
    # An INT8 .tflite takes and returns int8 tensors: quantize the batch and dequantize the logits with
    # each tensor's scale and zero point (a float model's are (0.0, 0) and its dtypes float32).
    "litert": (
        "from ai_edge_litert.interpreter import Interpreter",
        """\
interpreter = Interpreter(model_path="{path}", num_threads=1)  # XNNPACK on the CPU
interpreter.allocate_tensors()
given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
if given["dtype"] == np.int8:
    scale, zero_point = given["quantization"]
    batch = np.clip(np.round(batch / scale) + zero_point, -128, 127).astype(np.int8)
interpreter.set_tensor(given["index"], batch.astype(given["dtype"]))
interpreter.invoke()
logits = interpreter.get_tensor(taken["index"]).astype(np.float32)
if taken["dtype"] == np.int8:
    scale, zero_point = taken["quantization"]
    logits = (logits - zero_point) * scale
print(class_names[int(logits[0].argmax())])
""",
    ),
    # ExecuTorch's Python runtime takes and returns torch tensors (it links libtorch); an INT8 program keeps
    # float input and output. One call takes at most 15 images: a larger batch goes in chunks.
    "executorch": (
        "import torch\nfrom executorch.runtime import Runtime",
        """\
forward = Runtime.get().load_program("{path}").load_method("forward")  # XNNPACK on the CPU
logits = forward.execute([torch.from_numpy(np.ascontiguousarray(batch))])[0].numpy()
print(class_names[int(logits[0].argmax())])
""",
    ),
}


def write_deploy_guide(
    layout: RunLayout, artifacts: list[ArtifactRecord], shipped: ShippedStudent | None = None
) -> Path:
    """Write DEPLOY.md into the run folder for every built artifact file; returns its path."""
    sections = [_intro() + _shipped_text(shipped)]
    several = len({record.model for record in artifacts}) > 1
    for record in artifacts:
        if record.built and record.path is not None:
            sections.append(artifact_section(layout.root, record, several))
    return write_text(layout.deploy_md, "\n".join(sections))


def _shipped_text(shipped: ShippedStudent | None) -> str:
    if shipped is None:
        return ""
    others = [name for name in shipped.exported if name != shipped.model]
    also = (
        f" The other students' artifacts ({', '.join(others)}) follow it, for comparison." if others else ""
    )
    return f"\nThe student to ship: `{shipped.model}` ({shipped.reason}).{also}\n"


def _intro() -> str:
    return (
        "# Deploying this run's artifacts\n\n"
        "Each artifact below is a classifier: it takes an N×C×H×W float32 batch and returns N×K logits. "
        "The preprocessing is read from the artifact's own metadata. Paths are relative to this folder. "
        f"The snippets need numpy and the runtime only; `{EXAMPLE_IMAGE}` stands for your image "
        "(an H×W×C uint8 array). `edgekd bench <artifact>` times any of them with the base install "
        "(`pip install edgekd`, no PyTorch).\n"
    )


def artifact_section(root: Path, record: ArtifactRecord, several: bool = False) -> str:
    """The artifact's section; `several`: the run exported more than one student, so say whose it is."""
    path = Path(record.path)
    shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    student = f"{record.model}: " if several and record.model else ""
    title = f"## {shown} ({student}{record.format} {record.precision})\n"
    if record.status != "ok":  # built but outside its parity tolerance
        title += f"\n**Not to be shipped: {record.status}** ({(record.parity or {}).get('failure', '')}).\n"
    entry = FORMATS.get(record.format)
    if entry is None or entry.metadata_reader is None:  # the catalog says which formats hold metadata
        return (
            title + f"\nNo metadata is stored in this file format.\n\n{benchmark_block(record, shown, None)}"
        )
    io = ModelIO.from_metadata(read_metadata(path), f"artifact '{path}'")
    parts = [title, preprocessing_text(io)]
    if record.format in RUNTIME_SNIPPETS:
        parts.append(f"```python\n{inference_snippet(record.format, shown, io)}```\n")
    parts.append(benchmark_block(record, shown, io))
    return "\n".join(parts)


def colour_order(channels: int) -> str:
    # edgekd's loaders decode images with PIL as RGB (or L for one channel); nothing reorders them.
    return {1: "grayscale", 3: "RGB order"}.get(channels, f"{channels} channels")


def preprocessing_text(io: ModelIO) -> str:
    return (
        f"- input `{io.input_name}`: N×{io.channels}×{io.height}×{io.width} float32 (NCHW), "
        f"{colour_order(io.channels)}\n"
        "- pixel scale: 8-bit pixels divided by 255 (values in [0, 1]), then per channel (x - mean) / std\n"
        f"- mean {list(io.mean)}, std {list(io.std)}\n"
        f"- output `{io.output_name}`: N×{io.num_classes} logits; classes in order: "
        f"{', '.join(io.class_names)}\n"
    )


def inference_snippet(fmt: str, path: str, io: ModelIO) -> str:
    runtime_import, body = RUNTIME_SNIPPETS[fmt]
    head = SNIPPET_HEAD.format(
        runtime_import=runtime_import,
        example=EXAMPLE_IMAGE,
        colour=colour_order(io.channels),
        height=io.height,
        width=io.width,
        mean=list(io.mean),
        std=list(io.std),
        class_names=list(io.class_names),
    )
    return head + body.format(path=path, input_name=io.input_name, output_name=io.output_name)


def benchmark_block(record: ArtifactRecord, path: str, io: ModelIO | None) -> str:
    """The runtime's own benchmark tool, at batch 1, beside edgekd's."""
    lines = [f"edgekd bench {path}"]
    shape = None if io is None else "x".join(str(size) for size in io.batch_shape(1))
    if record.format == "openvino" and io is not None:
        lines.append(
            f"benchmark_app -m {path} -d CPU -shape [{shape.replace('x', ',')}]  # ships with openvino"
        )
    elif record.format == "tensorrt":
        input_name = "images" if io is None else io.input_name
        lines.append(f"trtexec --loadEngine={path} --shapes={input_name}:{shape or '1xCxHxW'}")
    elif record.format == "litert":
        lines.append(
            f"python -m ai_edge_litert.tools.benchmark_litert_model --model {path} --num_threads 1 "
            "--num_runs 100  # ships with ai-edge-litert"
        )
    elif record.format == "executorch":
        # No benchmark binary ships in the executorch wheel: its executor_runner is built from source.
        lines[0] += "  # ExecuTorch's own executor_runner must be built from the executorch sources"
    elif record.format == "onnx" and io is not None:
        lines.append(f"onnxruntime_perf_test -e cpu -I -r 100 {path}  # from an ONNX Runtime source build")
    return "Benchmark on the device:\n\n```bash\n" + "\n".join(lines) + "\n```\n"
