"""The mail sender: the poller (hand-over rules: idempotency, when the mailbox changes),
the mailbox interface both protocols implement, the resolved endpoint, and the session
opening IMAP and POP3 share."""
