"""Raw flow -> typed model, through the specs, reporting every problem of the file at once.

Sender and receiver blocks come from the adapter registry (each adapter's specs build its
own model); this module knows blocks and settings, not what an adapter does with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowrt.adapters import registry
from flowrt.dsl import model as m
from flowrt.dsl._parse import RawBlock, RawFlow, RawSetting
from flowrt.dsl.flow_spec import FLOW_SETTINGS, ON_ERROR
from flowrt.dsl.spec import Report, Settings, SettingSpec
from flowrt.dsl.values import SpecError, ValueReader, close_match, did_you_mean

BLOCK_KEYWORDS = ("sender", "receiver", "on-error", "pipeline")


def read_settings(
    raw: Sequence[RawSetting],
    specs: Sequence[SettingSpec],
    pos: m.Pos,
    where: str,
    report: Report,
) -> Settings:
    """Read each setting through its spec; unknown, repeated and bad values are reported."""
    by_name = {s.name: s for s in specs}
    values: dict[str, Any] = {}
    positions: dict[str, m.Pos] = {}
    failed: set[str] = set()
    for setting in raw:
        spec = by_name.get(setting.name)
        if spec is None:
            hint = did_you_mean(setting.name, list(by_name))
            report.error(
                setting.pos, "unknown-setting", f"unknown setting {setting.name!r} in {where}{hint}"
            )
            # a misspelled setting is one problem, not also a missing one
            failed.update(close_match(setting.name, list(by_name)))
            continue
        if (setting.name in positions or setting.name in failed) and not spec.repeatable:
            first = next(r.pos for r in raw if r.name == setting.name)
            report.error(
                setting.pos,
                "repeated-setting",
                f"{setting.name!r} is set twice in {where} (first on line {first.line})",
            )
            continue
        try:
            value = spec.parse(ValueReader(setting.name, setting.values, setting.pos))
        except SpecError as exc:
            report.error(exc.pos, exc.code, exc.message)
            failed.add(setting.name)
            continue
        if spec.repeatable:
            values.setdefault(setting.name, []).append(value)
        else:
            values[setting.name] = value
        positions.setdefault(setting.name, setting.pos)
    return Settings(values, positions, pos, frozenset(failed))


def _build_block(block: RawBlock, report: Report) -> tuple[str, Any]:
    """The block's keyword (the meant one, for a misspelled keyword) and what it built."""
    args = tuple(a.text for a in block.args)
    adapter = args[0] if args else None
    if block.keyword not in ("sender", "receiver", "on-error"):
        report.error(
            block.pos,
            "unknown-block",
            f"unknown block {block.keyword!r}; a flow has sender, receiver, pipeline and "
            "on-error blocks" + did_you_mean(block.keyword, BLOCK_KEYWORDS),
        )
        return next(iter(close_match(block.keyword, BLOCK_KEYWORDS)), ""), None
    if block.keyword == "on-error":
        spec = ON_ERROR
    else:
        blocks = registry.blocks()
        known = sorted(a for k, a in blocks if k == block.keyword)
        if adapter is None:
            report.error(
                block.pos,
                "missing-adapter",
                f"{block.keyword} needs an adapter: {block.keyword} mail ...",
            )
            return block.keyword, None
        if (block.keyword, adapter) not in blocks:
            report.error(
                block.args[0].pos,
                "unknown-adapter",
                f"unknown {block.keyword} adapter {adapter!r}; flowrt has {', '.join(known)}"
                + did_you_mean(adapter, known),
            )
            return block.keyword, None
        spec = blocks[(block.keyword, adapter)]
    where = (
        f"{block.keyword} {adapter}" if adapter and block.keyword != "on-error" else block.keyword
    )
    settings = read_settings(block.settings, spec.settings, block.pos, where, report)
    missing = [
        name
        for name in spec.required
        if name not in settings.positions and name not in settings.failed
    ]
    for name in missing:
        setting = spec.setting(name)
        example = f" (e.g. {setting.example})" if setting and setting.example else ""
        report.error(
            block.pos, "missing-setting", f"{where} is missing the setting {name!r}{example}"
        )
    # Built even with settings missing or wrong: the builder's combination checks (imaps on
    # POP3, auth without a credential ...) are problems of their own, reported in the same
    # run; a builder returns None when what it needs is not there.
    built = spec.build(settings, args, report)
    if missing or settings.failed & set(spec.required):
        return block.keyword, None
    return block.keyword, built


