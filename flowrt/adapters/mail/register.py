"""The mail adapter's registration: its DSL blocks, its factory and its deploy checks.

Read by :mod:`flowrt.adapters.registry`; nothing here loads a protocol library.
"""

from __future__ import annotations

from flowrt.adapters.mail.spec import receiver, sender
from flowrt.adapters.registry import Adapter

ADAPTER = Adapter(
    name="mail",
    blocks=(sender.SPEC, receiver.SPEC),
    factory="flowrt.adapters.mail.runtime:MailRuntime",
    checks="flowrt.adapters.mail.references:check_references",
)
