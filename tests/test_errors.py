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
