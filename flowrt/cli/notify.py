"""`flowrt notify ...`: the tenant's notification mail server, alert rules, counters and log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import click

from flowrt.adapters.mail.check.target import parse_target
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.connectivity import ConnectivityReport
from flowrt.dsl.values import parse_duration
from flowrt.errors import FlowrtError, NotFoundError, UsageError
from flowrt.notify.config import (
    ALLOWED_PROTECTIONS,
    REFUSED_PROTECTIONS,
    TRIGGERS,
    WINDOW,
    NotifyServer,
    check_address,
    edit_config,
    load_config,
    make_rule,
    replace,
    show_duration,
)
from flowrt.notify.rules import iso
from flowrt.notify.store import Attempt, NotifyLog, open_log
from flowrt.security import TenantSecurity
from flowrt.store import open_deployments
from flowrt.tenant import Tenant

_MAX_LIMIT = 1000


def _duration(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    value = parse_duration(text)
    if value is None:
        raise UsageError(f"{option} {text!r}: not a duration (e.g. 30m, 2h, 30d)")
    return value.total_seconds()


def _stages(server: NotifyServer, title: str, text: bool) -> ConnectivityReport:
    report = ConnectivityReport(
        f"{title} {server.address} ({server.protection})",
        on_stage=(lambda stage: click.echo(stage.render())) if text else None,
    )
    if text:
        click.echo(f"flowrt notify {report.title}")
    return report


def _run_check(report: ConnectivityReport, check: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(check)
    except FlowrtError as exc:
        if report.error is None:
            report.fail("test", exc)


def _finish(report: ConnectivityReport, text: bool) -> None:
    if text:
        if not report.ok:
            click.echo(report.render_failure(), err=True)
        click.echo(report.verdict())
    else:
        print_json(report.to_dict())
    if not report.ok:
        raise SystemExit(1)


@click.group("notify")
def notify() -> None:
    """Alerts by mail: the tenant's notification server, rules, counters and log."""


# ----------------------------------------------------------------------------- server


@notify.group("server")
def server_group() -> None:
    """The one mail server all of the tenant's alerts go through."""


@server_group.command("set")
@click.argument("address", metavar="HOST[:PORT]")
@click.option(
    "--protection",
    type=click.Choice([*ALLOWED_PROTECTIONS, *REFUSED_PROTECTIONS]),
    required=True,
    help="smtps or starttls-mandatory (off and starttls-optional are refused).",
)
@click.option(
    "--auth",
    type=click.Choice(["none", "plain", "encrypted"]),
    default=None,
    help="Login: plain or encrypted (CRAM-MD5). Default: plain with --credential, else none.",
)
@click.option("--credential", metavar="NAME", help="User credential to log in with.")
@click.option("--from", "sender", required=True, metavar="ADDRESS", help="Sender of alerts.")
@click.option(
    "--timeout",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="Connect and read timeout; more than 0 and less than 5m.",
)
@format_option
@pass_cli
def server_set(
    cli: CliContext,
    /,
    address: str,
    protection: str,
    auth: str | None,
    credential: str | None,
    sender: str,
    timeout: str,
    fmt: str,
) -> None:
    """Set the notification server after testing it (TLS, chain, AUTH, sender).

    The server's whole chain must be trusted by the tenant keystore; nothing is stored when
    the test fails.
    """
    if protection in REFUSED_PROTECTIONS:
        raise UsageError(
            f"--protection {protection} is refused for the notification server: alerts "
            "must not travel in clear text, and a server whose STARTTLS may be stripped "
            "gives no such promise",
            hint="use --protection smtps (port 465) or starttls-mandatory (port 587)",
        )
    host, port = parse_target("smtp", address, protection)
    seconds = _duration("--timeout", timeout)
    if seconds is None or not 0 < seconds < 300:
        raise UsageError(f"--timeout {timeout}: more than 0 and less than 5m")
    auth = auth or ("plain" if credential else "none")
    if auth != "none" and not credential:
        raise UsageError(f"--auth {auth} needs --credential NAME")
    server = NotifyServer(
        host=host,
        port=port,
        protection=protection,
        sender=check_address(sender, "--from"),
        auth=auth,
        credential=credential if auth != "none" else None,
        timeout=seconds,
    )
    tenant = cli.tenant
    security = TenantSecurity.open(tenant)
    if server.credential is not None:
        security.user_credential(server.credential)  # unknown: its own error and hint
    from flowrt.notify.send import check_server

    text = fmt == "text"
    report = _stages(server, "server set", text)
    _run_check(report, check_server(server, security, report))
    if report.ok:
        with edit_config(tenant) as edit:
            edit.value = replace(edit.value, server=server)
        if text:
            click.echo(f"saved: alerts go through {server.address} from {server.sender}")
    _finish(report, text)


