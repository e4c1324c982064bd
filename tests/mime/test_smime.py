"""S/MIME sign and encrypt, verified by openssl (the reference a partner's mail client uses)."""

from __future__ import annotations

import datetime as dt
import email
import shutil
import subprocess
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from flowrt.adapters.mail.mime import smime
from flowrt.adapters.mail.mime.compose import MailComposer
from flowrt.adapters.mail.mime.read import mail_to_exchange
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import KeystoreError, MessagingException, is_retryable
from flowrt.security.keystore import KeyPair, Keystore, TrustedCertificate
from flowrt.security.tenant_security import TenantSecurity
from tests.mime.conftest import Pki, sample
from tests.mime.conftest import composer as fixed_composer

OPENSSL = shutil.which("openssl")
BASIC = 'from "integration@example.com"\nto "partner@example.org"\n'


@pytest.fixture
def keystore(tmp_path: Path, pki: Pki) -> Keystore:
    """A keystore in memory (never saved): two signing key pairs and partner certificates."""
    return Keystore(
        tmp_path / "keystore.p12",
        "unused",
        [
            KeyPair("signer", (pki.signer.cert, pki.ca.cert), pki.signer.key),
            KeyPair("signer-ec", (pki.ec_signer.cert, pki.ca.cert), pki.ec_signer.key),
            KeyPair("old-signer", (pki.expired.cert,), pki.expired.key),
            TrustedCertificate("partner", pki.partner.cert),
            TrustedCertificate("partner-ec", pki.ec_partner.cert),
            TrustedCertificate("old", pki.expired.cert),
            TrustedCertificate("test-ca", pki.ca.cert),
        ],
    )


@pytest.fixture
def files(tmp_path: Path, pki: Pki) -> Path:
    """PEM files for openssl: the CA, and the keys of the partner and of the signer."""
    (tmp_path / "ca.pem").write_bytes(pki.ca.pem())
    for name, issued in (("partner", pki.partner), ("signer", pki.signer)):
        (tmp_path / f"{name}.pem").write_bytes(issued.pem())
        (tmp_path / f"{name}.key").write_bytes(issued.key_pem())
    return tmp_path


def composer(settings: str, **kwargs: Any) -> MailComposer:
    """Certificates are checked against the composer's clock: these tests need the real one."""
    return fixed_composer(settings, clock=lambda: dt.datetime.now(dt.UTC), **kwargs)


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL, "openssl is needed for the S/MIME tests (Debian package: openssl)"
    return subprocess.run([OPENSSL, *args], input=data, capture_output=True, check=False)


def verify(data: bytes, files: Path) -> bytes:
    """openssl smime -verify against the test CA; returns the signed content."""
    result = openssl("smime", "-verify", "-CAfile", str(files / "ca.pem"), data=data)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Verification successful" in result.stderr
    return result.stdout


