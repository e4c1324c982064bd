"""DSL spec of ``receiver mail NAME { ... }``: sending the message as a mail over SMTP."""

from __future__ import annotations

import re

from flowrt.adapters.mail.model import AttachSpec, Receiver, SmimeSpec
from flowrt.adapters.mail.spec.connection import build_connection, connection_settings
from flowrt.dsl.model import Template
from flowrt.dsl.spec import BlockSpec, Report, Settings, SettingSpec
from flowrt.dsl.template import parse_ref
from flowrt.dsl.values import ValueReader

CHARSETS = ("utf-8", "iso-8859-1", "windows-1252", "us-ascii")
TRANSFER_ENCODINGS = ("auto", "7bit", "8bit", "base64", "quoted-printable")
SIGN_ALGORITHMS = ("sha256", "sha384", "sha512")
ENCRYPT_ALGORITHMS = ("aes128-cbc", "aes256-cbc")
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def _one_template(what: str):  # type: ignore[no-untyped-def]
    def parse(r: ValueReader) -> Template:
        value = r.template(what)
        r.end()
        return value

    return parse


def _addresses(r: ValueReader) -> tuple[Template, ...]:
    return r.address_list('addresses, comma-separated, such as "a@example.com, b@example.com"')


def _body_type(r: ValueReader) -> str:
    nxt = r.peek()
    if nxt is not None and not nxt.quoted and nxt.text == "auto":
        return r.choice(["auto"])
    value = _mime_type_value(r)
    r.end()
    return value


def _attachments(r: ValueReader) -> frozenset[str]:
    words = {r.word(["from-message", "original", "none"])}
    while not r.at_end():
        value = r.peek()
        words.add(r.word(["from-message", "original"]))
        if "none" in words and value is not None:
            raise r.fail(value, "attachments none stands alone")
    return frozenset(words - {"none"})


def _attach(r: ValueReader) -> AttachSpec:
    start = r.pos
    name = r.template('an attachment name such as "report.pdf"')
    r.keyword("type")
    mime = _mime_type_value(r)
    r.keyword("from")
    source = r.word(["header", "property"])
    field = r.string(f"the {source} that holds the content")
    if not field.text:
        raise r.fail(field, f"the {source} name is empty")
    parse_ref(f"{source}.{field.text}", field.pos)
    r.end()
    return AttachSpec(name, mime, source, field.text, start)  # type: ignore[arg-type]


def _mime_type_value(r: ValueReader) -> str:
    value = r.string("a MIME type such as text/plain")
    if not _MIME_TYPE.fullmatch(value.text):
        raise r.fail(value, f"bad MIME type {value.shown()}: expected TYPE/SUBTYPE, e.g. text/html")
    return value.text.lower()


def _smime(algorithms: tuple[str, ...], default: str):  # type: ignore[no-untyped-def]
    def parse(r: ValueReader) -> SmimeSpec:
        r.keyword("alias")
        aliases: list[str] = []
        while True:
            value = r.string('a keystore alias such as "partner-cert"')
            aliases.extend(a.strip() for a in value.text.split(",") if a.strip())
            nxt = r.peek()
            if nxt is None or (not nxt.quoted and nxt.text == "algorithm"):
                break
        algorithm = default
        if r.maybe_keyword("algorithm"):
            algorithm = r.word(algorithms)
        r.end()
        return SmimeSpec(tuple(aliases), algorithm)

    return parse


