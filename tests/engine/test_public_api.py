"""The public API for script authors: the README's example runs as written."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
from pathlib import Path

import flowrt

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAILS = ROOT / "tests" / "data" / "mails"

FLOW = """\
flow enrich {
    sender mail {
        protocol   imap
        address    "imap.example.com"
        protection imaps
        auth       plain credential "in"
    }
    pipeline {
        script "transforms:enrich"
    }
    receiver mail out {
        address     "smtp.example.com"
        protection  smtps
        from        "integration@example.com"
        to          "accounting@example.com"
        body        "${body}"
        attachments from-message
    }
}
"""


def _example() -> str:
    section = README[README.index("## Writing a script step") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README section has no python example"
    return match.group(1)


def _simulate(folder: Path, mail: Path) -> subprocess.CompletedProcess[str]:
    (folder / "transforms.py").write_text(_example(), encoding="utf-8")
    (folder / "enrich.flow").write_text(FLOW, encoding="utf-8")
    argv = ["flowrt", "--tenant", str(folder / "none")]
    argv += ["simulate", str(folder / "enrich.flow"), "--message", str(mail)]
    argv += ["--out", str(folder / "out")]
    return subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), check=False)


def test_every_public_name_is_importable_from_flowrt() -> None:
    for name in flowrt.__all__:
        assert getattr(flowrt, name) is not None


def test_the_readme_example_runs_through_simulate(tmp_path: Path) -> None:
    result = _simulate(tmp_path, MAILS / "plain.eml")
    assert result.returncode == 0, result.stdout + result.stderr
    data = (tmp_path / "out" / "out-1.eml").read_bytes()
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert mail["X-Customer"] == "example.com"
    names = [part.get_filename() for part in mail.iter_attachments()]  # type: ignore[attr-defined]
    assert names == ["note.txt"]


def test_the_readme_example_fails_the_step_in_words(tmp_path: Path) -> None:
    result = _simulate(tmp_path, MAILS / "missing-headers.eml")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "StepException: script transforms:enrich failed (line 9)" in result.stdout
    assert "StepException: the mail has no sender address" in result.stdout
    assert "hint: check the mailbox" in result.stdout
