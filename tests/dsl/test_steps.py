"""Every pipeline step and the condition language parse into the model."""

from __future__ import annotations

import pytest

from flowrt.dsl import model as m
from flowrt.engine.steps.attachments import AttachmentsStep
from flowrt.engine.steps.filter import FilterStep
from flowrt.engine.steps.log import Level, LogStep
from flowrt.engine.steps.mpl_property import MplPropertyStep
from flowrt.engine.steps.route import RouteStep
from flowrt.engine.steps.script import ScriptStep
from flowrt.engine.steps.set import SetStep
from flowrt.engine.steps.split import SplitStep
from tests.dsl.helpers import errors, flow, only_flow


def steps(text: str) -> tuple[m.Step, ...]:
    return only_flow(flow(steps=text)).steps


def test_set_header_property_and_body() -> None:
    a, b, c, d = steps(
        'set header "X-A" = "v ${header.Subject}"\n'
        'set property "p" = header.From\nset body = "${property.p}"\n'
        "set header X-Plain = body"
    )
    assert isinstance(a, SetStep) and a.target == m.Target("header", "X-A")
    assert isinstance(a.value, m.Template) and a.value.parts[0] == "v "
    assert isinstance(b, SetStep) and b.target == m.Target("property", "p")
    assert isinstance(b.value, m.Ref) and str(b.value) == "header.From"
    assert isinstance(c, SetStep) and c.target == m.Target("body", "")
    assert isinstance(d, SetStep) and d.target.name == "X-Plain"
    assert isinstance(d.value, m.Ref) and d.value.kind == "body"


def test_remove() -> None:
    a, b, c = steps('remove header "Received"\nremove property "p"\nremove body')
    assert [s.target for s in (a, b, c)] == [  # type: ignore[union-attr]
        m.Target("header", "Received"),
        m.Target("property", "p"),
        m.Target("body", ""),
    ]


def test_filter_with_each_operator() -> None:
    (step,) = steps(
        'filter not (header.A = "1" or header.B != "2") and body contains "x" '
        'and header.C exists and property.d matches "^a+$"'
    )
    assert isinstance(step, FilterStep)
    cond = step.condition
    assert isinstance(cond, m.And) and len(cond.items) == 4
    negated, contains, exists, matches = cond.items
    assert isinstance(negated, m.Not) and isinstance(negated.inner, m.Or)
    assert [c.op for c in negated.inner.items] == ["=", "!="]  # type: ignore[union-attr]
    assert isinstance(contains, m.Compare) and contains.op == "contains"
    assert isinstance(exists, m.Exists)
    assert isinstance(matches, m.Matches) and matches.pattern.pattern == "^a+$"


def test_and_binds_tighter_than_or() -> None:
    (step,) = steps("filter header.A exists or header.B exists and header.C exists")
    assert isinstance(step, FilterStep) and isinstance(step.condition, m.Or)
    assert isinstance(step.condition.items[1], m.And)


def test_number_operand_and_regex_escapes() -> None:
    (step,) = steps('filter header.X-Priority = 1 and header.Subject matches "\\d{4}"')
    assert isinstance(step, FilterStep) and isinstance(step.condition, m.And)
    number, regex = step.condition.items
    assert isinstance(number, m.Compare) and isinstance(number.right, m.Template)
    assert number.right.literal == "1"
    assert isinstance(regex, m.Matches) and regex.pattern.search("no 2026 here")


def test_route_and_otherwise() -> None:
    a, b = steps('route when header.Subject contains "x" to out\nroute otherwise to out')
    assert isinstance(a, RouteStep) and a.receiver == "out" and a.condition is not None
    assert isinstance(b, RouteStep) and b.condition is None


def test_split_script_log_mpl_attachments() -> None:
    split, script, log, mpl, keep, drop = steps(
        'split attachments\nscript "my_pkg.transforms:enrich"\nlog debug "n=${message.id}"\n'
        'mpl property "customer" = header.From\nattachments keep "*.pdf"\n'
        'attachments drop "*.exe"'
    )
    assert isinstance(split, SplitStep)
    assert isinstance(script, ScriptStep)
    assert (script.module, script.function) == ("my_pkg.transforms", "enrich")
    assert isinstance(log, LogStep) and log.level is Level.DEBUG
    assert isinstance(mpl, MplPropertyStep) and mpl.name == "customer"
    assert isinstance(keep, AttachmentsStep) and (keep.action, keep.glob) == ("keep", "*.pdf")
    assert isinstance(drop, AttachmentsStep) and drop.action == "drop"


@pytest.mark.parametrize(
    ("expr", "kind", "name"),
    [
        ("header.Subject", "header", "Subject"),
        ("property.a.b", "property", "a.b"),
        ("body", "body", ""),
        ("message.id", "message", "id"),
        ("message.correlation-id", "message", "correlation-id"),
        ("flow.name", "flow", "name"),
        ("date:now:%Y-%m-%d", "date", "%Y-%m-%d"),
        ("date:now", "date", ""),
        ("attachment.name", "attachment", "name"),
    ],
)
def test_expressions(expr: str, kind: str, name: str) -> None:
    (step,) = steps(f'log info "a ${{{expr}}} b"')
    assert isinstance(step, LogStep)
    (ref,) = step.text.refs
    assert (ref.kind, ref.name) == (kind, name)
    assert step.text.parts[0] == "a " and step.text.parts[2] == " b"


def test_escapes_in_strings() -> None:
    (step,) = steps('log info "say \\"hi\\" and \\${not} \\\\ done"')
    assert isinstance(step, LogStep)
    assert step.text.is_literal
    assert step.text.literal == 'say "hi" and ${not} \\ done'


def test_step_positions_are_the_flow_lines() -> None:
    parsed = steps('set header "A" = "1"\n\nlog info "x"')
    text = flow(steps='set header "A" = "1"\n\nlog info "x"')
    lines = text.splitlines()
    assert lines[parsed[0].pos.line - 1].strip().startswith("set header")
    assert lines[parsed[1].pos.line - 1].strip().startswith("log info")


def test_step_errors_are_all_reported() -> None:
    found = errors(
        flow(
            steps='script "no-colon"\nlog loud "x"\nattachments hold "*"\n'
            'filter header.A matches "("\nset header "bad name" = "x"'
        )
    )
    assert [code for _, code, _ in found] == [
        "bad-value",
        "bad-value",
        "bad-value",
        "bad-condition",
        "bad-value",
    ]
