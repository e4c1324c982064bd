"""The mail sender: the poller (hand-over rules: idempotency, when the mailbox changes),
the mailbox interface both protocols implement, the resolved endpoint, and the session
opening IMAP and POP3 share."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
