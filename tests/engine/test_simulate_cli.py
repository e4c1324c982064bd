"""``flowrt simulate``: sample mails in, ``.eml`` files out, a trace, exit codes, the MPL."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.mpl.model import MplStatus
from flowrt.mpl.store import MplStore

MAILS = Path(__file__).resolve().parent.parent / "data" / "mails"

FLOW = """\
flow forward {
    sender mail {
        protocol   imap
        address    "imap.example.com"
        protection imaps
        auth       plain credential "in"
    }
    pipeline {
%(steps)s
    }
    receiver mail accounting {
        address     "smtp.example.com"
        protection  smtps
        from        "integration@example.com"
        to          "accounting@example.com"
        subject     "%(subject)s"
        body        "${body}"
        attachments from-message
%(receiver)s
    }
%(tail)s
}
"""

STEPS = """\
        set header "X-Forwarded-By" = "flowrt"
        log info "forwarding ${header.Subject}"
"""


class Sim:
    """Runs ``flowrt simulate`` on a flow written into the test's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out = folder / "out" / "nested"  # --out is created when missing
        self.tenant = folder / "no-tenant"

    def flow(
        self,
        steps: str = STEPS,
        receiver: str = "",
        tail: str = "",
        subject: str = "Fwd: ${header.Subject}",
    ) -> Path:
        path = self.folder / "forward.flow"
        indented = "\n".join(f"        {line.strip()}" for line in receiver.strip().splitlines())
        values = {"steps": steps.rstrip(), "receiver": indented, "tail": tail, "subject": subject}
        path.write_text(FLOW % values)
        return path

    def run(self, mail: str | Path, *args: str, flow: Path | None = None) -> Result:
        message = mail if isinstance(mail, Path) else MAILS / mail
        flow_path = flow or self.flow()
        argv = ["--tenant", str(self.tenant), "simulate", str(flow_path), "--message", str(message)]
        return CliRunner().invoke(cli, [*argv, "--out", str(self.out), *args])

    def eml(self, name: str = "accounting-1.eml") -> EmailMessage:
        data = (self.out / name).read_bytes()
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@pytest.fixture
def sim(tmp_path: Path) -> Sim:
    return Sim(tmp_path)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def body_text(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("plain", "html"))
    assert part is not None
    return str(part.get_content())


def test_plain_text(sim: Sim) -> None:
    result = sim.run("plain.eml")
    assert result.exit_code == 0, result.output
    no_traceback(result)
    mail = sim.eml()
    assert mail["Subject"] == "Fwd: Invoice 4711"
    assert mail["From"] == "integration@example.com" and mail["To"] == "accounting@example.com"
    assert mail["X-Forwarded-By"] == "flowrt"  # set by the flow, so written into the mail
    assert "Received" not in mail  # brought by the incoming mail, so left behind
    assert mail.get_content_type() == "text/plain" and mail.get_content_charset() == "utf-8"
    assert "Amount: 120.00 EUR" in body_text(mail)
    out = result.stdout
    assert "set header X-Forwarded-By" in out and "COMPLETED" in out
    assert "info: forwarding Invoice 4711" in out
    assert "status: COMPLETED after 1 run" in out
    assert f"-> {sim.out / 'accounting-1.eml'}" in out
    assert "Subject: Fwd: Invoice 4711" in out and "Amount: 120.00 EUR" in out
    assert f"MPL: not recorded (no tenant at {sim.tenant})" in out


def test_multipart_with_a_pdf_attachment(sim: Sim) -> None:
    result = sim.run("pdf-attachment.eml")
    assert result.exit_code == 0, result.output
    mail = sim.eml()
    (attachment,) = mail.iter_attachments()
    assert attachment.get_filename() == "invoice-2024-118.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_payload(decode=True).startswith(b"%PDF-1.4")
    assert "The invoice is attached." in body_text(mail)
    assert "attachment: invoice-2024-118.pdf (application/pdf, 77 B)" in result.stdout


def test_html_only(sim: Sim) -> None:
    result = sim.run("html-only.eml", flow=sim.flow(receiver="body-type text/html"))
    assert result.exit_code == 0, result.output
    mail = sim.eml()
    assert mail.get_content_type() == "text/html"
    assert "Your invoice <b>#55</b> is due – please pay." in body_text(mail)


def test_a_non_utf8_charset(sim: Sim) -> None:
    result = sim.run("latin1.eml", flow=sim.flow(receiver="charset iso-8859-1"))
    assert result.exit_code == 0, result.output
    mail = sim.eml()
    assert mail["Subject"] == "Fwd: Rechnung für März"
    assert mail.get_content_charset() == "iso-8859-1"
    assert "Grüße aus München" in body_text(mail)
    assert "text/plain (iso-8859-1)" in result.stdout  # the mail as read, in its own charset


