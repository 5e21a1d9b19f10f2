"""Error text is data: it keeps its brackets and case, and names the recipe field it is about."""

from __future__ import annotations

import pytest


def test_rejected_pattern_keeps_its_brackets_and_case(cli, write_recipe):
    result = cli("validate", write_recipe(), "--schema-only", "--set", "name=a b")
    assert result.exit_code == 2
    assert "'^[A-Za-z0-9][A-Za-z0-9_.-]*$'" in result.output
    assert result.output.strip().count("\n") == 0


def test_a_path_with_markup_is_printed_as_it_is(cli, tmp_path):
    missing = tmp_path / "[red]recipe[/].yaml"
    result = cli("validate", missing)
    assert result.exit_code == 2 and "[red]recipe[/].yaml" in result.output


@pytest.mark.parametrize("field", ["teacher.model", "student.model"])
def test_unknown_model_names_its_field(cli, write_recipe, field):
    student = (
        {"model": "resnet8"}
        if field == "student.model"
        else {"family": "resnet", "budget": {"params": "20k"}}
    )
    path = write_recipe(student=student)
    result = cli("validate", path, "--set", f"{field}=alexnetz")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {field}: model 'alexnetz' is unknown"), result.output


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        import os

        return (os.getenv, ("EDGEKD_NEVER_SET",))  # harmless, but code all the same


def _checkpoints(tmp_path):
    import torch

    files = {}
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "text.pt"
    files["text"].write_text("not a checkpoint\n")
    files["code"] = tmp_path / "code.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCodeWhenUnpickled()}, files["code"])
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.zeros(1000)}, good)
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(good.read_bytes()[:300])
    return files


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("empty", "the file is empty"),
        ("text", "not a PyTorch checkpoint"),
        ("code", "could run code when unpickled; refused"),
        ("truncated", "damaged or truncated"),
    ],
)
def test_refused_checkpoints_say_why_and_never_advise_weights_only_false(tmp_path, kind, words):
    from edgekd.errors import EdgekdError
    from edgekd.train.checkpoint import load_checkpoint

    path = _checkpoints(tmp_path)[kind]
    with pytest.raises(EdgekdError) as info:
        load_checkpoint(path, "teacher.checkpoint")
    message = str(info.value)
    assert message.startswith(f"teacher.checkpoint: '{path}' cannot be loaded: ") and words in message
    assert "weights_only" not in message and "\n" not in message


# ------------------------------------------------------------------------------------------ recipe limits
def _recipe_text(tmp_path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "teacher: {model: resnet8, train: {epochs: 1}}\nstudent: {model: resnet8}\n"


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join([*lines, f"name: *a{levels - 1}", BASE])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: a\nname: b\n" + BASE, "line 2: key 'name' appears twice in one mapping (first at line 1)"),
        (_bomb(), "expands to more than 100,000 values"),
        ("name: " + "[" * 3000 + "]" * 3000 + "\n" + BASE, "nested too deeply"),
        ("name: x\n" + "#" * (2 << 20) + "\n" + BASE, "allowed: at most 1,048,576"),
    ],
    ids=["duplicate-key", "alias-bomb", "deep-nesting", "huge-file"],
)
def test_recipe_files_beyond_the_limits_are_one_line_errors(cli, tmp_path, text, words):
    result = cli("validate", _recipe_text(tmp_path, text), "--schema-only")
    assert result.exit_code == 2 and words in result.output
    assert result.output.strip().count("\n") == 0 and len(result.output) < 300


def test_binary_recipe_is_refused_without_a_traceback(cli, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: \xff\xfe\x00 binary\n")
    result = cli("validate", path, "--schema-only")
    assert result.exit_code == 2 and "not UTF-8 text (byte 0xff at offset 6)" in result.output


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.optimizer.lr='0.1'", "train.optimizer.lr"),  # a string is not a number
        ("data.batch_size=yes", "data.batch_size"),  # YAML's yes is a flag, not 1
        ("train.epochs=1000000000000", "train.epochs"),
        ("data.batch_size=1000000000", "data.batch_size"),
        ("data.image_size=1000000", "data.image_size"),
        ("train.optimizer.lr=.inf", "train.optimizer.lr"),
        ("benchmark.min_time_s=.inf", "benchmark.min_time_s"),
        ("data.classes=[" + ",".join(["9"] * 5000) + "]", "data.classes"),
    ],
)
def test_lax_types_and_absurd_values_are_refused_briefly(cli, write_recipe, override, field):
    result = cli("validate", write_recipe(), "--schema-only", "--set", override)
    assert result.exit_code == 2 and result.output.startswith(f"error: {field}: "), result.output
    assert len(result.output) < 300  # the rejected value is shown cut short


# ------------------------------------------------------------------------------------------ artifacts
@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("empty.onnx", b"", "'empty.onnx' is empty (0 bytes)"),
        ("text.onnx", b"this is not a protobuf", "cannot"),
        ("empty.xml", b"", "'empty.xml' is empty (0 bytes)"),
        ("text.xml", b"random text, not XML\n", "'text.xml' is not an OpenVINO IR"),
        ("lonely.xml", b'<?xml version="1.0"?>\n<net name="m" version="11"></net>\n', "'lonely.bin' beside"),
    ],
)
@pytest.mark.parametrize("shape", [[], ["--shape", "1,8,8"]], ids=["metadata", "shape"])
def test_artifact_errors_say_what_is_wrong_with_the_file(
    cli_processes, tmp_path, name, content, words, shape
):
    """In a real process: OpenVINO's native parsers print to the process's stderr, which CliRunner cannot see."""
    (tmp_path / name).write_bytes(content)
    result = cli_processes.run(["bench", name, *shape], tmp_path)
    assert result["exit"] == 2, result["stderr"]
    assert result["stderr"].startswith("error: ") and result["stderr"].count("\n") == 1, result["stderr"]
    assert words in result["stderr"] and name in result["stderr"]


@pytest.mark.parametrize("value", ["inf", "nan", "1e9"])
def test_bench_seconds_must_be_finite_and_bounded(cli, tmp_path, value):
    result = cli("bench", tmp_path / "m.onnx", "--min-time-s", value)
    assert result.exit_code == 2 and "--min-time-s" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ label relation
@pytest.mark.parametrize(
    ("distill", "field"),
    [
        ({"method": "kd"}, "distill.method"),
        (
            {"method": "scratch", "baselines": ["finetune"], "finetune": {"head": "restricted"}},
            "distill.baselines.0",
        ),
    ],
)
def test_a_method_that_needs_the_teachers_classes_refuses_a_disjoint_pair(cli, write_recipe, distill, field):
    path = write_recipe(distill=distill)
    result = cli(
        "validate", path, "--set", "teacher.classes=[0,1,2,3,4]", "--set", "data.classes=[5,6,7,8,9]"
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: {field}: ") and "label relation 'disjoint'" in result.output


def test_a_partial_overlap_of_classes_is_refused(cli, write_recipe):
    path = write_recipe(distill={"method": "scratch"})
    result = cli("validate", path, "--set", "teacher.classes=[0,1,2]", "--set", "data.classes=[2,3]")
    assert result.exit_code == 2 and "data.classes" in result.output and "share [2]" in result.output
