"""The mail adapters: IMAP4/POP3 senders and the SMTP receiver."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
