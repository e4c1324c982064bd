"""MailComposer: receivers from flow text, mails read back with the stdlib parser."""

from __future__ import annotations

import dataclasses
import email
import random
import re
from email.message import EmailMessage, MIMEPart
from email.policy import default

import pytest

from flowrt.adapters.mail.mime.compose import MailComposer, OutgoingMail
from flowrt.adapters.mail.mime.read import mail_to_exchange
from flowrt.engine.exchange import Attachment, Exchange, Headers
from flowrt.errors import MessagingException, is_retryable
from tests.mime.conftest import composer, receiver, sample

BASIC = """
from "Integration <integration@example.com>"
to   "accounting@example.com, \\"Doe, John\\" <john@example.org>"
"""


def exchange(
    body: str = "Hello,\nthe report.\n", subject: str = "Report", **headers: str
) -> Exchange:
    ex = Exchange(body=body.encode(), headers=Headers([("Subject", subject)]))
    for name, value in headers.items():
        ex.headers.add(name.replace("_", "-"), value)
    return ex


def parse(mail: OutgoingMail) -> EmailMessage:
    message = email.message_from_bytes(mail.data, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(part: MIMEPart | None) -> str:
    """A text part's content; the mail is on the wire with CRLF, the test compares with LF."""
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def raw_headers(mail: OutgoingMail) -> str:
    return mail.data.split(b"\r\n\r\n", 1)[0].decode("ascii")


def only_crlf(data: bytes) -> bool:
    return b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")


# ----------------------------------------------------------------------------- headers


def test_round_trip_headers_and_envelope() -> None:
    mail = composer(BASIC + 'cc "audit@example.com"\nbcc "secret@example.com"').compose(exchange())
    assert mail.sender == "integration@example.com"
    assert mail.recipients == (
        "accounting@example.com",
        "john@example.org",
        "audit@example.com",
        "secret@example.com",
    )
    message = parse(mail)
    assert message["From"] == "Integration <integration@example.com>"
    assert message["To"] == 'accounting@example.com, "Doe, John" <john@example.org>'
    assert message["Cc"] == "audit@example.com"
    assert message["Subject"] == "Report"
    assert message["Date"] == "Mon, 03 Jun 2024 09:00:00 +0000"
    assert message["Message-ID"] == "<fixed-id@example.com>"
    assert message["MIME-Version"] == "1.0"
    assert "Bcc" not in message and b"secret@" not in mail.data
    assert only_crlf(mail.data)


def test_recipients_are_unique() -> None:
    mail = composer(
        """from "a@example.com"
        to "b@example.com, B@EXAMPLE.COM"
        cc "b@Example.com, c@example.com"
        bcc "c@example.com" """
    ).compose(exchange())
    assert mail.recipients == ("b@example.com", "B@EXAMPLE.COM", "c@example.com")


def test_addresses_from_the_message() -> None:
    c = composer('from "noreply@example.com"\nto "${header.Reply-To}"\ncc "${header.Cc}"')
    mail = c.compose(exchange(Reply_To="Jörg <joerg@bücher.example>, x@example.org"))
    assert mail.recipients == ("joerg@xn--bcher-kva.example", "x@example.org")
    assert parse(mail)["To"] == "Jörg <joerg@xn--bcher-kva.example>, x@example.org"
    assert "Cc" not in parse(mail)  # an empty cc is no cc


def test_trace_header_and_only_the_headers_the_flow_set() -> None:
    ex = exchange(Received="from relay.example", X_Forwarded_By="incoming value")
    message = parse(composer(BASIC).compose(ex))
    assert message["X-Flowrt-Message-Id"] == ex.message_id
    assert "X-Forwarded-By" not in message  # brought by the incoming mail: stays behind
    assert "Received" not in message

    ex.headers.set("X-Forwarded-By", "flowrt")
    ex.flow_headers.add("x-forwarded-by")
    ex.headers.set("Subject", "set by the flow")  # a receiver header: settings win
    ex.flow_headers.add("subject")
    message = parse(composer(BASIC + 'subject "From the receiver"').compose(ex))
    assert message["X-Forwarded-By"] == "flowrt"
    assert message["Subject"] == "From the receiver"
    assert "Received" not in message


def test_flow_header_with_a_line_break_is_refused() -> None:
    ex = exchange()
    ex.headers.set("X-Note", "a\r\nBcc: victim@example.com")
    ex.flow_headers.add("x-note")
    with pytest.raises(MessagingException, match="line break"):
        composer(BASIC).compose(ex)


def test_default_subject_and_body_come_from_the_message() -> None:
    ex = mail_to_exchange(sample("latin1.eml"))
    message = parse(composer(BASIC).compose(ex))
    assert message["Subject"] == "Grüße aus Köln"
    assert text_of(message) == "Grüße aus Köln, schöne Grüße!\n"


def test_templates_are_rendered() -> None:
    c = composer(BASIC + 'subject "Fwd: ${header.Subject}"\nbody "From ${header.From}:\\n${body}"')
    message = parse(c.compose(exchange(body="text\n", From="x@example.org")))
    assert message["Subject"] == "Fwd: Report"
    assert text_of(message) == "From x@example.org:\ntext\n"


@pytest.mark.parametrize(
    ("charset", "encoded"),
    [
        ("utf-8", "=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?="),  # B: shorter than Q here
        ("iso-8859-1", "=?iso-8859-1?q?Gr=FC=DFe_aus_K=F6ln?="),
        ("windows-1252", "=?windows-1252?q?Gr=FC=DFe_aus_K=F6ln?="),
        ("us-ascii", "=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?="),  # ASCII cannot: UTF-8
    ],
)
def test_subject_is_encoded_in_the_receiver_charset(charset: str, encoded: str) -> None:
    c = composer(BASIC + f'charset {charset}\nbody "plain"')
    mail = c.compose(exchange(subject="Grüße aus Köln"))
    assert f"Subject: {encoded}" in raw_headers(mail)
    assert parse(mail)["Subject"] == "Grüße aus Köln"


def test_subject_that_the_charset_cannot_hold_falls_back_to_utf8() -> None:
    mail = composer(BASIC + "charset iso-8859-1").compose(exchange(subject="Preis: 5 €"))
    assert "=?utf-8?" in raw_headers(mail)
    assert parse(mail)["Subject"] == "Preis: 5 €"


def test_long_subject_is_folded() -> None:
    subject = "Rechnung" + " Grüße" * 30
    mail = composer(BASIC).compose(exchange(subject=subject))
    assert all(len(line) <= 78 for line in raw_headers(mail).split("\r\n"))
    assert parse(mail)["Subject"] == subject


def test_message_id_and_date_are_generated() -> None:
    mail = MailComposer(receiver(BASIC)).compose(exchange())
    message = parse(mail)
    assert re.fullmatch(r"<[^@\s]+@example\.com>", message["Message-ID"])
    assert message["Date"].datetime is not None


# ----------------------------------------------------------------------------- body


@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1", "windows-1252", "us-ascii"])
def test_each_charset(charset: str) -> None:
    text = "Caf\u00e9 \u2013 5 \u20ac\n" if charset in ("utf-8", "windows-1252") else "Caf\u00e9\n"
    if charset == "us-ascii":
        text = "Cafe\n"
    message = parse(composer(BASIC + f"charset {charset}").compose(exchange(text)))
    body = message.get_body()
    assert body is not None
    assert body.get_content_charset() == charset
    assert body.get_payload(decode=True) == text.replace("\n", "\r\n").encode(charset)


@pytest.mark.parametrize(("charset", "text"), [("iso-8859-1", "5 €"), ("us-ascii", "Köln")])
def test_body_the_charset_cannot_hold(charset: str, text: str) -> None:
    with pytest.raises(MessagingException, match=f"cannot be written in {charset}") as caught:
        composer(BASIC + f"charset {charset}").compose(exchange(text))
    assert caught.value.hint and "utf-8" in caught.value.hint
    assert not is_retryable(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain ASCII\n", "7bit"),
        ("x" * 1200 + "\n", "quoted-printable"),  # ASCII, but a line too long for 7bit
        ("Grüße aus Köln, schöne Grüße an alle.\n", "quoted-printable"),  # mostly ASCII
        ("Привет, как дела? Всё хорошо.\n", "base64"),  # mostly 8-bit
        ("日本語のテキストです。\n", "base64"),
    ],
)
def test_auto_transfer_encoding(text: str, expected: str) -> None:
    message = parse(composer(BASIC).compose(exchange(text)))
    assert message["Content-Transfer-Encoding"] == expected
    assert text_of(message) == text


