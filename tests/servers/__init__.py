"""Real mail servers on loopback for flowrt's tests and demo (no pytest imports here).

Private instances of the Debian packages (installed by ``scripts/install-servers``), each in
its own temporary directory, on free high ports of 127.0.0.1, supervised so that they are
stopped even when the process that started them dies:

* ``TestCA`` - root/intermediate CA and server certificates (cryptography);
* ``DovecotServer`` - IMAP/IMAPS/POP3/POP3S/LMTP + SASL auth, ``imaplib``-based helpers;
* ``PostfixServer`` - SMTP/submission/SMTPS with Dovecot SASL, LMTP delivery to Dovecot;
* ``DanteServer`` - SOCKS5 passing only listed destinations;
* ``AuthorizationServer`` - a tiny OAuth2 server (sign-in, tokens with rotation, introspection
  for Dovecot's ``oauth2`` passdb: ``DovecotServer(oauth2_introspection_url=...)``);
* ``ScriptedSMTPServer`` - aiosmtpd servers that misbehave on purpose;
* ``SmtpSink`` / ``run_smtp_source`` - Postfix' smtp-sink and smtp-source for benchmarks;
* ``MailStack`` - all of the above wired together (for ``scripts/demo``).

A missing server binary raises ``ServerUnavailable`` naming the Debian package; a server that
does not come up raises ``ServerStartError`` with the end of its log.
"""

from ._ports import free_port, port_is_open, wait_for_port
from ._proc import ServerStartError, ServerUnavailable
from .ca import DEFAULT_SERVER_NAMES, ServerCert, TestCA
from .dante import DanteServer
from .dovecot import DEFAULT_USERS, DovecotServer, MailboxUser, Message
from .oauth2 import AuthorizationServer
from .postfix import (
    DEFAULT_DOMAINS,
    SMTP_SINK,
    SMTP_SOURCE,
    DeliveryFailed,
    PostfixServer,
    SmtpSink,
    SmtpSourceResult,
    run_smtp_source,
)
from .scripted_smtp import ReceivedMessage, Script, ScriptedSMTPServer, cram_md5_response
from .stack import MailStack, proxied_destinations

__all__ = [
    "DEFAULT_DOMAINS",
    "DEFAULT_SERVER_NAMES",
    "DEFAULT_USERS",
    "SMTP_SINK",
    "SMTP_SOURCE",
    "AuthorizationServer",
    "DanteServer",
    "DeliveryFailed",
    "DovecotServer",
    "MailStack",
    "MailboxUser",
    "Message",
    "PostfixServer",
    "ReceivedMessage",
    "Script",
    "ScriptedSMTPServer",
    "ServerCert",
    "ServerStartError",
    "ServerUnavailable",
    "SmtpSink",
    "SmtpSourceResult",
    "TestCA",
    "cram_md5_response",
    "free_port",
    "port_is_open",
    "proxied_destinations",
    "run_smtp_source",
    "wait_for_port",
]