def decrypt(data: bytes, files: Path, who: str = "partner") -> bytes:
    result = openssl(
        "smime",
        "-decrypt",
        "-recip",
        str(files / f"{who}.pem"),
        "-inkey",
        str(files / f"{who}.key"),
        data=data,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def an_exchange() -> Exchange:
    ex = mail_to_exchange(sample("pdf_attachment.eml"))
    ex.headers = Headers([("Subject", "Grüße: Rechnung")])
    return ex


# ----------------------------------------------------------------------------- sign


@pytest.mark.parametrize(
    ("alias", "algorithm", "micalg"),
    [
        ("signer", "sha256", "sha-256"),
        ("signer", "sha512", "sha-512"),
        ("signer-ec", "sha384", "sha-384"),
    ],
)
def test_sign_verifies_with_openssl(
    keystore: Keystore, files: Path, alias: str, algorithm: str, micalg: str
) -> None:
    c = composer(
        BASIC + f'attachments from-message\nsign alias "{alias}" algorithm {algorithm}',
        keystore=keystore,
    )
    mail = c.compose(an_exchange())
    message = parse(mail.data)
    assert message.get_content_type() == "multipart/signed"
    assert message.get_param("micalg") == micalg
    assert message.get_param("protocol") == "application/pkcs7-signature"
    assert message["Subject"] == "Grüße: Rechnung"
    content, signature = message.iter_parts()
    assert signature.get_content_type() == "application/pkcs7-signature"
    signed = verify(mail.data, files)
    inner = parse(signed)
    assert inner.get_content_type() == "multipart/mixed"
    assert [a.get_filename() for a in inner.iter_attachments()] == ["invoice-2024-0042.pdf"]
    assert content.get_content_type() == "multipart/mixed"


def test_signed_mail_that_was_changed_fails_verification(keystore: Keystore, files: Path) -> None:
    mail = composer(BASIC + 'sign alias "signer"', keystore=keystore).compose(an_exchange())
    assert b"The invoice is attached." in mail.data
    tampered = mail.data.replace(b"The invoice is attached.", b"The invoice is attacked.")
    result = openssl("smime", "-verify", "-CAfile", str(files / "ca.pem"), data=tampered)
    assert result.returncode != 0


def test_signature_carries_the_chain(keystore: Keystore, pki: Pki) -> None:
    mail = composer(BASIC + 'sign alias "signer"', keystore=keystore).compose(an_exchange())
    signature = list(parse(mail.data).iter_parts())[1].get_payload(decode=True)
    assert isinstance(signature, bytes)
    result = openssl("pkcs7", "-inform", "DER", "-print_certs", "-noout", data=signature)
    assert result.returncode == 0, result.stderr.decode()
    assert b"subject=CN = integration" in result.stdout
    assert b"subject=CN = flowrt test S/MIME CA" in result.stdout


# ----------------------------------------------------------------------------- encrypt


@pytest.mark.parametrize(
    ("algorithm", "cipher"), [("aes128-cbc", "aes-128-cbc"), ("aes256-cbc", "aes-256-cbc")]
)
def test_encrypt_decrypts_with_openssl(
    keystore: Keystore, files: Path, algorithm: str, cipher: str
) -> None:
    c = composer(BASIC + f'encrypt alias "partner" algorithm {algorithm}', keystore=keystore)
    mail = c.compose(an_exchange())
    message = parse(mail.data)
    assert message.get_content_type() == "application/pkcs7-mime"
    assert message.get_param("smime-type") == "enveloped-data"
    assert b"The invoice is attached." not in mail.data
    printed = openssl("cms", "-cmsout", "-print", data=mail.data)
    assert printed.returncode == 0, printed.stderr.decode()
    assert cipher.encode() in printed.stdout
    inner = parse(decrypt(mail.data, files))
    assert str(inner.get_content()).replace("\r\n", "\n") == "The invoice is attached.\n"


def test_encrypt_for_two_recipients(keystore: Keystore, files: Path) -> None:
    c = composer(BASIC + 'encrypt alias "partner, signer"', keystore=keystore)
    mail = c.compose(an_exchange())
    for who in ("partner", "signer"):  # a key pair's certificate can be a recipient too
        assert b"The invoice is attached." in decrypt(mail.data, files, who)


def test_sign_then_encrypt(keystore: Keystore, files: Path) -> None:
    c = composer(
        BASIC + 'attachments from-message\nsign alias "signer"\nencrypt alias "partner"',
        keystore=keystore,
    )
    mail = c.compose(an_exchange())
    assert parse(mail.data).get_content_type() == "application/pkcs7-mime"
    signed = decrypt(mail.data, files)
    assert parse(signed).get_content_type() == "multipart/signed"
    inner = parse(verify(signed, files))
    assert [a.get_filename() for a in inner.iter_attachments()] == ["invoice-2024-0042.pdf"]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("settings", "message", "hint"),
    [
        ('sign alias "nobody"', "S/MIME sign: no keystore entry with alias 'nobody'", "import-key"),
        ('sign alias "partner"', "'partner' is a certificate, not a key pair", "import-key"),
        ('sign alias "old-signer"', "the certificate of alias 'old-signer' expired on", "renew"),
        ('encrypt alias "nobody"', "S/MIME encrypt: no keystore entry with alias 'nobody'", "add"),
        ('encrypt alias "partner-ec"', "alias 'partner-ec' has no RSA key", "RSA"),
        ('encrypt alias "partner, old"', "the certificate of alias 'old' expired on", "renew"),
    ],
)
def test_unusable_aliases(keystore: Keystore, settings: str, message: str, hint: str) -> None:
    with pytest.raises(MessagingException, match=message) as caught:
        composer(BASIC + settings, keystore=keystore).compose(an_exchange())
    assert caught.value.hint and hint in caught.value.hint
    assert not is_retryable(caught.value)


def test_smime_without_a_keystore() -> None:
    with pytest.raises(MessagingException, match="S/MIME needs the tenant keystore"):
        composer(BASIC + 'sign alias "signer"').compose(an_exchange())


def test_open_keystore_refuses_other_objects(keystore: Keystore) -> None:
    assert smime.open_keystore(keystore) is keystore
    with pytest.raises(TypeError, match="expected a Keystore or a TenantSecurity"):
        smime.open_keystore(object())


class _Security(TenantSecurity):
    """A TenantSecurity whose keystore() is given (no tenant directory needed)."""

    def __init__(self, keystore: Keystore | None) -> None:  # no super(): nothing to load
        self._given = keystore

    def keystore(self) -> Keystore:
        if self._given is None:
            raise KeystoreError("the keystore cannot be opened", hint="check the master key")
        return self._given


def test_tenant_security_gives_the_current_keystore(keystore: Keystore, files: Path) -> None:
    assert smime.open_keystore(_Security(keystore)) is keystore
    c = composer(BASIC + 'sign alias "signer"', keystore=_Security(keystore))
    verify(c.compose(an_exchange()).data, files)


def test_a_keystore_that_cannot_be_opened() -> None:
    c = composer(BASIC + 'sign alias "signer"', keystore=_Security(None))
    with pytest.raises(MessagingException, match="cannot open the tenant keystore") as caught:
        c.compose(an_exchange())
    assert caught.value.hint == "check the master key"
    assert isinstance(caught.value.__cause__, KeystoreError)
