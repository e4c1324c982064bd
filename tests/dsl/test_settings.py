"""Every setting of the flow DSL parses into the model (one test each, grouped)."""

from __future__ import annotations

import datetime as dt

import pytest

from flowrt.adapters.mail import model as mail
from flowrt.dsl import model as m
from tests.dsl.helpers import SENDER, flow, only_flow

POP3_SENDER = """    sender mail {
        protocol pop3
        address  "pop.example.com"
        protection %s
        auth     plain credential "in"
    }
"""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('address "imap.example.com:1993"', mail.Address("imap.example.com", 1993, True)),
        ('address "[::1]:143"', mail.Address("::1", 143, True)),
        ('address "127.0.0.1"', mail.Address("127.0.0.1", 993, False)),
    ],
)
def test_address(line: str, expected: mail.Address) -> None:
    text = flow(sender=SENDER.replace('address    "imap.example.com"', line) % "")
    sender = only_flow(text).sender
    assert sender.connection.address == expected


@pytest.mark.parametrize(
    ("protocol", "protection", "port"),
    [
        ("imap", "off", 143),
        ("imap", "starttls-mandatory", 143),
        ("imap", "imaps", 993),
        ("pop3", "starttls-optional", 110),
        ("pop3", "pop3s", 995),
    ],
)
def test_default_ports_of_senders(protocol: str, protection: str, port: int) -> None:
    sender = f"""    sender mail {{
        protocol {protocol}
        address "h"
        protection {protection}
        auth encrypted credential "c"
    }}
"""
    assert only_flow(flow(sender=sender)).sender.connection.address.port == port


@pytest.mark.parametrize(
    ("protection", "port"),
    [("off", 25), ("starttls-mandatory", 587), ("starttls-optional", 587), ("smtps", 465)],
)
def test_default_ports_of_receivers(protection: str, port: int) -> None:
    text = flow().replace("protection smtps", f"protection {protection}")
    assert only_flow(text).receivers[0].connection.address.port == port


def test_protection_defaults_to_starttls_mandatory() -> None:
    text = flow().replace("        protection smtps\n", "")
    receiver = only_flow(text).receivers[0]
    assert receiver.connection.protection == "starttls-mandatory"
    assert receiver.connection.address.port == 587


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("proxy internet", mail.Proxy("internet")),
        ('proxy on-premise location "plant-1"', "plant-1"),
        ('proxy on-premise location "${property.site}"', "property.site"),
    ],
)
def test_proxy(line: str, expected: object) -> None:
    proxy = only_flow(flow(sender_extra=line)).sender.connection.proxy
    if isinstance(expected, mail.Proxy):
        assert proxy == expected
    else:
        assert proxy.type == "on-premise"
        assert proxy.location is not None
        shown = proxy.location.literal or str(proxy.location.refs[0])
        assert shown == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("auth none", mail.Auth("none")),
        ('auth plain credential "smtp-out"', mail.Auth("plain", "smtp-out")),
        ('auth encrypted credential "smtp-out"', mail.Auth("encrypted", "smtp-out")),
        ('auth oauth2 credential "o365"', mail.Auth("oauth2", "o365")),
    ],
)
def test_receiver_auth(line: str, expected: mail.Auth) -> None:
    assert only_flow(flow(receiver_extra=line)).receivers[0].connection.auth == expected


def test_receiver_auth_defaults_to_none() -> None:
    assert only_flow(flow()).receivers[0].connection.auth == mail.Auth("none")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("500ms", 0.5), ("1m30s", 90), ("4m", 240)]
)
def test_timeout(text: str, seconds: float) -> None:
    sender = only_flow(flow(sender_extra=f"timeout {text}")).sender
    assert sender.connection.timeout == dt.timedelta(seconds=seconds)


def test_timeout_defaults_to_30s() -> None:
    assert only_flow(flow()).sender.connection.timeout == dt.timedelta(seconds=30)