def test_an_rfc2047_encoded_subject(sim: Sim) -> None:
    result = sim.run("encoded-subject.eml")
    assert result.exit_code == 0, result.output
    mail = sim.eml()
    assert mail["Subject"] == "Fwd: Facture n° 42 – été 2024 ✓"
    head = (sim.out / "accounting-1.eml").read_bytes().split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and b"=?utf-8?" in head.lower()


def test_two_attachments_of_the_same_name(sim: Sim) -> None:
    result = sim.run("same-name-attachments.eml")
    assert result.exit_code == 0, result.output
    attachments = list(sim.eml().iter_attachments())
    names = [a.get_filename() for a in attachments]
    assert len(names) == 2 and len(set(names)) == 2
    assert all(name and name.endswith(".pdf") for name in names)
    payloads = [a.get_payload(decode=True) for a in attachments]
    assert b"Catalog2" not in payloads[0] and b"Catalog2" in payloads[1]


def test_an_attachment_without_a_name(sim: Sim) -> None:
    result = sim.run("nameless-attachment.eml")
    assert result.exit_code == 0, result.output
    (attachment,) = sim.eml().iter_attachments()
    assert attachment.get_filename()  # a name was given, so the receiver's mail is usable
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment.get_payload(decode=True) == bytes(range(256))


def test_split_writes_one_mail_per_attachment(sim: Sim) -> None:
    steps = '        split attachments\n        set property "doc" = "${attachment.name}"\n'
    flow = sim.flow(steps=steps, subject="Doc ${property.doc}")
    result = sim.run("same-name-attachments.eml", flow=flow)
    assert result.exit_code == 0, result.output
    first, second = sim.eml("accounting-1.eml"), sim.eml("accounting-2.eml")
    assert [len(list(m.iter_attachments())) for m in (first, second)] == [1, 1]
    assert first["Subject"] == "Doc scan.pdf" and second["Subject"] != first["Subject"]
    assert "mail from receiver accounting [attachment-2]" in result.stdout


def test_a_file_that_is_not_a_mail(sim: Sim) -> None:
    result = sim.run("not-a-mail.pdf")
    assert result.exit_code == 1
    no_traceback(result)
    assert "MessageFormatException: not a mail" in result.stdout
    assert "PDF" in result.stdout and "hint: --message takes a mail" in result.stdout
    assert not sim.out.exists() or not any(sim.out.iterdir())
    as_json = sim.run("not-a-mail.pdf", "--format", "json")
    doc = json.loads(as_json.stdout)
    assert doc["status"] == "ESCALATED" and doc["outputs"] == [] and doc["input"] is None
    assert doc["error"]["levels"][0]["type"] == "MessageFormatException"


@pytest.mark.parametrize(
    ("mail", "says"),
    [
        ("bad-boundary.eml", "boundary"),
        ("unknown-charset.eml", "x-no-such-charset"),
        ("bad-base64.eml", "base64"),
        ("missing-headers.eml", "no From header"),
    ],
)
def test_broken_mime_is_recovered_and_the_problem_named(sim: Sim, mail: str, says: str) -> None:
    result = sim.run(mail)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    recovered = [line for line in result.stdout.splitlines() if "recovered:" in line]
    assert any(says in line for line in recovered), result.stdout
    assert (sim.out / "accounting-1.eml").exists()


def test_badly_broken_mime_still_gives_a_clear_result(sim: Sim) -> None:
    """Wrong boundary, unknown charset and bad base64 in one mail: recovered, each named."""
    result = sim.run("broken-mime.eml")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    recovered = "\n".join(line for line in result.stdout.splitlines() if "recovered:" in line)
    for problem in ("boundary", "x-no-such-charset", "base64"):
        assert problem in recovered
    assert "status: COMPLETED" in result.stdout


def test_header_and_property_overrides(sim: Sim) -> None:
    steps = '        filter header.X-Route = "yes"\n'
    flow = sim.flow(steps=steps, subject="${property.ticket}: ${header.Subject}")
    result = sim.run("plain.eml", "--header", "X-Route=yes", "--property", "ticket=T-9", flow=flow)
    assert result.exit_code == 0, result.output
    assert sim.eml()["Subject"] == "T-9: Invoice 4711"


def test_a_filtered_message_completes_and_sends_nothing(sim: Sim) -> None:
    flow = sim.flow(steps='        filter header.Subject contains "Lunch"\n')
    result = sim.run("plain.eml", flow=flow)
    assert result.exit_code == 0
    assert "FILTERED" in result.stdout
    assert "nothing sent: filtered at line 9: filter header.Subject contains" in result.stdout
    assert not (sim.out / "accounting-1.eml").exists()


