"""flowrt check: flow tests run on the simulation runtime, no network. The example flows'
own tests run here, so they stay true."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def check(*args: str) -> Result:
    return CliRunner().invoke(cli, ["check", *args])


def test_the_example_flows_pass_their_tests(tmp_path: Path) -> None:
    flows = sorted(str(p) for p in FLOWS.glob("*.flow"))
    assert len(flows) == 3
    junit = tmp_path / "junit.xml"
    result = check(*flows, "--junit", str(junit))
    assert result.exit_code == 0, result.output
    assert "7 cases, 0 failed" in result.output
    assert "PASS  an invoice mail is forwarded to accounting with its attachment" in result.output
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert [s.get("tests") for s in suites] == ["3", "2", "2"]
    assert all(s.get("failures") == "0" for s in suites)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """flows/mail.flow and its test mail in a folder of their own."""
    shutil.copy(FLOWS / "mail.flow", tmp_path / "mail.flow")
    shutil.copytree(FLOWS / "mails", tmp_path / "mails")
    return tmp_path


def test_a_failed_expectation_fails_the_run_and_says_what_differs(copy: Path) -> None:
    text = (FLOWS / "mail.flow.test.toml").read_text()
    text = text.replace('subject = "Fwd: Invoice 2024-118 with PDF"', 'subject = "Fwd: other"')
    text = text.replace("mails = 0", "mails = 1")
    (copy / "mail.flow.test.toml").write_text(text)
    result = check(str(copy / "mail.flow"))
    assert result.exit_code == 1
    assert "FAIL  an invoice mail is forwarded to accounting with its attachment" in result.output
    assert (
        "mail 1 (receiver accounting): expected subject 'Fwd: other', "
        "got 'Fwd: Invoice 2024-118 with PDF'" in result.output
    )
    assert "expected 1 mail(s), got 0" in result.output
    report = json.loads(check(str(copy / "mail.flow"), "--format", "json").stdout)
    assert report["ok"] is False
    assert [c["ok"] for c in report["files"][0]["cases"]] == [False, False]


def test_an_expected_failure_with_its_error_and_mpl_properties(copy: Path) -> None:
    (copy / "fail.py").write_text(
        "from flowrt import StepException\n\n"
        "def reject(exchange):\n"
        "    raise StepException('no customer number')\n"
    )
    text = (
        (copy / "mail.flow")
        .read_text()
        .replace(
            '        log     info "forwarding',
            '        mpl     property "kind" = "invoice"\n'
            '        script  "fail:reject"\n        log     info "forwarding',
        )
    )
    (copy / "reject.flow").write_text(text)
    (copy / "reject.flow.test.toml").write_text(
        '[[case]]\nname = "an invoice without a customer number fails"\n'
        '[case.mail]\nsubject = "Invoice 9"\n'
        '[case.expect]\nstatus = "FAILED"\nmails = 0\n'
        'error = "no customer number"\nproperties = { kind = "invoice" }\n'
    )
    result = check(str(copy / "reject.flow"))
    assert result.exit_code == 0, result.output
    assert "PASS  an invoice without a customer number fails (FAILED)" in result.output


def test_parameters_come_from_the_test_file(copy: Path) -> None:
    text = (
        (copy / "mail.flow")
        .read_text()
        .replace('"accounting@example.com"', '"${param.ACCOUNTING}"')
    )
    (copy / "p.flow").write_text(text)
    case = (
        '[[case]]\nname = "to the address given"\n[case.mail]\nsubject = "Invoice 1"\n'
        '[case.expect]\n[[case.expect.mail]]\nto = ["acc@test.example"]\n'
    )
    (copy / "p.flow.test.toml").write_text(case)
    missing = check(str(copy / "p.flow"))
    assert missing.exit_code == 1
    assert "parameter ACCOUNTING has no value" in missing.output
    (copy / "p.flow.test.toml").write_text('[params]\nACCOUNTING = "acc@test.example"\n' + case)
    assert check(str(copy / "p.flow")).exit_code == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[[case]]\nname = "x\n', ":2:10: illegal character"),
        ('[[case]]\nname = "x"\nmesage = "a.eml"\n', ":3:1: unknown key 'mesage' in case"),
        (
            '[[case]]\nname = "x"\nmessage = "mails/invoice-with-pdf.eml"\n'
            '[case.expect]\nstatus = "DONE"\n',
            ":5:1: status: expected one of PROCESSING, COMPLETED",
        ),
        (
            '[[case]]\nname = "x"\n[case.expect]\nstatus = "COMPLETED"\n',
            ':1:1: a case needs its input: message = "FILE.eml" or a [case.mail] table',
        ),
        ('flow = "nope.flow"\n', ":1:1: flow: no flow file"),
    ],
)
def test_a_test_file_with_an_error_names_file_line_column(
    copy: Path, content: str, expected: str
) -> None:
    path = copy / "mail.flow.test.toml"
    path.write_text(content)
    result = check(str(path))
    assert result.exit_code == 1
    assert f"error: {path}{expected}" in result.output
