"""IMAP4: the client (aioimaplib extended), response parsing, the logged-in session, the
folder as a mailbox, and ``flowrt test imap``."""