def build_flow(raw: RawFlow, source: str, report: Report) -> m.Flow | None:
    errors_before = sum(d.is_error for d in report.diagnostics)
    flow_settings = read_settings(raw.settings, FLOW_SETTINGS, raw.pos, f"flow {raw.name}", report)
    sender: m.SenderBlock | None = None
    receivers: list[m.ReceiverBlock] = []
    on_error: m.RetryPolicy | None = None
    seen: dict[str, m.Pos] = {}
    unbuilt: set[str] = set()
    for block in raw.blocks:
        if block.keyword in ("sender", "on-error") and block.keyword in seen:
            report.error(
                block.pos,
                "repeated-block",
                f"a flow has one {block.keyword} block (first on line {seen[block.keyword].line})",
            )
            continue
        meant, built = _build_block(block, report)
        seen.setdefault(meant, block.pos)
        if built is None:
            if meant == "receiver" and len(block.args) > 1:
                unbuilt.add(block.args[1].text)  # its own problems are reported already
            continue
        if meant == "sender":
            sender = built
        elif meant == "receiver":
            if any(r.name == built.name for r in receivers):
                report.error(
                    block.pos, "repeated-receiver", f"there are two receivers named {built.name!r}"
                )
            else:
                receivers.append(built)
        elif isinstance(built, m.RetryPolicy):
            on_error = built
    if "sender" not in seen:
        report.error(
            raw.pos, "missing-block", f"flow {raw.name} has no sender: add sender mail {{ ... }}"
        )
    if len(raw.pipelines) > 1:
        report.error(
            raw.pipelines[1].pos,
            "repeated-block",
            f"a flow has one pipeline block (first on line {raw.pipelines[0].pos.line})",
        )
    steps = raw.pipelines[0].steps if raw.pipelines else ()
    _check_steps(steps, receivers, unbuilt, report)
    if on_error is not None and on_error.dead_letter.kind == "receiver":
        names = [r.name for r in receivers] + sorted(unbuilt)
        if on_error.dead_letter.target not in names:
            report.error(
                seen["on-error"],
                "unknown-receiver",
                f"dead-letter receiver {on_error.dead_letter.target!r} is not a receiver of "
                f"this flow" + did_you_mean(on_error.dead_letter.target, names),
            )
    if sum(d.is_error for d in report.diagnostics) > errors_before:
        return None
    return m.Flow(
        name=raw.name,
        description=flow_settings.get("description", ""),
        log_level=flow_settings.get("log-level", m.MplLogLevel.INFO),
        sender=sender,
        steps=tuple(steps),
        receivers=tuple(receivers),
        on_error=on_error,
        pos=raw.pos,
        source=source,
        params=raw.params,
    )


def _check_steps(
    steps: Sequence[m.Step],
    receivers: Sequence[m.ReceiverBlock],
    unbuilt: set[str],
    report: Report,
) -> None:
    from flowrt.engine.steps import PIPELINE_CHECKS, SPECS

    # a receiver that could not be built still exists: a route to it is not a problem too
    by_name: dict[str, Any] = {name: None for name in unbuilt}
    by_name.update({r.name: r for r in receivers})
    for step in steps:
        spec = SPECS[step.kind]
        if spec.check is not None:
            spec.check(step, by_name, report)
    for check_pipeline in PIPELINE_CHECKS:  # rules about a step's place among the others
        check_pipeline(steps, report)
