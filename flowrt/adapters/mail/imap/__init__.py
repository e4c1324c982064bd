"""IMAP4: the client (aioimaplib extended), response parsing, the logged-in session, the
folder as a mailbox, the one module that maps IMAP failures into the exception tree
(``errors``), and ``flowrt test imap``."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