def test_allow_plaintext_auth() -> None:
    text = flow(receiver_extra='auth plain credential "c"\nallow-plaintext-auth')
    text = text.replace("protection smtps", "protection off")
    receiver = only_flow(text).receivers[0]
    assert receiver.connection.allow_plaintext_auth


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_protocol(protocol: str) -> None:
    sender = POP3_SENDER % "pop3s" if protocol == "pop3" else None
    assert only_flow(flow(sender=sender)).sender.protocol == protocol


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", dt.timedelta(minutes=25)),
        ("keep-connection 2m", dt.timedelta(minutes=2)),
        ("keep-connection off", None),
    ],
)
def test_keep_connection(line: str, expected: dt.timedelta | None) -> None:
    assert only_flow(flow(sender_extra=line)).sender.keep_connection == expected


def test_folder_selection_and_defaults() -> None:
    sender = only_flow(flow()).sender
    assert (sender.folder, sender.selection, sender.max_messages) == ("INBOX", "unread", 100)
    sender = only_flow(
        flow(
            sender_extra='folder "Invoices/2026"\nselection all\n'
            "post-process delete\nmax-messages 7"
        )
    ).sender
    assert (sender.folder, sender.selection, sender.max_messages) == ("Invoices/2026", "all", 7)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("post-process mark-read", mail.PostProcess("mark-read")),
        ("post-process delete", mail.PostProcess("delete")),
        ('post-process archive "Done"', mail.PostProcess("archive", "Done")),
        ('post-process archive "Done" mark-read', mail.PostProcess("archive", "Done", True)),
        ("post-process keep", mail.PostProcess("keep")),
    ],
)
def test_post_process(line: str, expected: mail.PostProcess) -> None:
    assert only_flow(flow(sender_extra=line)).sender.post_process == expected


def test_post_process_defaults_by_protocol() -> None:
    assert only_flow(flow()).sender.post_process == mail.PostProcess("mark-read")
    pop3 = only_flow(flow(sender=POP3_SENDER % "pop3s")).sender
    assert pop3.post_process == mail.PostProcess("delete")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("poll every 5m", mail.PollEvery(dt.timedelta(minutes=5))),
        ("poll daily at 07:30", mail.PollDaily(dt.time(7, 30))),
        ('poll daily at 23:05 tz "Europe/Berlin"', mail.PollDaily(dt.time(23, 5), "Europe/Berlin")),
        ("poll idle", mail.PollIdle()),
    ],
)
def test_poll(line: str, expected: mail.Poll) -> None:
    assert only_flow(flow(sender_extra=line)).sender.poll == expected


@pytest.mark.parametrize("value", ["keep", "drop"])
def test_sender_attachments(value: str) -> None:
    assert only_flow(flow(sender_extra=f"attachments {value}")).sender.attachments == value


def test_headers_and_keep_original() -> None:
    sender = only_flow(flow(sender_extra='headers "From, Subject" "X-Id"\nkeep-original')).sender
    assert sender.headers == ("From", "Subject", "X-Id")
    assert sender.keep_original
    assert only_flow(flow()).sender.headers is None


def test_receiver_addresses_and_texts() -> None:
    receiver = only_flow(
        flow(
            receiver_extra=(
                'cc "c1@example.com, c2@example.com"\nbcc "${property.audit}"\n'
                'subject "Fwd: ${header.Subject}"\nbody "Hello ${header.From}"'
            )
        )
    ).receivers[0]
    assert [t.literal for t in receiver.cc] == ["c1@example.com", "c2@example.com"]
    assert [str(t.refs[0]) for t in receiver.bcc] == ["property.audit"]
    assert receiver.from_.literal == "a@example.com"
    assert [t.literal for t in receiver.to] == ["b@example.com"]
    assert receiver.subject is not None and receiver.subject.parts[0] == "Fwd: "
    assert receiver.body is not None and str(receiver.body.refs[0]) == "header.From"


def test_to_list_over_several_values() -> None:
    text = flow().replace('to         "b@example.com"', 'to "x@example.com", "y@example.com"')
    receiver = only_flow(text).receivers[0]
    assert [t.literal for t in receiver.to] == ["x@example.com", "y@example.com"]