@pytest.mark.parametrize("cte", ["7bit", "8bit", "base64", "quoted-printable"])
def test_forced_transfer_encoding(cte: str) -> None:
    text = "plain\n" if cte == "7bit" else "Grüße, \u00fcber = 100%\n  trailing space \n"
    mail = composer(BASIC + f"transfer-encoding {cte}").compose(exchange(text))
    message = parse(mail)
    assert message["Content-Transfer-Encoding"] == cte
    assert text_of(message) == text
    assert only_crlf(mail.data)


def test_base64_text_uses_crlf_inside() -> None:
    message = parse(composer(BASIC + "transfer-encoding base64").compose(exchange("a\nb\n")))
    body = message.get_body()
    assert body is not None and body.get_payload(decode=True) == b"a\r\nb\r\n"


def test_forced_7bit_refuses_8bit_text() -> None:
    with pytest.raises(MessagingException, match="7bit cannot carry the body"):
        composer(BASIC + "transfer-encoding 7bit").compose(exchange("Grüße\n"))


def test_body_type_html() -> None:
    c = composer(BASIC + 'body-type text/html\nbody "<p>${header.Subject}</p>"')
    message = parse(c.compose(exchange()))
    assert message.get_content_type() == "text/html"
    assert text_of(message) == "<p>Report</p>\n"