SETTINGS = (
    *connection_settings(default_auth="none"),
    SettingSpec(
        "from",
        '"ADDRESS"',
        "Sender address of the mail; may use ${...}.",
        _one_template("a sender address"),
    ),
    SettingSpec("to", '"ADDRESS, ..."', "Recipients, comma-separated.", _addresses),
    SettingSpec("cc", '"ADDRESS, ..."', "Copy recipients, comma-separated.", _addresses),
    SettingSpec(
        "bcc", '"ADDRESS, ..."', "Blind copy recipients (not written in the mail).", _addresses
    ),
    SettingSpec(
        "subject",
        '"TEXT"',
        "Subject; may use ${...}.",
        _one_template("a subject"),
        default='"${header.Subject}"',
    ),
    SettingSpec(
        "body", '"TEXT"', "Mail body; may use ${...}.", _one_template("a body"), default='"${body}"'
    ),
    SettingSpec(
        "html",
        '"TEXT"',
        "HTML alternative of the body (body-type auto); left out: the mail's HTML "
        "when body is the mail's own text.",
        _one_template("an HTML text"),
        default='"${body.html}"',
    ),
    SettingSpec(
        "body-type",
        "auto | TYPE/SUBTYPE",
        "auto mirrors the mail read: text and HTML as multipart/alternative, inline parts as "
        "multipart/related, HTML-only as text/html; a TYPE/SUBTYPE sends the body alone as it.",
        _body_type,
        default="auto",
    ),
    SettingSpec(
        "charset",
        " | ".join(CHARSETS),
        "Charset of the body and headers.",
        lambda r: r.choice(CHARSETS),
        default="utf-8",
    ),
    SettingSpec(
        "transfer-encoding",
        " | ".join(TRANSFER_ENCODINGS),
        "Content-Transfer-Encoding of the body; auto picks the smallest safe one.",
        lambda r: r.choice(TRANSFER_ENCODINGS),
        default="auto",
    ),
    SettingSpec(
        "attachments",
        "from-message | original | from-message original | none",
        "from-message: the message's attachments (and inline parts no HTML shows); "
        "original: the mail as read, as message/rfc822 (original.eml).",
        _attachments,
        default="none",
    ),
    SettingSpec(
        "attach",
        '"NAME" type TYPE/SUBTYPE from header|property "NAME"',
        "Attach the content of a header or property under a name (repeatable).",
        _attach,
        repeatable=True,
        example='attach "report.csv" type text/csv from property "report"',
    ),
    SettingSpec(
        "chunking",
        "auto | off",
        "auto: when the server offers CHUNKING (RFC 3030), a message up to 1 MB goes as one "
        "BDAT chunk in the same write as MAIL FROM and RCPT TO (one round trip a mail); off: "
        "always DATA, for a server that offers CHUNKING but mishandles it.",
        lambda r: r.choice(["auto", "off"]) == "auto",
        default="auto",
    ),
    SettingSpec(
        "sign",
        f'alias "ALIAS" [algorithm {"|".join(SIGN_ALGORITHMS)}]',
        "S/MIME-sign with a key pair from the tenant keystore.",
        _smime(SIGN_ALGORITHMS, "sha256"),
    ),
    SettingSpec(
        "encrypt",
        f'alias "ALIAS, ..." [algorithm {"|".join(ENCRYPT_ALGORITHMS)}]',
        "S/MIME-encrypt for the recipients' certificates in the tenant keystore.",
        _smime(ENCRYPT_ALGORITHMS, "aes256-cbc"),
    ),
)


def build(s: Settings, args: tuple[str, ...], report: Report) -> Receiver | None:
    if len(args) < 2:
        report.error(s.pos, "missing-name", "a receiver needs a name: receiver mail NAME { ... }")
        return None
    if len(args) > 2:
        report.error(s.pos, "syntax", f"unexpected {args[2]!r} after the receiver name")
    connection = build_connection(s, "smtp", "none", report)
    body_type = s.get("body-type", "auto")
    if s.written("html") and body_type != "auto":
        report.error(
            s.where("html"),
            "conflict",
            f"html needs body-type auto (body-type {body_type} sends the body alone)",
        )
    if connection is None or not s.written("from") or not s.written("to"):
        return None
    return Receiver(
        adapter=args[0],
        name=args[1],
        connection=connection,
        from_=s.get("from"),
        to=s.get("to"),
        cc=s.get("cc", ()),
        bcc=s.get("bcc", ()),
        subject=s.get("subject"),
        body=s.get("body"),
        body_type=body_type,
        charset=s.get("charset", "utf-8"),
        transfer_encoding=s.get("transfer-encoding", "auto"),
        attachments_from_message="from-message" in s.get("attachments", frozenset()),
        attach=tuple(s.get("attach", ())),
        sign=s.get("sign"),
        encrypt=s.get("encrypt"),
        pos=s.pos,
        positions=dict(s.positions),
        html=s.get("html"),
        attach_original="original" in s.get("attachments", frozenset()),
        chunking=s.get("chunking", True),
    )


SPEC = BlockSpec(
    keyword="receiver",
    adapter="mail",
    summary="Sends the message as a mail over SMTP.",
    settings=SETTINGS,
    required=("address", "from", "to"),
    build=build,
    example="""receiver mail accounting {
    address       "smtp.example.com:587"
    protection    starttls-mandatory
    auth          plain credential "smtp-out"
    from          "integration@example.com"
    to            "accounting@example.com, audit@example.com"
    subject       "Fwd: ${header.Subject}"
    attachments   from-message
}""",
)
