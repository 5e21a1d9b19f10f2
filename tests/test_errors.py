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