# ----------------------------------------------------------------------------- attachments


def test_attachments_from_message() -> None:
    ex = mail_to_exchange(sample("rfc2231_filename.eml"))
    mail = composer(BASIC + "attachments from-message").compose(ex)
    message = parse(mail)
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body()
    assert text_of(body) == "Three ways to write a file name.\n"
    found = [
        (a.get_filename(), a.get_content_type(), a.get_content()) for a in _attachments(message)
    ]
    assert found == [
        ("Grüße aus Köln.pdf", "application/pdf", b"%PDF-1.4\n"),
        ("Straßenliste.csv", "text/csv", "a,b"),
        ("Prüfbericht.pdf", "application/pdf", b"%PDF-1.4\n"),
    ]
    assert "filename*=utf-8''Gr%C3%BC%C3%9Fe%20aus%20K%C3%B6ln.pdf" in mail.data.decode()
    assert only_crlf(mail.data)


def test_long_non_ascii_attachment_name() -> None:
    name = (
        "Prüfbericht über die Qualität der Lieferung vom dritten Juni zweitausendvierundzwanzig.pdf"
    )
    ex = exchange()
    ex.attachments = [Attachment(name, "application/pdf", b"%PDF")]
    message = parse(composer(BASIC + "attachments from-message").compose(ex))
    assert [a.get_filename() for a in _attachments(message)] == [name]
    again = mail_to_exchange(composer(BASIC + "attachments from-message").compose(ex).data)
    assert [a.name for a in again.attachments] == [name]


def test_no_attachments_without_the_setting() -> None:
    ex = mail_to_exchange(sample("pdf_attachment.eml"))
    message = parse(composer(BASIC).compose(ex))
    assert message.get_content_type() == "text/plain"


def test_split_branch_sends_only_its_attachment() -> None:
    ex = mail_to_exchange(sample("duplicate_names.eml"))
    branch = ex.copy()
    branch.attachment = ex.attachments[1]
    branch.branch = "split-2"
    message = parse(composer(BASIC + "attachments from-message").compose(branch))
    assert [(a.get_filename(), a.get_content()) for a in _attachments(message)] == [
        ("report-1.pdf", b"%PDF-1.4\nsecond\n")
    ]