@server_group.command("show")
@format_option
@pass_cli
def server_show(cli: CliContext, fmt: str) -> None:
    """The notification server and the limit per recipient."""
    config = load_config(cli.tenant)
    data = {
        "server": None if config.server is None else config.server.to_dict(),
        "limit_per_24h": config.limit,
        "rules": len(config.rules),
    }
    if fmt == "json":
        print_json(data)
        return
    if config.server is None:
        click.echo("no notification server: no alerts are sent (`flowrt notify server set`)")
    else:
        s = config.server
        click.echo(f"server:     {s.address} ({s.protection})")
        login = f" credential {s.credential}" if s.credential else ""
        click.echo(f"auth:       {s.auth}{login}")
        click.echo(f"from:       {s.sender}")
        click.echo(f"timeout:    {s.timeout:g}s")
    click.echo(f"limit:      {config.limit} mails per recipient per 24 h")
    click.echo(f"rules:      {len(config.rules)}")


@server_group.command("remove")
@pass_cli
def server_remove(cli: CliContext) -> None:
    """Remove the notification server: no alerts are sent until one is set again."""
    with edit_config(cli.tenant) as edit:
        if edit.value.server is None:
            raise NotFoundError("no notification server is set")
        removed = edit.value.server
        edit.value = replace(edit.value, server=None)
    click.echo(f"removed {removed.address}: no alerts are sent until a server is set again")


@server_group.command("test")
@click.option("--to", "to", required=True, metavar="ADDRESS", help="Who gets the test mail.")
@format_option
@pass_cli
def server_test(cli: CliContext, to: str, fmt: str) -> None:
    """Send a test mail now, showing the SMTP dialogue stage by stage."""
    _test(cli, to, fmt)


def _test(cli: CliContext, to: str, fmt: str) -> None:
    recipient = check_address(to, "--to")
    tenant = cli.tenant
    server = _server(tenant)
    security = TenantSecurity.open(tenant)
    from flowrt.notify.send import test_server

    text = fmt == "text"
    report = _stages(server, "server test", text)
    _run_check(report, test_server(server, security, report, recipient, now=time.time()))
    _finish(report, text)


def _server(tenant: Tenant) -> NotifyServer:
    server = load_config(tenant).server
    if server is None:
        raise NotFoundError(
            "no notification server is set",
            hint="set one with `flowrt notify server set HOST:PORT --protection smtps "
            "--credential NAME --from ADDRESS`",
        )
    return server


@notify.command("limit")
@click.argument("count", type=int, required=False)
@pass_cli
def limit(cli: CliContext, count: int | None) -> None:
    """Show or set the most mails one recipient gets per 24 hours (default 3)."""
    if count is None:
        click.echo(f"{load_config(cli.tenant).limit} mails per recipient per 24 h")
        return
    if not 1 <= count <= _MAX_LIMIT:
        raise UsageError(f"limit {count}: between 1 and {_MAX_LIMIT}")
    with edit_config(cli.tenant) as edit:
        edit.value = replace(edit.value, limit=count)
    click.echo(f"limit set: {count} mails per recipient per 24 h")


