"""Connectivity tests: the protocol-independent parts (stages and verdict, the peer's
certificate chain). The protocol checks live beside their protocols
(``flowrt.adapters.mail.{smtp,imap,pop3}.check``).

A check tries a mail server the way a flow would, stage by stage.

Each check prints its stages as they happen (connect, TLS with the server's chain and
whether the keystore trusts it, greeting and capabilities, authentication, mailbox checks)
and ends in one verdict. Failures are MessagingException chains with hints, the same a
deployed flow would record.
"""

from flowrt.connectivity.report import ConnectivityReport, Stage

__all__ = ["ConnectivityReport", "Stage"]
