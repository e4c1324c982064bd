"""The mail adapters: IMAP4/POP3 senders and the SMTP receiver."""
