"""Expressions and conditions compiled once, at load, into plain Python callables.

A message never causes re-parsing: ``compile_template`` turns a parsed template into a
closure over its parts. A missing header or property is empty, never an exception; only
``exists`` tells "missing" from "empty".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from flowrt.dsl import model as m
from flowrt.engine.exchange import Exchange

Value = Callable[[Exchange], str]
Predicate = Callable[[Exchange], bool]


def _header(name: str) -> Value:
    def value(ex: Exchange) -> str:
        return ex.headers.joined(name)

    return value


def _property(name: str) -> Value:
    def value(ex: Exchange) -> str:
        found = ex.properties.get(name)
        return "" if found is None else str(found)

    return value


def _date(fmt: str) -> Value:
    def value(ex: Exchange) -> str:
        now = dt.datetime.now().astimezone()
        return now.strftime(fmt) if fmt else now.isoformat(timespec="seconds")

    return value


_FIXED: dict[tuple[str, str], Value] = {
    ("message", "id"): lambda ex: ex.message_id,
    ("message", "correlation-id"): lambda ex: ex.correlation_id,
    ("message", "timestamp"): lambda ex: ex.created.isoformat(timespec="seconds"),
    ("flow", "name"): lambda ex: ex.flow_name,
    ("flow", "version"): lambda ex: ex.flow_version,
    ("attachment", "name"): lambda ex: ex.attachment.name if ex.attachment else "",
    ("attachment", "type"): lambda ex: ex.attachment.content_type if ex.attachment else "",
    ("attachment", "size"): lambda ex: str(ex.attachment.size) if ex.attachment else "",
    ("attachment", "index"): lambda ex: ex.branch.rsplit("-", 1)[-1] if ex.branch else "",
}


def compile_ref(ref: m.Ref) -> Value:
    if ref.kind == "header":
        return _header(ref.name)
    if ref.kind == "property":
        return _property(ref.name)
    if ref.kind == "body":
        if ref.name == "html":
            return lambda ex: ex.html_text
        return lambda ex: ex.text
    if ref.kind == "date":
        return _date(ref.name)
    return _FIXED[(ref.kind, ref.name)]


def _constant(text: str) -> Value:
    return lambda ex: text


def compile_template(template: m.Template) -> Value:
    if template.is_literal:
        return _constant(template.literal)
    parts = [_constant(p) if isinstance(p, str) else compile_ref(p) for p in template.parts]
    if len(parts) == 1:
        return parts[0]
    return lambda ex: "".join(p(ex) for p in parts)


def compile_operand(operand: m.Operand) -> Value:
    if isinstance(operand, m.Ref):
        return compile_ref(operand)
    return compile_template(operand)


def _exists(operand: m.Operand) -> Predicate:
    if isinstance(operand, m.Template):  # the validator allows only references here
        return lambda ex: True
    ref = operand
    if ref.kind == "header":
        return lambda ex: ref.name in ex.headers
    if ref.kind == "property":
        return lambda ex: ref.name in ex.properties
    if ref.kind == "body":
        if ref.name == "html":
            return lambda ex: bool(ex.html_text)
        return lambda ex: bool(ex.body)
    if ref.kind == "attachment":
        return lambda ex: ex.attachment is not None
    return lambda ex: True


def compile_condition(cond: m.Condition) -> Predicate:
    if isinstance(cond, m.Compare):
        left, right = compile_operand(cond.left), compile_operand(cond.right)
        if cond.op == "=":
            return lambda ex: left(ex) == right(ex)
        if cond.op == "!=":
            return lambda ex: left(ex) != right(ex)
        return lambda ex: right(ex) in left(ex)
    if isinstance(cond, m.Matches):
        operand, pattern = compile_operand(cond.operand), cond.pattern
        return lambda ex: pattern.search(operand(ex)) is not None
    if isinstance(cond, m.Exists):
        return _exists(cond.operand)
    if isinstance(cond, m.Not):
        inner = compile_condition(cond.inner)
        return lambda ex: not inner(ex)
    items = [compile_condition(c) for c in cond.items]
    if isinstance(cond, m.And):
        return lambda ex: all(p(ex) for p in items)
    return lambda ex: any(p(ex) for p in items)
