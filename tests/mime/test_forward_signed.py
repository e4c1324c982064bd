"""A signed mail forwarded by a flow still verifies (issue 12).

The partner's client is openssl: it signs a mail (text and a PDF, multipart/signed), flowrt
reads it as the sender adapter does and forwards it; openssl verifies what arrives.
"""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from flowrt.adapters.mail.mime.read import mail_to_exchange
from tests.mime.conftest import Pki, composer
from tests.mime.test_smime import files, openssl, verify

__all__ = ["files"]  # the fixture, used by name

FORWARD = """
from        "flow@example.com"
to          "archive@example.com"
subject     "Fwd: ${header.Subject}"
body        "${body}"
attachments from-message
"""
CONTENT = (
    b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
    b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\nThe signed order, 12 pieces.\r\n"
    b"--inner\r\nContent-Type: application/pdf; name=order.pdf\r\n"
    b"Content-Disposition: attachment; filename=order.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJSVFT0YK\r\n--inner--\r\n"
)


@pytest.fixture
def signed_mail(files: Path, pki: Pki) -> bytes:
    """A detached S/MIME signature made by openssl, as a partner's client sends it."""
    (files / "content.eml").write_bytes(CONTENT)
    result = openssl(
        "smime",
        "-sign",
        "-signer",
        str(files / "signer.pem"),
        "-inkey",
        str(files / "signer.key"),
        "-in",
        str(files / "content.eml"),
        "-from",
        "partner@example.org",
        "-to",
        "orders@example.com",
        "-subject",
        "Order 77",
        data=b"",
    )
    assert result.returncode == 0, result.stderr.decode()
    verify(result.stdout, files)  # the partner's mail is good to begin with
    return result.stdout.replace(b"\r\n", b"\n")  # as a mailbox on disk holds it


def test_forwarded_signed_mail_verifies(signed_mail: bytes, files: Path) -> None:
    exchange = mail_to_exchange(signed_mail)
    assert exchange.sealed is not None
    assert [a.name for a in exchange.attachments] == ["order.pdf", "smime.p7s"]
    sent = composer(FORWARD).compose(exchange).data
    assert b"Subject: Fwd: Order 77" in sent
    content = verify(sent, files)
    assert b"The signed order, 12 pieces." in content


def test_forwarded_signed_mail_with_a_flow_header_verifies(signed_mail: bytes, files: Path) -> None:
    exchange = mail_to_exchange(signed_mail)
    exchange.headers.set("X-Forwarded-By", "flowrt")
    exchange.flow_headers.add("x-forwarded-by")
    sent = composer(FORWARD).compose(exchange).data
    assert b"X-Forwarded-By: flowrt" in sent
    verify(sent, files)


def test_changed_signed_mail_is_rebuilt_without_a_false_signature(
    signed_mail: bytes, files: Path
) -> None:
    exchange = mail_to_exchange(signed_mail)
    exchange.set_text("Changed by the flow.\n")
    sent = composer(FORWARD).compose(exchange).data
    message = email.message_from_bytes(sent)
    assert message.get_content_type() == "multipart/mixed"
    names = [p.get_filename() for p in message.walk() if p.get_filename()]
    assert names == ["order.pdf", "smime.p7s"]  # kept, though it signs nothing any more


def test_signed_mail_forwarded_whole_verifies(signed_mail: bytes, files: Path) -> None:
    exchange = mail_to_exchange(signed_mail)
    sent = composer(FORWARD.replace("from-message", "original")).compose(exchange).data
    message = email.message_from_bytes(sent)
    attached = [p for p in message.walk() if p.get_content_type() == "message/rfc822"]
    assert len(attached) == 1
    start = sent.index(b"MIME-Version: 1.0", sent.index(b"message/rfc822"))
    inner = sent[start : sent.rindex(b"\r\n--=_flowrt_")]
    verify(inner, files)
