"""``script "module:function"``: imported at load from the flow's folder, errors in the chain."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowrt.cli.main import cli
from flowrt.dsl import load_flow
from flowrt.engine.pipeline import compile_flow
from flowrt.errors import FlowError
from flowrt.mpl.model import MplStatus, StepStatus
from flowrt.mpl.recorder import MplRecorder
from flowrt.mpl.store import MplStore
from tests.engine.conftest import Harness, flow_text, message

TRANSFORMS = """
from flowrt.errors import ProcessingError


def enrich(exchange):
    exchange.properties["customer"] = exchange.headers.get("From").upper()
    exchange.headers.set("X-Enriched", "yes")


def explode(exchange):
    try:
        int("forty-two")
    except ValueError as exc:
        raise LookupError("no customer for " + exchange.headers.get("Subject")) from exc


def busy(exchange):
    raise ProcessingError("the CRM is busy", retryable=True, hint="try again later")
"""


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    (tmp_path / "transforms.py").write_text(TRANSFORMS, encoding="utf-8")
    return tmp_path


async def test_a_script_from_the_flows_folder_changes_the_exchange(
    scripts: Path, harness: Callable[..., Harness]
) -> None:
    h = harness(flow_text('script "transforms:enrich"'))
    result, entry = await h.run()
    assert result.ok
    ((_, out),) = h.sent
    assert out.properties["customer"] == "ALICE@EXAMPLE.COM"
    assert out.headers.get("X-Enriched") == "yes"
    assert entry.runs[0].steps[0].step_id == "script transforms:enrich"


async def test_a_raising_script_is_escalated_with_its_exception_in_the_chain(
    scripts: Path, harness: Callable[..., Harness]
) -> None:
    h = harness(flow_text('script "transforms:explode"'))
    result, entry = await h.run()
    line = h.line("script")
    assert result.status is MplStatus.ESCALATED and h.sent == []
    assert entry.error is not None
    assert [(lv.type, lv.message) for lv in entry.error.levels] == [
        ("StepException", f"script transforms:explode failed (line {line})"),
        ("LookupError", "no customer for Invoice 42"),
        ("ValueError", "invalid literal for int() with base 10: 'forty-two'"),
    ]
    assert entry.error.failed_step == f"script transforms:explode (line {line})"
    (step,) = entry.runs[0].steps
    assert step.status is StepStatus.FAILED
    assert step.error == "LookupError: no customer for Invoice 42"


async def test_a_script_error_is_not_retried_unless_it_says_so(
    scripts: Path, harness: Callable[..., Harness]
) -> None:
    h = harness(flow_text('script "transforms:explode"', retry="3 every 30s"))
    result, entry = await h.run()
    assert result.status is MplStatus.FAILED and len(entry.runs) == 1 and h.waits == []

    h = harness(flow_text('script "transforms:busy"', retry="2 every 30s"))
    result, entry = await h.run()
    assert result.status is MplStatus.FAILED and len(entry.runs) == 3 and h.waits == [30, 30]
    assert entry.error is not None and entry.error.hint == "try again later"


def test_a_missing_module_or_function_is_a_load_error_naming_the_line(
    scripts: Path,
) -> None:
    for ref, says in (
        ("nowhere:enrich", "no module 'nowhere'"),
        ("transforms:enrichh", "'transforms' has no 'enrichh' (did you mean 'enrich'?)"),
        ("transforms:nothing", "'transforms' has no 'nothing'; it has busy, enrich, explode"),
    ):
        text = flow_text(f'script "{ref}"')
        path = scripts / "t.flow"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(FlowError) as info:
            compile_flow(load_flow(path))
        line = next(i for i, s in enumerate(text.splitlines(), 1) if "script" in s)
        assert str(info.value).startswith(f'{path}:{line}: script "{ref}": ')
        assert says in str(info.value)


def test_a_script_that_does_not_import_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f(ex):\n    return (\n", encoding="utf-8")
    path = tmp_path / "t.flow"
    path.write_text(flow_text('script "broken:f"'), encoding="utf-8")
    with pytest.raises(FlowError, match="importing 'broken' failed: SyntaxError"):
        compile_flow(load_flow(path))


def test_two_folders_with_a_module_of_the_same_name_stay_apart(tmp_path: Path) -> None:
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "transforms.py").write_text(f"def f(ex):\n    ex.body = b'{name}'\n")
        (folder / "t.flow").write_text(flow_text('script "transforms:f"'))
    first = compile_flow(load_flow(tmp_path / "one" / "t.flow"))
    second = compile_flow(load_flow(tmp_path / "two" / "t.flow"))
    for pipeline, expected in ((first, b"one"), (second, b"two")):
        ex = message()
        pipeline.steps[0].run(ex, None)  # type: ignore[arg-type]
        assert ex.body == expected


async def test_mpl_show_prints_the_scripts_nested_chain(scripts: Path) -> None:
    tenant = scripts / "tenant"
    runner = CliRunner()
    assert runner.invoke(cli, ["--tenant", str(tenant), "init"]).exit_code == 0
    (scripts / "t.flow").write_text(flow_text('script "transforms:explode"'), encoding="utf-8")
    pipeline = compile_flow(load_flow(scripts / "t.flow"))
    from flowrt.engine.runner import Runner

    async def deliver(name: str, ex: object) -> None:
        raise AssertionError("nothing is sent")

    with MplRecorder(MplStore(tenant / "mpl.sqlite"), owns_store=True) as recorder:
        result = await Runner(pipeline, recorder, deliver).process(message())
    shown = runner.invoke(cli, ["--tenant", str(tenant), "mpl", "show", result.message_id])
    assert shown.exit_code == 0, shown.output
    assert "StepException: script transforms:explode failed (line" in shown.output
    assert "  nested exception is:\n\tLookupError: no customer for Invoice 42" in shown.output
    assert "  nested exception is:\n\tValueError: invalid literal for int()" in shown.output
    as_json = runner.invoke(
        cli, ["--tenant", str(tenant), "mpl", "show", result.message_id, "--format", "json"]
    )
    levels = json.loads(as_json.stdout)["error"]["levels"]
    assert [level["type"] for level in levels] == ["StepException", "LookupError", "ValueError"]