def test_retries_do_not_wait_and_a_failure_exits_1(sim: Sim) -> None:
    (sim.folder / "crm.py").write_text(
        "from flowrt.errors import ProcessingError\n"
        "def lookup(ex):\n"
        "    raise ProcessingError('CRM busy', retryable=True, hint='wait for the CRM')\n"
    )
    tail = "    on-error {\n        retry 2 every 30s backoff 2\n    }"
    flow = sim.flow(steps='        script "crm:lookup"\n', tail=tail)
    result = sim.run("plain.eml", flow=flow)
    assert result.exit_code == 1
    no_traceback(result)
    out = result.stdout
    assert "retry 1 of 2: would wait 30s" in out and "retry 2 of 2: would wait 1m" in out
    assert "status: FAILED after 3 runs" in out
    assert "StepException: script crm:lookup failed (line 9)" in out
    assert "  nested exception is:\n\tProcessingError: CRM busy" in out
    assert "hint: wait for the CRM" in out
    doc = json.loads(sim.run("plain.eml", "--format", "json", flow=flow).stdout)
    assert doc["waits"] == [{"after_run": 1, "seconds": 30.0}, {"after_run": 2, "seconds": 60.0}]
    assert [lv["type"] for lv in doc["error"]["levels"]] == ["StepException", "ProcessingError"]


def test_a_receiver_that_cannot_compose_is_a_failed_delivery(sim: Sim) -> None:
    flow = sim.flow(receiver='cc "${header.X-Cc}"')
    result = sim.run(
        "plain.eml", "--header", "X-Cc=a@example.com\r\nBcc: evil@example.com", flow=flow
    )
    assert result.exit_code == 1
    no_traceback(result)
    assert "receiver accounting" in result.stdout and "FAILED" in result.stdout
    assert "MessagingException" in result.stdout


def test_json_document(sim: Sim) -> None:
    result = sim.run("pdf-attachment.eml", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc) == [
        "flow",
        "file",
        "message_file",
        "message_id",
        "status",
        "runs",
        "note",
        "input",
        "steps",
        "waits",
        "custom_properties",
        "error",
        "outputs",
        "mpl",
        "live",
    ]
    assert doc["live"] is False
    assert doc["status"] == "COMPLETED" and doc["error"] is None and doc["waits"] == []
    assert [s["step_id"] for s in doc["steps"]] == [
        "set header X-Forwarded-By",
        "log info",
        "receiver accounting",
    ]
    assert doc["steps"][1]["log"] == [
        {"level": "info", "text": "forwarding Invoice 2024-118 with PDF"}
    ]
    (output,) = doc["outputs"]
    assert output["receiver"] == "accounting" and output["file"].endswith("accounting-1.eml")
    assert output["recipients"] == ["accounting@example.com"]
    assert output["attachments"] == [
        {"name": "invoice-2024-118.pdf", "content_type": "application/pdf", "size": 77}
    ]
    assert doc["input"]["attachments"][0]["name"] == "invoice-2024-118.pdf"
    # the input is the mail as read, before the pipeline's set header
    assert "X-Forwarded-By" not in [name for name, _ in doc["input"]["headers"]]
    assert doc["mpl"]["recorded"] is False


def test_the_mpl_is_recorded_as_a_simulation_in_the_tenant(sim: Sim) -> None:
    sim.tenant = sim.folder / "tenant"
    assert CliRunner().invoke(cli, ["--tenant", str(sim.tenant), "init"]).exit_code == 0
    flow = sim.flow(steps='        mpl property "subject" = header.Subject\n')
    result = sim.run("plain.eml", "--format", "json", flow=flow)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mpl"] == {
        "recorded": True,
        "tenant": str(sim.tenant),
        "message_id": doc["message_id"],
    }
    assert doc["custom_properties"] == {"subject": ["Invoice 4711"]}
    with MplStore(sim.tenant / "mpl.sqlite") as store:
        entry = store.get(doc["message_id"])
        assert entry.simulation and entry.status is MplStatus.COMPLETED
        assert [s.step_id for s in entry.runs[0].steps] == [
            "mpl property subject",
            "receiver accounting",
        ]
        found = store.list_entries(properties=[("subject", "Invoice 4711")])
        assert [s.message_id for s in found] == [doc["message_id"]]
    text = sim.run("plain.eml", flow=flow)
    assert f"MPL: recorded in {sim.tenant} as a simulation" in text.stdout


def test_usage_errors_exit_2(sim: Sim) -> None:
    assert sim.run("plain.eml", "--header", "no-equals-sign").exit_code == 2
    assert sim.run("plain.eml", "--property", "=v").exit_code == 2
    missing = sim.run(sim.folder / "missing.eml")
    assert missing.exit_code == 2 and "missing.eml: no such file" in missing.output
    no_flow = sim.run("plain.eml", flow=sim.folder / "missing.flow")
    assert no_flow.exit_code == 2
    no_traceback(no_flow)


def test_an_invalid_flow_exits_1_with_its_problems(sim: Sim) -> None:
    flow = sim.flow(steps='        route when header.X = "1" to nowhere\n')
    result = sim.run("plain.eml", flow=flow)
    assert result.exit_code == 1
    assert "no receiver of that name" in result.output
    no_traceback(result)
