"""The README stays true: its DSL reference matches the specs, and every example parses."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from flowrt.dsl import parse_text
from flowrt.dsl.reference import END, START, render

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

RECEIVER = """    receiver mail {name} {{
        address "smtp.example.com"
        protection smtps
        from "a@example.com"
        to "b@example.com"
    }}
"""
SENDER = """    sender mail {
        protocol imap
        address "imap.example.com"
        protection imaps
        auth plain credential "in"
    }
"""


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README, re.S)


def test_reference_section_matches_the_specs() -> None:
    section = README[README.index(START) : README.index(END) + len(END)]
    assert section == render(), "run: python -m flowrt.dsl.reference --update README.md"


@pytest.mark.parametrize("example", blocks("flow"))
def test_flow_examples_are_valid(example: str) -> None:
    result = parse_text(example, "README.md")
    assert result.ok and not result.diagnostics, result.render()


@pytest.mark.parametrize("fragment", blocks("flow-fragment"))
def test_block_examples_are_valid(fragment: str) -> None:
    body = "\n".join("    " + line for line in fragment.splitlines())
    parts = [body]
    if not fragment.startswith("sender"):
        parts.append(SENDER)
    if not fragment.startswith("receiver"):
        parts.append(RECEIVER.format(name="out"))
    result = parse_text("flow example {\n" + "\n".join(parts) + "\n}\n", "README.md")
    assert result.ok and not result.diagnostics, result.render()


@pytest.mark.parametrize("step", blocks("flow-steps")[0].splitlines())
def test_step_examples_are_valid(step: str) -> None:
    text = (
        f"flow example {{\n{SENDER}    pipeline {{\n        {step}\n    }}\n"
        f"{RECEIVER.format(name='oncall')}}}\n"
    )
    result = parse_text(text, "README.md")
    assert result.ok and not result.diagnostics, result.render()


def test_setup_commands_exist_and_ci_runs_the_test_command() -> None:
    setup = README[README.index("## Set-up") : README.index("## Commands")]
    commands = [c.strip() for c in re.findall(r"```sh\n(.*?)```", setup, re.S)]
    assert commands == ["scripts/demo", "scripts/test"]
    for command in commands:
        assert os.access(ROOT / command, os.X_OK), command
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_expression_list_is_the_one_the_validator_gives() -> None:
    from flowrt.dsl.template import REFERENCE_HELP

    assert REFERENCE_HELP in README
