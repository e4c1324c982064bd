"""Tenant notifications: one mail server for the mails flowrt sends to people, alert rules,
a per-recipient limit with digests, and the log of every attempt.

* :mod:`~flowrt.notify.config`: the server, the rules and the limit (``notify.json``);
* :mod:`~flowrt.notify.rules`: events read from the MPL, the runtime status, the state DB
  and the keystore, matched against the rules;
* :mod:`~flowrt.notify.limiter`: at most N mails per recipient per 24 hours;
* :mod:`~flowrt.notify.compose` / :mod:`~flowrt.notify.send`: the mail and its delivery with
  the receivers' SMTP code;
* :mod:`~flowrt.notify.store`: attempts, counters and watermarks (``notify.sqlite``);
* :mod:`~flowrt.notify.notifier`: the runtime's task (``start_notifier``).
"""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