# ----------------------------------------------------------------------------- rules


@notify.group("rule")
def rule_group() -> None:
    """Alert rules: what triggers a mail, for which flow, and who gets it."""


@rule_group.command("add")
@click.argument("name")
@click.option(
    "--on",
    "trigger",
    required=True,
    type=click.Choice(list(TRIGGERS)),
    help="What sends the alert.",
)
@click.option(
    "--to",
    "recipients",
    required=True,
    multiple=True,
    metavar="ADDRESS[,ADDRESS]",
    help="Recipients (repeatable, or comma-separated).",
)
@click.option("--flow", metavar="NAME", help="Only this deployed flow (default: all flows).")
@click.option("--for", "for_", metavar="DURATION", help="flow-error, poller-failing, lock-stuck.")
@click.option("--within", metavar="DURATION", help="keystore-expiry: entries expiring within.")
@click.option("--include-content", is_flag=True, help="Add the message content (from a trace MPL).")
@click.option("--replace", "replace_rule", is_flag=True, help="Replace a rule of that name.")
@pass_cli
def rule_add(
    cli: CliContext,
    /,
    name: str,
    trigger: str,
    recipients: tuple[str, ...],
    flow: str | None,
    for_: str | None,
    within: str | None,
    include_content: bool,
    replace_rule: bool,
) -> None:
    """Add alert rule NAME."""
    if for_ is not None and within is not None:
        raise UsageError("give --for or --within, not both")
    duration = _duration("--within", within) if within else _duration("--for", for_)
    if trigger == "keystore-expiry" and for_ is not None:
        raise UsageError("keystore-expiry takes --within DURATION (entries expiring within it)")
    if trigger != "keystore-expiry" and within is not None:
        raise UsageError(f"--within is for keystore-expiry; {trigger} takes --for DURATION")
    tenant = cli.tenant
    rule = make_rule(
        name,
        trigger,
        [a for value in recipients for a in value.split(",")],
        flow=flow,
        duration=duration,
        include_content=include_content,
        known_flows=_deployed_names(tenant) if flow not in (None, "*") else (),
    )
    with edit_config(tenant) as edit:
        existing = edit.value.rule(name)
        if existing is not None and not replace_rule:
            raise UsageError(f"a rule named {name!r} exists", hint="add --replace to replace it")
        rules = [r for r in edit.value.rules if r.name != name] + [rule]
        edit.value = replace(edit.value, rules=tuple(rules))
    what = TRIGGERS[trigger]
    if rule.duration is not None:
        what = what.replace("--for D", show_duration(rule.duration))
        what = what.replace("--within D", show_duration(rule.duration))
    where = "" if rule.flow == "*" else f" (flow {rule.flow})"
    click.echo(f"added rule {name}: {what}{where} -> {', '.join(rule.recipients)}")
    if load_config(tenant).server is None:
        click.echo(
            "note: no notification server is set; alerts are sent once one is "
            "(`flowrt notify server set`)",
            err=True,
        )


@rule_group.command("list")
@format_option
@pass_cli
def rule_list(cli: CliContext, fmt: str) -> None:
    """List the alert rules."""
    rules = load_config(cli.tenant).rules
    if fmt == "json":
        print_json([r.to_dict() for r in rules])
        return
    rows = [
        {
            "name": r.name,
            "on": r.trigger,
            "flow": r.flow,
            "duration": show_duration(r.duration) if r.duration else "",
            "to": ", ".join(r.recipients),
            "content": "yes" if r.include_content else "no",
        }
        for r in rules
    ]
    print_table(rows, ["name", "on", "flow", "duration", "to", "content"])


