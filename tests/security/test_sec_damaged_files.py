"""Damaged tenant files and certificate files that are not what they claim: an error that
names the file, what was found and how to restore it; never a traceback, never a file that
held data replaced by an empty one."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from flowrt.runtime.state import StateDB


def test_garbled_locations_file_is_named_with_its_restore(flowrt):
    path = flowrt.root / "locations.json"
    path.write_bytes(b"\xff\xfe{\x00garbled")
    result = flowrt.fails("locations", "list")
    assert f"the locations file {path} is damaged: byte 0 is not UTF-8 text" in result.output
    assert f"restore {path} from a backup" in result.output
    assert "flowrt locations add" in result.output
    assert "UnicodeDecodeError" not in result.output
    assert path.read_bytes() == b"\xff\xfe{\x00garbled"  # left as it was


@pytest.mark.parametrize("name", ["mpl.sqlite", "state.sqlite"])
@pytest.mark.parametrize(
    ("content", "found"),
    [
        (b"\x8f\x02" * 2000, "is damaged: not an SQLite database (it starts with binary data"),
        (
            b"SQLite format 3\x00" + b"\x07" * 4000,
            "is damaged: SQLite says: file is not a database",
        ),
    ],
    ids=["garbage", "torn-header"],
)
def test_damaged_databases_are_errors_not_recreated(flowrt, name, content, found):
    path = flowrt.root / name
    path.write_bytes(content)
    command = ("mpl", "list") if name == "mpl.sqlite" else ("locks", "list")
    result = flowrt.fails(*command)
    assert f"{path} {found}" in result.output
    assert f"move {path}" in result.output and "restore it from a backup" in result.output
    assert "DatabaseError" not in result.output
    assert path.read_bytes() == content


@pytest.mark.parametrize("name", ["mpl.sqlite", "state.sqlite"])
def test_a_database_with_foreign_tables_is_not_initialised_over(flowrt, name):
    path = flowrt.root / name
    with sqlite3.connect(path) as conn:  # e.g. restored from the wrong backup
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    before = path.read_bytes()
    command = ("mpl", "list") if name == "mpl.sqlite" else ("locks", "list")
    result = flowrt.fails(*command)
    assert f"{path} holds 1 table(s) but no flowrt schema version" in result.output
    assert path.read_bytes() == before


def test_an_empty_database_file_is_initialised_and_logged(flowrt):
    for path in (flowrt.root / "mpl.sqlite", flowrt.root / "state.sqlite"):
        path.write_bytes(b"")
        os.utime(path, (time.time() - 60, time.time() - 60))  # emptied a while ago
    # a process of its own: the log configuration of other tests does not reach it
    opened = subprocess.run(
        [sys.executable, "-c", OPEN_BOTH, str(flowrt.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    logged = opened.stdout + opened.stderr
    assert logged.count("was an empty (0-byte) file; initialised it") == 2
    assert flowrt.ok("mpl", "list").exit_code == 0
    assert flowrt.ok("locks", "list").exit_code == 0


OPEN_BOTH = """
import sys
from pathlib import Path
from flowrt.mpl.store import MplStore
from flowrt.runtime.state import StateDB
root = Path(sys.argv[1])
MplStore(root / "mpl.sqlite").close()
StateDB(root / "state.sqlite").close()
"""


def test_an_empty_database_whose_log_holds_data_is_refused(flowrt):
    path = flowrt.root / "state.sqlite"
    StateDB(path).close()
    path.with_name("state.sqlite-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 60)
    path.write_bytes(b"")
    result = flowrt.fails("locks", "list")
    assert "is empty, but its write-ahead log state.sqlite-wal holds data" in result.output


def test_damaged_deployment_is_named(flowrt):
    deployed = flowrt.root / "deployed"
    deployed.mkdir(exist_ok=True)
    (deployed / "x.json").write_text("[1, 2]", encoding="utf-8")
    (deployed / "x.flow").write_text("flow x {}", encoding="utf-8")
    result = flowrt.fails("status")
    assert "deployment x cannot be read" in result.output
    assert "flowrt deploy FILE" in result.output


# ----------------------------------------------------------------------------- certificates


def test_pem_followed_by_padding_is_refused(flowrt, pki, root_ca):
    before = flowrt.snapshot()
    path = pki.write("root.pem", root_ca.pem() + b"\x00" * (10 * 1024 * 1024))
    result = flowrt.fails("keystore", "add", "root", str(path))
    assert f"{path} is not exactly a certificate file" in result.output
    assert "bytes outside its PEM blocks (zero bytes (padding)" in result.output
    assert flowrt.snapshot() == before


def test_pem_with_binary_data_around_is_refused(flowrt, pki, root_ca):
    path = pki.write("root.crt", root_ca.pem() + bytes(range(256)))
    result = flowrt.fails("keystore", "add", "root", str(path))
    assert "binary data outside its PEM blocks" in result.output


@pytest.mark.parametrize("kind", ["der", "p7b"])
def test_der_with_trailing_bytes_is_refused(flowrt, pki, root_ca, kind):
    data = root_ca.der() if kind == "der" else pki.p7b([root_ca])
    path = pki.write(f"root.{kind}", data + b"PADDING" * 100)
    result = flowrt.fails("keystore", "add", "root", str(path))
    what = "the DER certificate" if kind == "der" else "the PKCS#7 bundle"
    assert f"700 bytes follow {what} (from byte {len(data)}: text)" in result.output


def test_a_file_named_p7b_must_hold_a_bundle(flowrt, pki, root_ca):
    path = pki.write("bundle.p7b", root_ca.der())
    result = flowrt.fails("keystore", "add", "bundle", str(path))
    assert (
        f"{path} is named .p7b (a PKCS#7 bundle) but holds one DER X.509 certificate"
        in result.output
    )


def test_a_final_newline_after_der_is_fine(flowrt, pki, root_ca):
    flowrt.ok("keystore", "add", "root", str(pki.write("root.cer", root_ca.der() + b"\n")))
