"""Settings that the mail sender and the mail receiver share: where and how to connect."""

from __future__ import annotations

import datetime as dt

from flowrt.adapters.mail.model import Address, Auth, Connection, Proxy
from flowrt.dsl.spec import Report, Settings, SettingSpec
from flowrt.dsl.values import SpecError, ValueReader, split_host_port

PROTECTIONS = (
    "off",
    "starttls-mandatory",
    "starttls-optional",
    "smtps",
    "imaps",
    "pop3s",
    "connector-tls",
)
# The on-premise connector does the TLS handshake (a tcp-tls mapping): the flow speaks plain
# to the connector, so the model says protection off with the plain login allowed.
CONNECTOR_TLS = "connector-tls"
IMPLICIT_TLS = {"smtp": "smtps", "imap": "imaps", "pop3": "pop3s"}
DEFAULT_PORTS = {
    ("smtp", "plain"): 25,
    ("smtp", "starttls"): 587,
    ("smtp", "implicit"): 465,
    ("imap", "plain"): 143,
    ("imap", "starttls"): 143,
    ("imap", "implicit"): 993,
    ("pop3", "plain"): 110,
    ("pop3", "starttls"): 110,
    ("pop3", "implicit"): 995,
}
DEFAULT_TIMEOUT = dt.timedelta(seconds=30)
MAX_TIMEOUT = dt.timedelta(minutes=5)
DEFAULT_PROTECTION = "starttls-mandatory"


def default_port(protocol: str, protection: str) -> int:
    if protection in IMPLICIT_TLS.values() or protection == CONNECTOR_TLS:
        family = "implicit"
    elif protection.startswith("starttls"):
        family = "starttls"
    else:
        family = "plain"
    return DEFAULT_PORTS[(protocol, family)]


def _address(r: ValueReader) -> tuple[str, int | None]:
    value = r.string('"host:port"')
    try:
        host, port = split_host_port(value.text)
    except ValueError as exc:
        raise r.fail(value, f"bad address {value.shown()}: {exc}") from None
    r.end()
    return host, port


def _proxy(r: ValueReader) -> Proxy:
    kind = r.word(["internet", "on-premise"])
    if kind == "internet":
        r.end()
        return Proxy("internet")
    r.keyword("location")
    location = r.template('a location ID such as "plant-1"')
    if location.is_literal and not location.literal.strip():
        raise SpecError("proxy: the location ID is empty", location.pos)
    r.end()
    return Proxy("on-premise", location)


def _protection(r: ValueReader) -> str:
    return r.choice(PROTECTIONS)


def _auth(r: ValueReader) -> Auth:
    method = r.word(["none", "plain", "encrypted", "oauth2"])
    credential: str | None = None
    if r.maybe_keyword("credential"):
        name = r.string('a credential name such as "smtp-out"')
        if not name.text.strip():
            raise r.fail(name, "the credential name is empty")
        credential = name.text
        if method == "none":
            raise r.fail(name, "auth none takes no credential")
    user: str | None = None
    if r.maybe_keyword("user"):
        value = r.string('the mailbox address to log in as, such as "plant@example.com"')
        if method != "oauth2":
            raise r.fail(
                value,
                "user goes with auth oauth2; for plain and encrypted the credential holds the user",
            )
        if not value.text.strip() or any(c.isspace() for c in value.text):
            raise r.fail(value, f"bad user {value.shown()}")
        user = value.text
    r.end()
    return Auth(method, credential, user)  # type: ignore[arg-type]


def _timeout(r: ValueReader) -> dt.timedelta:
    value = r.duration(above=dt.timedelta(0), below=MAX_TIMEOUT)
    r.end()
    return value


def connection_settings(default_auth: str | None) -> tuple[SettingSpec, ...]:
    auth_default = f"{default_auth}" if default_auth else None
    return (
        SettingSpec(
            "address",
            '"host:port"',
            "Server to connect to; the port defaults by protocol and protection "
            "(SMTP 25/587/465, IMAP 143/993, POP3 110/995).",
            _address,
            example='address "mail.example.com:993"',
        ),
        SettingSpec(
            "proxy",
            'internet | on-premise location "ID"',
            "Connect directly, or through the on-premise connector registered for the "
            "location ID (`flowrt locations add`). The ID may be an expression.",
            _proxy,
            default="internet",
            example='proxy on-premise location "plant-1"',
        ),
        SettingSpec(
            "protection",
            " | ".join(PROTECTIONS),
            "TLS: none, STARTTLS (mandatory fails when the server does not offer it), "
            "implicit TLS matching the protocol, or connector-tls: the on-premise connector "
            "does TLS to the server (a tcp-tls mapping; needs proxy on-premise, and permits "
            "auth plain; the port defaults to the implicit TLS one).",
            _protection,
            default=DEFAULT_PROTECTION,
        ),
        SettingSpec(
            "auth",
            'none | plain | encrypted | oauth2 [credential "NAME"] [user "ADDRESS"]',
            "How to log in: plain user/password (only over TLS), encrypted (CRAM-MD5), or "
            "OAuth2 (OAUTHBEARER or XOAUTH2, as the server offers); the credential is a name "
            "in the tenant credential store. With oauth2, user is the mailbox to log in as "
            "(required on a sender; a receiver logs in as the credential's user, else its "
            "from address, unless told).",
            _auth,
            default=auth_default,
            example='auth encrypted credential "smtp-out"',
        ),
        SettingSpec(
            "timeout",
            "DURATION",
            "Connect and read timeout; more than 0 and less than 5m.",
            _timeout,
            default="30s",
        ),
        SettingSpec(
            "allow-plaintext-auth",
            "[yes | no]",
            "Permit auth plain over a connection that is not encrypted (not recommended).",
            ValueReader.flag,
            default="no",
        ),
    )


