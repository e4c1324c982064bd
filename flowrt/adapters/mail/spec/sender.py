"""DSL spec of ``sender mail { ... }``: polling a mailbox over IMAP4 or POP3."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from flowrt.adapters.mail.model import (
    Poll,
    PollCron,
    PollDaily,
    PollEvery,
    PollIdle,
    PostProcess,
    Sender,
)
from flowrt.adapters.mail.spec.connection import build_connection, connection_settings
from flowrt.dsl.spec import BlockSpec, Report, Settings, SettingSpec
from flowrt.dsl.values import SpecError, ValueReader

DEFAULT_MAX_MESSAGES = 100
DEFAULT_IN_FLIGHT = 8  # measured: see the README's "Mails in flight"
MAX_WORKERS = 16
DEFAULT_POLL = PollEvery(dt.timedelta(minutes=1))
# servers log out a connection idle for 30 minutes (RFC 9051 puts the autologout timer at
# 30 minutes or more; Dovecot's is 30): a kept connection is closed before that
DEFAULT_KEEP_CONNECTION = dt.timedelta(minutes=25)
MAX_KEEP_CONNECTION = dt.timedelta(minutes=30)


def _protocol(r: ValueReader) -> str:
    return r.choice(["imap", "pop3"])


def _folder(r: ValueReader) -> str:
    value = r.string('a folder name such as "INBOX"')
    if not value.text:
        raise r.fail(value, "the folder name is empty")
    r.end()
    return value.text


def _selection(r: ValueReader) -> str:
    return r.choice(["unread", "all"])


def _max_messages(r: ValueReader) -> int:
    value = r.integer("a whole number of messages", minimum=1)
    r.end()
    return value


def _in_flight(r: ValueReader) -> int:
    value = r.integer("a whole number of mails", minimum=1)
    r.end()
    return value


def _workers(r: ValueReader) -> int:
    value = r.integer("a whole number of processes", minimum=1, maximum=MAX_WORKERS)
    r.end()
    return value


def _post_process(r: ValueReader) -> PostProcess:
    action = r.word(["mark-read", "delete", "archive", "keep"])
    if action != "archive":
        r.end()
        return PostProcess(action)  # type: ignore[arg-type]
    folder = r.string('an archive folder such as "Processed"')
    if not folder.text:
        raise r.fail(folder, "the archive folder name is empty")
    mark_read = r.maybe_keyword("mark-read")
    r.end()
    return PostProcess("archive", folder.text, mark_read)


def _poll(r: ValueReader) -> Poll:
    kind = r.word(["every", "daily", "cron", "idle"])
    if kind == "every":
        interval = r.duration(above=dt.timedelta(0))
        r.end()
        return PollEvery(interval)
    if kind == "idle":
        r.end()
        return PollIdle()
    if kind == "cron":
        from flowrt import cron  # croniter is loaded only by flows that use it

        expression = r.string('a cron expression such as "0 7-18 * * 1-5"')
        wrong = cron.problem(expression.text)
        if wrong is not None:
            raise r.fail(expression, f"bad cron expression {expression.shown()}: {wrong}")
        tz = _tz(r)
        r.end()
        return PollCron(" ".join(expression.text.split()), tz)
    r.keyword("at")
    at = r.time_of_day()
    tz = _tz(r)
    r.end()
    return PollDaily(at, tz)


def _tz(r: ValueReader) -> str | None:
    if not r.maybe_keyword("tz"):
        return None
    zone = r.string('a time zone such as "Europe/Berlin"')
    try:
        zoneinfo.ZoneInfo(zone.text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise r.fail(zone, f"unknown time zone {zone.shown()}") from None
    return zone.text


def _keep_connection(r: ValueReader) -> dt.timedelta | None:
    if r.maybe_keyword("off"):
        r.end()
        return None
    value = r.duration(above=dt.timedelta(0), below=MAX_KEEP_CONNECTION)
    r.end()
    return value


def _keep_drop(r: ValueReader) -> str:
    return r.choice(["keep", "drop"])


def _headers(r: ValueReader) -> tuple[str, ...]:
    names: list[str] = []
    while not r.at_end():
        value = r.string("header names")
        for name in value.text.split(","):
            name = name.strip()
            if not name:
                continue
            if any(c.isspace() or c == ":" for c in name):
                raise r.fail(value, f"bad header name {name!r}")
            names.append(name)
    if not names:
        raise SpecError("headers: expected header names", r.pos)
    return tuple(names)


SETTINGS = (
    SettingSpec("protocol", "imap | pop3", "Mailbox protocol.", _protocol),
    *connection_settings(default_auth=None),
    SettingSpec("folder", '"NAME"', "IMAP folder to poll.", _folder, default='"INBOX"'),
    SettingSpec(
        "selection",
        "unread | all",
        "IMAP: poll only unread mails, or all mails in the folder.",
        _selection,
        default="unread",
    ),
    SettingSpec(
        "max-messages",
        "N",
        "Mails fetched per poll, at least 1 (with `poll every`, a poll that stopped here "
        "polls again at once).",
        _max_messages,
        default=str(DEFAULT_MAX_MESSAGES),
    ),
    SettingSpec(
        "in-flight",
        "N",
        "Mails processed at once: the next are fetched while earlier ones run through the "
        "flow and its receivers; 1 handles one mail after another, in mailbox order.",
        _in_flight,
        default=str(DEFAULT_IN_FLIGHT),
    ),
    SettingSpec(
        "workers",
        "N",
        "IMAP: processes that work the folder together, each taking the mails whose UID "
        "leaves its own remainder by N (its own lease, connection and in-flight mails): "
        "one process keeps one core busy; 1 to 16.",
        _workers,
        default="1",
    ),
    SettingSpec(
        "post-process",
        'mark-read | delete | archive "FOLDER" [mark-read] | keep',
        "What happens to a mail after the flow finished with it; a failed mail is left as "
        "it was. POP3 knows only delete and keep.",
        _post_process,
        default="mark-read (IMAP), delete (POP3)",
    ),
    SettingSpec(
        "poll",
        'every DURATION | daily at HH:MM [tz "ZONE"] | cron "M H DOM MON DOW" [tz "ZONE"] | idle',
        'When to poll; cron takes the five classic fields (e.g. "0 7-18 * * 1-5": on the '
        "hour from 7 to 18, Monday to Friday), in UTC unless tz says otherwise; idle is IMAP "
        "push (IDLE), re-issued before 29 minutes.",
        _poll,
        default="every 1m",
    ),
    SettingSpec(
        "keep-connection",
        "DURATION | off",
        "IMAP, poll every: keep the connection open between polls (the next poll selects "
        "the folder again instead of logging in) when the interval is at most DURATION, "
        "less than 30m (servers log out idle connections after 30 minutes); a connection "
        "the server closed meanwhile is opened again without a failure. Off: log out after "
        "each poll. POP3 always logs out (its deletes take effect only then).",
        _keep_connection,
        default="25m",
    ),
    SettingSpec(
        "attachments",
        "keep | drop",
        "Keep the mail's attachments or drop them (the inline parts its HTML shows stay).",
        _keep_drop,
        default="keep",
    ),
    SettingSpec(
        "headers",
        '"NAME, NAME, ..."',
        "Which mail headers become message headers.",
        _headers,
        default="all",
    ),
    SettingSpec(
        "claim",
        "on | off",
        "IMAP: claim each mail on the server before handing it over (a keyword "
        "$flowrt-claim-ID set with CONDSTORE, taken off at the end of the poll), so that "
        "runtimes of other tenants polling the same mailbox cannot deliver it too. Off: "
        "nothing is set on a mail before the flow finished with it.",
        lambda r: r.choice(["on", "off"]) == "on",
        default="on",
    ),
    SettingSpec(
        "keep-original",
        "[yes | no]",
        "Put the raw mail into property mail.original.",
        ValueReader.flag,
        default="no",
    ),
)


def build(s: Settings, args: tuple[str, ...], report: Report) -> Sender | None:
    protocol: str | None = s.get("protocol")
    if protocol is None:
        return None
    connection = build_connection(s, protocol, None, report)
    imap_only = ("folder", "selection")
    if protocol == "pop3":
        for name in imap_only:
            if s.written(name):
                report.error(
                    s.where(name),
                    "conflict",
                    f"{name} is IMAP only; POP3 has one mailbox and no read flags",
                )
        if s.written("keep-connection"):
            report.error(
                s.where("keep-connection"),
                "conflict",
                "keep-connection is IMAP only; a POP3 session holds the maildrop's lock and "
                "deletes mails only when it ends, so it ends after each poll",
            )
    post: PostProcess = s.get(
        "post-process", PostProcess("mark-read" if protocol == "imap" else "delete")
    )
    if protocol == "pop3" and post.action in ("mark-read", "archive"):
        report.error(
            s.where("post-process"),
            "conflict",
            f"post-process {post.action} is IMAP only; POP3 can delete or keep "
            "(kept mails are tracked by UIDL)",
        )
    selection = s.get("selection", "unread")
    if (
        selection == "all"
        and (post.action == "mark-read" or post.mark_read)
        and post.action not in ("delete", "archive")
    ):
        report.error(
            s.where("selection"),
            "conflict",
            "selection all with post-process mark-read processes every mail again on every "
            "poll; use selection unread, or post-process delete or archive",
        )
    workers = s.get("workers", 1)
    if workers > 1 and protocol != "imap":
        report.error(
            s.where("workers"),
            "conflict",
            "workers is IMAP only; a POP3 maildrop is locked by one session at a time",
        )
    if workers > 1 and s.written("in-flight") and s.get("in-flight", DEFAULT_IN_FLIGHT) == 1:
        report.error(
            s.where("workers"),
            "conflict",
            "in-flight 1 keeps the mailbox order, which several workers cannot: use workers 1",
        )
    poll: Poll = s.get("poll", DEFAULT_POLL)
    if isinstance(poll, PollIdle) and protocol != "imap":
        report.error(s.where("poll"), "conflict", "poll idle is IMAP push; POP3 cannot push")
    if connection is None:
        return None
    return Sender(
        adapter=args[0] if args else "mail",
        protocol=protocol,  # type: ignore[arg-type]
        connection=connection,
        folder=s.get("folder", "INBOX"),
        selection=selection,
        max_messages=s.get("max-messages", DEFAULT_MAX_MESSAGES),
        in_flight=s.get("in-flight", DEFAULT_IN_FLIGHT),
        workers=workers,
        post_process=post,
        poll=poll,
        attachments=s.get("attachments", "keep"),
        headers=s.get("headers"),
        keep_original=s.get("keep-original", False),
        claim=s.get("claim", True),
        keep_connection=s.get("keep-connection", DEFAULT_KEEP_CONNECTION),
        pos=s.pos,
        positions=dict(s.positions),
    )


SPEC = BlockSpec(
    keyword="sender",
    adapter="mail",
    summary="Polls a mailbox over IMAP4 or POP3 and turns each mail into a message.",
    settings=SETTINGS,
    required=("protocol", "address", "auth"),
    build=build,
    example="""sender mail {
    protocol      imap
    address       "imap.example.com:993"
    protection    imaps
    auth          plain credential "inbox"
    poll          idle
}""",
)
