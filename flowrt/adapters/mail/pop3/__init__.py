"""POP3: our own asyncio client, the logged-in session, the maildrop as a mailbox, and
``flowrt test pop3``."""