@rule_group.command("remove")
@click.argument("name")
@pass_cli
def rule_remove(cli: CliContext, name: str) -> None:
    """Remove alert rule NAME."""
    with edit_config(cli.tenant) as edit:
        if edit.value.rule(name) is None:
            known = ", ".join(r.name for r in edit.value.rules) or "none"
            raise NotFoundError(f"no rule named {name!r}", hint=f"rules: {known}")
        edit.value = replace(edit.value, rules=tuple(r for r in edit.value.rules if r.name != name))
    click.echo(f"removed rule {name}")


# ----------------------------------------------------------------------------- counters, log


def _store(tenant: Tenant) -> NotifyLog | None:
    return open_log(tenant, create=False)


@notify.command("counters")
@format_option
@pass_cli
def counters(cli: CliContext, fmt: str) -> None:
    """Per recipient: mails sent in the last 24 h (since a reset) and alerts held back."""
    tenant = cli.tenant
    limit_ = load_config(tenant).limit
    store = _store(tenant)
    found = [] if store is None else store.counters(now=time.time(), window=WINDOW)
    if store is not None:
        store.close()
    rows = [
        {
            "recipient": c.recipient,
            "sent_24h": c.sent,
            "limit": limit_,
            "held_back": c.held,
            "last_sent": iso(c.last_sent) if c.last_sent else None,
            "reset_at": iso(c.reset_at) if c.reset_at else None,
        }
        for c in found
    ]
    if fmt == "json":
        print_json(rows)
        return
    print_table(rows, ["recipient", "sent_24h", "limit", "held_back", "last_sent", "reset_at"])


@notify.command("reset")
@click.argument("address")
@pass_cli
def reset(cli: CliContext, address: str) -> None:
    """Reset ADDRESS's counter: the next alert goes out, with the digest of held ones."""
    recipient = check_address(address, "ADDRESS")
    store = _store(cli.tenant)
    done = False
    if store is not None:
        with store:
            done = store.reset(recipient, now=time.time())
    if not done:
        raise NotFoundError(
            f"no alerts were ever sent to {recipient}", hint="see `flowrt notify counters`"
        )
    click.echo(f"reset the counter of {recipient}: the next alert goes out")


@notify.command("log")
@click.option("--to", "recipient", metavar="ADDRESS", help="Only attempts for this recipient.")
@click.option(
    "--status",
    type=click.Choice(["pending", "sent", "held", "failed", "gave-up"]),
    default=None,
    help="Only attempts in this state.",
)
@click.option(
    "--limit",
    "count",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="At most this many attempts (the newest).",
)
@click.option("--chain", is_flag=True, help="Show the chain and hint of failed attempts.")
@format_option
@pass_cli
def log(
    cli: CliContext,
    /,
    recipient: str | None,
    status: str | None,
    count: int,
    chain: bool,
    fmt: str,
) -> None:
    """Every notification attempt, newest first: sent, held back, failed (with its chain)."""
    store = _store(cli.tenant)
    attempts: list[Attempt] = []
    if store is not None:
        with store:
            attempts = store.attempts(recipient=recipient, status=status, limit=count)
    if fmt == "json":
        print_json([a.to_dict() for a in attempts])
        return
    rows = [
        {
            "id": a.id,
            "time": iso(a.created),
            "status": a.status,
            "tries": a.tries,
            "to": a.recipient,
            "rule": a.rule,
            "subject": a.subject[:70],
            "next_try": iso(a.next_try) if a.next_try and a.status == "failed" else None,
        }
        for a in attempts
    ]
    print_table(rows, ["id", "time", "status", "tries", "to", "rule", "subject", "next_try"])
    if chain:
        for a in attempts:
            if a.chain:
                click.echo(f"\n#{a.id} {a.status} to {a.recipient}:\n{a.chain}")
                if a.hint:
                    click.echo(f"hint: {a.hint}")


def _deployed_names(tenant: Tenant) -> list[str]:
    store = open_deployments(tenant)
    try:
        return store.names()
    finally:
        store.close()


COMMANDS: list[click.Command] = [notify]
