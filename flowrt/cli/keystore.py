"""`flowrt keystore ...`: trusted certificates and key pairs of the tenant."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import click

from flowrt._fs import atomic_write
from flowrt.cli._complete import complete_aliases
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.cli.credentials import read_secret
from flowrt.errors import KeystoreError, UsageError
from flowrt.security.certificates import (
    DEFAULT_KEY_SPEC,
    KEY_SPECS,
    certificate_details,
    csr_for,
    describe_key,
    generate_key,
    load_key_pair_file,
    parse_san,
    parse_subject,
    read_certificate_file,
    self_signed,
    to_pem,
)
from flowrt.security.certificates import subject as subject_text
from flowrt.security.expiry import SOON, entry_row, expiry_status
from flowrt.security.keystore import (
    Keystore,
    backup_keystore,
    edit_keystore,
    keystore_password,
    restore_keystore,
    valid_until,
    validate_alias,
)
from flowrt.security.masterkey import load_master_key

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s``."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*([smhdw])\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h or 2w")
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _duration_option(ctx: click.Context, param: click.Parameter, value: str) -> datetime.timedelta:
    return parse_duration(value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


_status = expiry_status
_row = entry_row


def _text_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "valid until": row["valid_until"][:10]}


def _write_output(data: bytes, out: Path | None, what: str) -> None:
    if out is None:
        click.echo(data.decode("ascii"), nl=False)
        return
    try:
        atomic_write(out, data, mode=0o644)  # certificates and CSRs are public
    except OSError as exc:
        raise KeystoreError(f"cannot write {out}: {exc.strerror}") from exc
    click.echo(f"wrote {what} to {out}")


@click.group("keystore")
def keystore() -> None:
    """Trusted certificates and key pairs.

    The keystore is a PKCS#12 file that `openssl pkcs12` and `keytool` read; see `flowrt
    keystore password`.
    """


@keystore.command("add")
@click.argument("alias")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace entries with the same alias.")
@pass_cli
def add(cli: CliContext, alias: str, file: Path, replace: bool) -> None:
    """Trust the certificate(s) in FILE.

    FILE is a .cer/.crt/.pem/.p7b, DER or PEM.
    A chain becomes ALIAS, ALIAS_1, ALIAS_2... in file order.
    """
    validate_alias(alias)
    certs = read_certificate_file(file)
    with edit_keystore(cli.tenant) as store:
        added = store.add_certificates(alias, certs, replace=replace)
    for entry in added:
        click.echo(
            f"added certificate {entry.alias}: {entry.certificate.subject.rfc4514_string()} "
            f"(valid until {entry.certificate.not_valid_after_utc:%Y-%m-%d})"
        )


@keystore.command("import-key")
@click.argument("alias")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--password-stdin",
    "from_stdin",
    is_flag=True,
    help="Read the .p12 password from stdin (else a no-echo prompt on a terminal).",
)
@click.option("--replace", is_flag=True, help="Replace an entry with the same alias.")
@pass_cli
def import_key(cli: CliContext, alias: str, file: Path, from_stdin: bool, replace: bool) -> None:
    """Import a key pair (private key + chain) from a PKCS#12 FILE."""
    validate_alias(alias)
    tenant = cli.tenant
    password = read_secret(
        from_stdin=from_stdin, what=f"password of {file}", confirm=False, allow_empty=True
    )
    key, chain = load_key_pair_file(file, password)
    with edit_keystore(tenant) as store:
        pair = store.add_key_pair(alias, key, chain, replace=replace)
    click.echo(
        f"imported key pair {pair.alias}: {pair.certificate.subject.rfc4514_string()} "
        f"({describe_key(key.public_key())}, chain of {len(pair.chain)}, valid until "
        f"{valid_until(pair):%Y-%m-%d})"
    )


@keystore.command("generate")
@click.argument("alias")
@click.option(
    "--subject",
    required=True,
    help='Distinguished name, e.g. "CN=client,O=Example" or "CN=Jo Doe,E=jo@example.com".',
)
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="TYPE:VALUE",
    help="Subject alternative name: dns:HOST, email:ADDRESS or ip:ADDRESS (repeatable). "
    "An e-mail address makes the certificate fit for S/MIME.",
)
@click.option(
    "--key",
    "key_spec",
    type=click.Choice(KEY_SPECS),
    default=DEFAULT_KEY_SPEC,
    show_default=True,
    help="Key type and size.",
)
@click.option(
    "--days", type=click.IntRange(1, 36500), default=365, show_default=True, help="Validity."
)
@click.option("--replace", is_flag=True, help="Replace an entry with the same alias.")
@pass_cli
def generate(
    cli: CliContext,
    alias: str,
    subject: str,
    sans: tuple[str, ...],
    key_spec: str,
    days: int,
    replace: bool,
) -> None:
    """Generate a key pair (self-signed).

    Use `flowrt keystore csr` to have its certificate signed by a CA.
    """
    validate_alias(alias)
    name = parse_subject(subject)
    alternative = [parse_san(san) for san in sans]
    with edit_keystore(cli.tenant) as store:
        # Refuse a used or system alias before a (slow, for RSA) key generation.
        store.check_writable(alias, replace=replace)
        key = generate_key(key_spec)
        cert = self_signed(name, key, days=days, sans=alternative)
        pair = store.add_key_pair(alias, key, [cert], replace=replace)
    click.echo(
        f"generated key pair {pair.alias}: {subject_text(cert)} "
        f"({describe_key(key.public_key())}, valid until {cert.not_valid_after_utc:%Y-%m-%d})"
    )


@keystore.command("csr")
@click.argument("alias", shell_complete=complete_aliases)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write to FILE.")
@pass_cli
def csr(cli: CliContext, alias: str, out: Path | None) -> None:
    """A certificate signing request (PEM) for key pair ALIAS."""
    from cryptography.hazmat.primitives.serialization import Encoding

    pair = Keystore.open(cli.tenant).key_pair(alias)
    request = csr_for(pair.private_key, pair.certificate)
    _write_output(request.public_bytes(Encoding.PEM), out, f"the CSR for {pair.alias}")


@keystore.command("list")
@format_option
@pass_cli
def list_(cli: CliContext, fmt: str) -> None:
    """List entries, marking expired and expiring ones.

    Expiring means within 30 days; see `flowrt keystore check` for other windows.
    """
    now = _now()
    rows = [_row(entry, now) for entry in Keystore.open(cli.tenant)]
    if fmt == "json":
        print_json(rows)
        return
    print_table(
        [_text_row(r) for r in rows],
        ["alias", "type", "owner", "valid until", "status", "subject", "issuer"],
    )


@keystore.command("show")
@click.argument("alias", shell_complete=complete_aliases)
@format_option
@pass_cli
def show(cli: CliContext, alias: str, fmt: str) -> None:
    """Details of entry ALIAS.

    Serial, key, signature algorithm, validity, fingerprints and the chain.
    """
    entry = Keystore.open(cli.tenant).get(alias)
    now = _now()
    details = certificate_details(entry.certificate)
    chain = [certificate_details(c) for c in entry.chain]
    if fmt == "json":
        print_json({**_row(entry, now), "certificate": details, "chain": chain})
        return
    status = _status(valid_until(entry), now, SOON)
    lines = [
        ("alias", entry.alias),
        ("type", entry.kind),
        ("owner", entry.owner),
        ("subject", details["subject"]),
        ("issuer", details["issuer"]),
        ("serial", details["serial"]),
        ("key", details["key"]),
        ("alternative names", details["alternative_names"] or "-"),
        ("signature algorithm", details["signature_algorithm"]),
        ("valid from", details["valid_from"]),
        ("valid until", details["valid_until"] + (f"  [{status}]" if status else "")),
        ("SHA-1", details["sha1"]),
        ("SHA-256", details["sha256"]),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':21}{value}")
    click.echo(f"chain ({len(chain)}):")
    for i, item in enumerate(chain):
        click.echo(f"  [{i}] {item['subject']}")
        click.echo(f"      issuer {item['issuer']}, valid until {item['valid_until']}")


@keystore.command("rename")
@click.argument("old", shell_complete=complete_aliases)
@click.argument("new")
@pass_cli
def rename(cli: CliContext, old: str, new: str) -> None:
    """Rename entry OLD to NEW."""
    with edit_keystore(cli.tenant) as store:
        before = store.get(old).alias
        store.rename(old, new)
    click.echo(f"renamed {before} to {new}")


@keystore.command("delete")
@click.argument("alias", shell_complete=complete_aliases)
@pass_cli
def delete(cli: CliContext, alias: str) -> None:
    """Delete entry ALIAS."""
    with edit_keystore(cli.tenant) as store:
        entry = store.delete(alias)
    click.echo(f"deleted {entry.kind} {entry.alias}")


@keystore.command("export")
@click.argument("alias", shell_complete=complete_aliases)
@click.option("--chain", is_flag=True, help="The whole chain, not only the certificate.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write to FILE.")
@pass_cli
def export(cli: CliContext, alias: str, chain: bool, out: Path | None) -> None:
    """The certificate (or chain) of ALIAS as PEM. Never a private key."""
    entry = Keystore.open(cli.tenant).get(alias)
    certs = entry.chain if chain else (entry.certificate,)
    _write_output(to_pem(certs), out, f"the {'chain' if chain else 'certificate'} of {entry.alias}")


@keystore.command("check")
@click.option(
    "--within",
    callback=_duration_option,
    default="30d",
    show_default=True,
    help="Window, e.g. 30d, 12h, 2w.",
)
@format_option
@pass_cli
def check(cli: CliContext, within: datetime.timedelta, fmt: str) -> None:
    """Exit 1 when an entry has expired or expires within the window."""
    now = _now()
    rows = []
    for entry in Keystore.open(cli.tenant):
        until = valid_until(entry)
        if until <= now + within:
            rows.append({**_row(entry, now), "status": _status(until, now, within)})
    if fmt == "json":
        print_json(rows)
    elif rows:
        print_table([_text_row(r) for r in rows], ["alias", "type", "valid until", "status"])
    else:
        click.echo(f"no entry expires within {_format_window(within)}")
    if rows:
        click.echo(
            f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'} expired or expiring "
            f"within {_format_window(within)}",
            err=True,
        )
        click.get_current_context().exit(1)


def _format_window(window: datetime.timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@keystore.command("backup")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), help="File or folder for the copy (same as FILE)."
)
@pass_cli
def backup(cli: CliContext, file: Path | None, out: Path | None) -> None:
    """Copy the keystore file to FILE (a file or a folder), as `restore FILE` takes it back.

    Default: a timestamped file in the tenant's backups/ folder.
    """
    if file is not None and out is not None and file != out:
        raise UsageError("give the backup's place once: FILE or --out FILE")
    path = backup_keystore(cli.tenant, file or out)
    click.echo(f"keystore backed up to {path}")


@keystore.command("restore")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@pass_cli
def restore(cli: CliContext, file: Path) -> None:
    """Replace the keystore by a backup FILE.

    The current keystore is backed up first.
    """
    restored, previous = restore_keystore(cli.tenant, file)
    click.echo(f"restored the keystore from {file} ({len(restored)} entries)")
    if previous is not None:
        click.echo(f"the keystore it replaced is backed up in {previous}")


@keystore.command("password")
@pass_cli
def password(cli: CliContext) -> None:
    """Print the keystore's PKCS#12 password.

    For opening the keystore with openssl or keytool.
    The password is derived from the master key; it is stored nowhere and printed by no
    other command.
    """
    tenant = cli.tenant
    secret = keystore_password(load_master_key(tenant))
    click.echo(
        "warning: this password opens the tenant keystore, private keys included. Do not "
        "store it in scripts, tickets or chat.\n"
        f"  openssl pkcs12 -info -in {tenant.keystore_path} -passin stdin -nokeys\n"
        f"  keytool -list -storetype PKCS12 -keystore {tenant.keystore_path}",
        err=True,
    )
    click.echo(secret)


COMMANDS: list[click.Command] = [keystore]
