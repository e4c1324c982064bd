"""POP3: our own asyncio client, the logged-in session, the maildrop as a mailbox, the
one module that maps POP3 failures into the exception tree (``errors``), and
``flowrt test pop3``."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