def test_attach_from_property_and_header() -> None:
    c = composer(
        BASIC
        + 'attach "report-${header.Subject}.csv" type text/csv from property "report"\n'
        + 'attach "raw.bin" type application/octet-stream from property "raw"\n'
        + 'attach "subject.txt" type text/plain from header "Subject"'
    )
    ex = exchange()
    ex.properties["report"] = "Köln;5\n"
    ex.properties["raw"] = b"\x00\x01\xff"
    found = {a.get_filename(): a for a in _attachments(parse(c.compose(ex)))}
    assert list(found) == ["report-Report.csv", "raw.bin", "subject.txt"]
    assert found["report-Report.csv"].get_content_charset() == "utf-8"
    assert found["report-Report.csv"].get_payload(decode=True) == "Köln;5\n".encode()
    assert found["raw.bin"].get_payload(decode=True) == b"\x00\x01\xff"
    assert found["subject.txt"].get_payload(decode=True) == b"Report"


def test_attach_from_a_missing_property() -> None:
    c = composer(BASIC + 'attach "r.csv" type text/csv from property "report"')
    with pytest.raises(MessagingException, match="the property 'report' is not set"):
        c.compose(exchange())


def test_nested_mail_is_embedded_not_base64() -> None:
    ex = mail_to_exchange(sample("nested_message.eml"))
    mail = composer(BASIC + "attachments from-message").compose(ex)
    message = parse(mail)
    first = _attachments(message)[0]
    assert first.get_content_type() == "message/rfc822"
    assert first["Content-Transfer-Encoding"] == "7bit"
    again = mail_to_exchange(mail.data)
    assert [a.name for a in again.attachments] == ["Bestellung für Juni.eml", "message-1.eml"]
    assert again.attachments[0].data == ex.attachments[0].data.replace(b"\n", b"\r\n")
    assert only_crlf(mail.data)


def test_nested_mail_that_8bit_cannot_carry_goes_base64() -> None:
    ex = exchange()
    inner = b"From: a@example.com\nSubject: long\n\n" + b"x" * 2000 + b"\n"
    ex.attachments = [Attachment("long.eml", "message/rfc822", inner)]
    mail = composer(BASIC + "attachments from-message").compose(ex)
    (part,) = _attachments(parse(mail))
    assert part["Content-Transfer-Encoding"] == "base64"
    assert mail_to_exchange(mail.data).attachments[0].data == inner


def _attachments(message: EmailMessage) -> list[MIMEPart]:
    return list(message.iter_attachments())


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("settings", "ex", "what"),
    [
        (
            BASIC + 'subject "${header.Subject}"',
            exchange(subject="Hi\r\nBcc: x@evil.example"),
            "subject",
        ),
        (BASIC + 'subject "${header.Subject}"', exchange(subject="Hi\nthere"), "subject"),
        (BASIC + 'subject "${header.Subject}"', exchange(subject="Hi\x0bBcc: a@b.c"), "subject"),
        (
            'from "a@example.com"\nto "${header.X}"',
            exchange(X="b@example.com\r\nBcc: x@evil.example"),
            "to",
        ),
        ('from "${header.X}"\nto "b@example.com"', exchange(X="a@example.com\nX: y"), "from"),
    ],
)
def test_line_breaks_never_reach_the_headers(settings: str, ex: Exchange, what: str) -> None:
    with pytest.raises(MessagingException) as caught:
        composer(settings).compose(ex)
    message = str(caught.value)
    assert message.startswith(f"receiver 'out': {what} ")
    assert message.endswith("contains a line break; refusing to write it into the mail headers")
    assert not is_retryable(caught.value)


def test_line_break_in_an_attachment_name() -> None:
    ex = exchange()
    ex.attachments = [Attachment("a.pdf\r\nContent-Type: text/html", "application/pdf", b"x")]
    with pytest.raises(MessagingException, match=r"attachment name .* contains a line break"):
        composer(BASIC + "attachments from-message").compose(ex)


