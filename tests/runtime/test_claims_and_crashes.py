"""Two runtimes that share no state on one mailbox, and runtimes killed mid-batch.

The real stack: Dovecot holds the source mailbox, each runtime (``flowrt run``, a
subprocess) sends through Postfix, which delivers into a Dovecot target mailbox that an
independent IMAP client reads.
"""

from __future__ import annotations

import email
import email.policy
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowrt.mpl.model import MplStatus
from flowrt.mpl.store import MplStore
from flowrt.tenant import Tenant
from tests.runtime.test_runtime_e2e import (
    Runtime,
    add_user_credential,
    flowrt,
    mail,
    wait_for,
    write_flow,
)
from tests.servers import DovecotServer, MailboxUser, PostfixServer

pytestmark = pytest.mark.servers

COUNT = 200


def make_tenant(root: Path, test_ca: Any) -> Path:
    assert flowrt(root, "init").exit_code == 0
    ca = root.parent / f"{root.name}-ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    assert flowrt(root, "keystore", "add", "test-root", str(ca)).exit_code == 0
    return root


def setup_tenant(
    root: Path, test_ca: Any, dovecot: DovecotServer, stack: dict[str, Any], steps: str = ""
) -> Path:
    tenant = make_tenant(root, test_ca)
    add_user_credential(tenant, "source", stack["source"])
    add_user_credential(
        tenant,
        "smtp-out",
        MailboxUser("accounting@example.com", dovecot.password("accounting@example.com")),
    )
    flow = write_flow(root.parent / f"{root.name}.flow", stack, name="claims", steps=steps)
    assert flowrt(tenant, "deploy", str(flow)).exit_code == 0
    return tenant


@pytest.fixture
def stack(
    dovecot: DovecotServer, postfix: PostfixServer, new_mailbox_user: Callable[..., MailboxUser]
) -> dict[str, Any]:
    return {
        "source": new_mailbox_user(prefix="src"),
        "target": new_mailbox_user(prefix="dst"),
        "imap": dovecot.imap_port,
        "smtps": postfix.smtps_port,
    }


def arrived(dovecot: DovecotServer, user: MailboxUser) -> Counter[str]:
    found: Counter[str] = Counter()
    for _uid, _flags, raw in dovecot.messages(user.address):
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        found[str(parsed["Subject"])] += 1
    return found


def fill(dovecot: DovecotServer, user: MailboxUser) -> list[str]:
    subjects = [f"mail {index}" for index in range(COUNT)]
    for subject in subjects:
        dovecot.append(user.address, "INBOX", mail(subject))
    return [f"Fwd: {s}" for s in subjects]


def completed_by_mail(tenant: Path) -> tuple[Counter[str], int]:
    """COMPLETED MPL entries per source mail (its ``source`` property), and how many
    entries are still PROCESSING."""
    per_mail: Counter[str] = Counter()
    with MplStore(Tenant(tenant).mpl_path) as store:
        processing = len(store.list_entries(status=MplStatus.PROCESSING, limit=None))
        for summary in store.list_entries(status=MplStatus.COMPLETED, limit=None):
            entry = store.get(summary.message_id)
            for source in entry.custom_properties.get("source", ()):
                per_mail[source] += 1
    return per_mail, processing


def test_two_tenants_on_one_mailbox_deliver_each_mail_once(
    tmp_path: Path, test_ca: Any, dovecot: DovecotServer, stack: dict[str, Any]
) -> None:
    tenants = [setup_tenant(tmp_path / f"t{i}", test_ca, dovecot, stack) for i in (1, 2)]
    runtimes = [Runtime(t) for t in tenants]
    try:
        expected = fill(dovecot, stack["source"])  # while both poll
        wait_for(
            lambda: sum(arrived(dovecot, stack["target"]).values()) >= COUNT,
            timeout=120,
            what="every mail",
        )
        time.sleep(2.5)  # two more polls each: nothing may come twice
    finally:
        for runtime in runtimes:
            runtime.stop()
    got = arrived(dovecot, stack["target"])
    assert sorted(got) == sorted(expected)
    assert [s for s, n in got.items() if n > 1] == []
    done = [sum(completed_by_mail(t)[0].values()) for t in tenants]
    assert sum(done) == COUNT
    assert all(done), f"one tenant did everything ({done}); the test proves nothing"


def test_sigkill_during_processing_loses_nothing_and_leaves_one_final_entry_per_mail(
    tmp_path: Path, test_ca: Any, dovecot: DovecotServer, stack: dict[str, Any]
) -> None:
    (tmp_path / "slow.py").write_text("import time\n\ndef pause(exchange):\n    time.sleep(0.01)\n")
    expected = fill(dovecot, stack["source"])
    tenant = setup_tenant(
        tmp_path / "tenant", test_ca, dovecot, stack, steps='        script "slow:pause"'
    )
    rng = random.Random(13)
    kills = 0
    while kills < 10:
        runtime = Runtime(tenant)
        time.sleep(rng.uniform(0.3, 1.2))
        runtime.proc.send_signal(signal.SIGKILL)
        runtime.proc.wait(timeout=10)
        runtime._log_file.close()
        kills += 1
    runtime = Runtime(tenant)
    try:
        wait_for(
            lambda: set(arrived(dovecot, stack["target"])) >= set(expected),
            timeout=120,
            what="every mail",
        )
        wait_for(
            lambda: sum(completed_by_mail(tenant)[0].values()) >= COUNT,
            timeout=30,
            what="every MPL entry",
        )
    finally:
        assert runtime.stop() == 0
    assert sorted(arrived(dovecot, stack["target"])) == sorted(expected)  # 0 lost
    per_mail, processing = completed_by_mail(tenant)
    assert processing == 0
    assert len(per_mail) == COUNT
    assert [k for k, n in per_mail.items() if n != 1] == []
    source = dovecot.messages(stack["source"].address)
    assert all("\\Seen" in flags for _u, flags, _r in source)