def test_mime_settings() -> None:
    receiver = only_flow(
        flow(
            receiver_extra=(
                "body-type text/html\ncharset iso-8859-1\ntransfer-encoding quoted-printable"
            )
        )
    ).receivers[0]
    assert (receiver.body_type, receiver.charset, receiver.transfer_encoding) == (
        "text/html",
        "iso-8859-1",
        "quoted-printable",
    )
    default = only_flow(flow()).receivers[0]
    # issue 12: the default mirrors the mail read (text/plain for a plain-text mail)
    assert (default.body_type, default.charset, default.transfer_encoding) == (
        "auto",
        "utf-8",
        "auto",
    )


@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1", "windows-1252", "us-ascii"])
def test_charsets(charset: str) -> None:
    assert only_flow(flow(receiver_extra=f"charset {charset}")).receivers[0].charset == charset


@pytest.mark.parametrize("encoding", ["auto", "7bit", "8bit", "base64", "quoted-printable"])
def test_transfer_encodings(encoding: str) -> None:
    receiver = only_flow(flow(receiver_extra=f"transfer-encoding {encoding}")).receivers[0]
    assert receiver.transfer_encoding == encoding


def test_receiver_attachments() -> None:
    receiver = only_flow(
        flow(
            receiver_extra=(
                "attachments from-message\n"
                'attach "report.csv" type text/csv from property "report"\n'
                'attach "${header.X-Name}.txt" type text/plain from header "X-Content"'
            )
        )
    ).receivers[0]
    assert receiver.attachments_from_message
    assert [(a.content_type, a.source, a.source_name) for a in receiver.attach] == [
        ("text/csv", "property", "report"),
        ("text/plain", "header", "X-Content"),
    ]
    assert not only_flow(flow()).receivers[0].attachments_from_message


def test_sign_and_encrypt() -> None:
    receiver = only_flow(
        flow(
            receiver_extra=(
                'sign alias "our-key" algorithm sha384\nencrypt alias "partner-a, partner-b"'
            )
        )
    ).receivers[0]
    assert receiver.sign == mail.SmimeSpec(("our-key",), "sha384")
    assert receiver.encrypt == mail.SmimeSpec(("partner-a", "partner-b"), "aes256-cbc")


def test_flow_settings() -> None:
    parsed = only_flow(flow(flow_extra='description "does things"\nlog-level trace'))
    assert parsed.description == "does things"
    assert parsed.log_level is m.MplLogLevel.TRACE
    assert only_flow(flow()).log_level is m.MplLogLevel.INFO


def test_on_error() -> None:
    parsed = only_flow(flow(tail="    on-error {\n        retry 2 every 10s\n    }\n"))
    assert parsed.on_error == m.RetryPolicy(2, dt.timedelta(seconds=10), 1.0)
    assert parsed.on_error.delay(1) == 10
    assert only_flow(flow()).on_error is None
    backoff = only_flow(flow(tail="    on-error {\n        retry 3 every 1s backoff 2\n    }\n"))
    assert [backoff.on_error.delay(i) for i in (1, 2, 3)] == [1, 2, 4]


def test_several_flows_in_one_file() -> None:
    from tests.dsl.helpers import parse

    text = flow() + flow().replace("flow t {", "flow u {")
    assert [f.name for f in parse(text).flows] == ["t", "u"]


def test_comments_blank_lines_and_tabs() -> None:
    text = "# header comment\n\n" + flow(sender_extra="# a comment line\ntimeout 5s # why").replace(
        "    ", "\t"
    )
    assert only_flow(text).sender.connection.timeout == dt.timedelta(seconds=5)


def test_oauth2_auth_with_user() -> None:
    text = flow(receiver_extra='auth oauth2 credential "o365" user "robot@example.com"')
    assert only_flow(text).receivers[0].connection.auth == mail.Auth(
        "oauth2", "o365", "robot@example.com"
    )