@pytest.mark.parametrize(
    ("settings", "ex", "message"),
    [
        ('from "a@example.com"\nto "${header.X}"', exchange(), 'to "${header.X}" is empty'),
        ('from "${header.X}"\nto "b@example.com"', exchange(), 'from "${header.X}" is empty'),
        ('from "a@example.com"\nto "${header.X}"', exchange(X="not an address"), "to: invalid"),
        (
            'from "a@example.com"\nto "${header.X}"',
            exchange(X="a@"),
            "to: invalid address list 'a@'",
        ),
        ('from "a@example.com"\nto "${header.X}"', exchange(X="a@-bad-.example"), "invalid domain"),
        ('from "a@example.com"\nto "${header.X}"', exchange(X="jörg@example.de"), "SMTPUTF8"),
        ('from "a@example.com, b@example.com"\nto "c@example.com"', exchange(), "one address"),
        (
            'from "a@example.com"\nto "c@example.com"\ncc "${header.X}"',
            exchange(X="@@"),
            "cc: invalid",
        ),
    ],
)
def test_bad_addresses(settings: str, ex: Exchange, message: str) -> None:
    with pytest.raises(MessagingException, match=re.escape(message)) as caught:
        composer(settings).compose(ex)
    assert str(caught.value).startswith("receiver 'out': ")


# ----------------------------------------------------------------------------- bytes


def test_equal_input_gives_equal_bytes() -> None:
    ex = mail_to_exchange(sample("pdf_attachment.eml"))
    c = composer(BASIC + "attachments from-message")
    first = c.compose(ex)
    assert c.compose(ex) == first
    assert c.compose(dataclasses.replace(ex)) == first
    assert composer(BASIC + "attachments from-message").compose(ex.copy()) == first


def test_equal_input_with_real_clock_differs_only_in_date_and_message_id() -> None:
    c = MailComposer(receiver(BASIC + "attachments from-message"))
    ex = mail_to_exchange(sample("pdf_attachment.eml"))
    first, second = c.compose(ex).data, c.compose(ex).data

    def strip(data: bytes) -> bytes:
        data = re.sub(rb"(?m)^(Date|Message-ID): .*\r\n", b"", data)
        return re.sub(rb"=_flowrt_[0-9a-f]+", b"BOUNDARY", data)

    assert strip(first) == strip(second)


def test_outgoing_mail_is_frozen() -> None:
    mail = composer(BASIC).compose(exchange())
    with pytest.raises(dataclasses.FrozenInstanceError):
        mail.data = b""  # type: ignore[misc]


# ----------------------------------------------------------------------------- robustness

_ALPHABET = "abcXYZ äöüß€–“”日本\x00\x07\t =?\"'<>@,;:\\()[].%*"
_TYPES = ["application/pdf", "text/plain", "message/rfc822", "message/delivery-status", "x"]


def test_odd_values_give_a_clean_mail_or_a_messaging_exception() -> None:
    rng = random.Random(20240603)  # fixed: a failure here can be replayed

    def text(longest: int) -> str:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(longest)))

    composers = [
        composer(
            'from "a@example.com"\nto "b@example.com"\ncc "${header.Cc}"\n'
            f'subject "${{header.Subject}}"\ncharset {charset}\ntransfer-encoding {cte}\n'
            "attachments from-message"
        )
        for charset in ("utf-8", "iso-8859-1", "us-ascii")
        for cte in ("auto", "8bit", "quoted-printable")
    ]
    made = 0
    for _ in range(400):
        ex = exchange(text(300) + rng.choice(["", "\r\n", "\n\u2028"]) + text(50), text(120))
        ex.headers.add("Cc", rng.choice(["", "", text(20)]))
        ex.attachments = [
            Attachment(text(40), rng.choice(_TYPES), text(200).encode())
            for _ in range(rng.randrange(3))
        ]
        try:
            mail = rng.choice(composers).compose(ex)
        except MessagingException:
            continue
        made += 1
        assert only_crlf(mail.data)
        head = mail.data.split(b"\r\n\r\n", 1)[0]
        assert all(b":" in line or line[:1] in b" \t" for line in head.split(b"\r\n"))
        assert mail_to_exchange(mail.data).headers.get("To") == "b@example.com"
    assert made > 30