def build_connection(
    s: Settings, protocol: str, default_auth: str | None, report: Report
) -> Connection | None:
    """Check the connection settings of one block together and build its Connection."""
    protection: str = s.get("protection", DEFAULT_PROTECTION)
    proxy: Proxy = s.get("proxy", Proxy("internet"))
    allow_plain: bool = s.get("allow-plaintext-auth", False)
    auth: Auth | None = s.get("auth")
    if auth is None and default_auth is not None:
        auth = Auth(default_auth)  # type: ignore[arg-type]
    ok = True

    by_connector = protection == CONNECTOR_TLS
    if by_connector:
        if proxy.type != "on-premise":
            report.error(
                s.where("protection"),
                "conflict",
                "protection connector-tls means the on-premise connector does TLS (a tcp-tls "
                'mapping): it needs proxy on-premise location "ID"; for a direct '
                f"connection use {IMPLICIT_TLS[protocol]} or starttls-mandatory",
            )
            ok = False
        protection, allow_plain = "off", True
    implicit = IMPLICIT_TLS[protocol]
    if protection in IMPLICIT_TLS.values() and protection != implicit:
        report.error(
            s.where("protection"),
            "conflict",
            f"protection {protection} does not fit protocol {protocol} (use {implicit})",
        )
        ok = False
    if auth is None:
        ok = False  # reported by the block as a missing required setting
    else:
        if auth.method != "none" and auth.credential is None:
            report.error(
                s.where("auth"),
                "missing-credential",
                f'auth {auth.method} needs a credential: auth {auth.method} credential "NAME"',
            )
        if auth.method == "oauth2" and protocol != "smtp" and auth.user is None:
            report.error(
                s.where("auth"),
                "missing-user",
                "auth oauth2 on a sender needs the mailbox to log in as: auth oauth2 "
                'credential "NAME" user "mailbox@example.com"',
            )
        if auth.method == "none" and protocol != "smtp":
            report.error(
                s.where("auth"),
                "bad-value",
                f"auth none is not possible for {protocol}: a mailbox needs a login",
            )
        if auth.method == "plain":
            if protection == "off" and not allow_plain:
                report.error(
                    s.where("auth"),
                    "plaintext-auth",
                    "auth plain over protection off sends the password in clear text; use "
                    "starttls-mandatory or implicit TLS, or add allow-plaintext-auth",
                )
            elif protection == "off" and not by_connector:
                report.warning(
                    s.where("allow-plaintext-auth"),
                    "plaintext-auth",
                    "the password is sent in clear text (allow-plaintext-auth)",
                )
            elif protection == "starttls-optional" and not allow_plain:
                report.warning(
                    s.where("protection"),
                    "plaintext-auth",
                    "with starttls-optional and auth plain, a server without STARTTLS makes "
                    "the login fail (it is refused unless allow-plaintext-auth)",
                )
    if proxy.type == "on-premise" and protection in IMPLICIT_TLS.values():
        report.warning(
            s.where("protection"),
            "tls-on-premise",
            f"{protection} through the on-premise connector: with a tcp-tls mapping the "
            "connector does TLS (use protection connector-tls); with a tcp mapping keep it",
        )
    if not ok or not s.written("address"):
        return None
    host, port = s.get("address")
    explicit = port is not None
    if port is None:
        port = default_port(protocol, CONNECTOR_TLS if by_connector else protection)
    assert auth is not None
    return Connection(
        address=Address(host, port, explicit),
        proxy=proxy,
        protection=protection,  # type: ignore[arg-type]
        auth=auth,
        timeout=s.get("timeout", DEFAULT_TIMEOUT),
        allow_plaintext_auth=allow_plain,
    )
