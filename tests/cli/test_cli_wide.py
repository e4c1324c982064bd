"""Rules every `flowrt` command keeps (issue 20): each verb has --help with help text for
every option; each verb with --format prints JSON that parses; listing verbs have --format;
a name the tenant does not have exits 1; --tenant works after the verb.

The commands are found by walking the click tree, so a new command fails here until it
follows the rules and is given a way to run in ``JSON_RUNS``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.notify.config import NotifyServer, edit_config
from flowrt.tenant import Tenant

ROOT = Path(__file__).resolve().parents[2]
MAIL = ROOT / "tests" / "data" / "mails" / "encoded-subject.eml"
LISTING_NAMES = {"list", "show", "status", "check"}

FLOW = """flow cli-wide {
    sender mail {
        protocol   imap
        address    "127.0.0.1:%(port)d"
        protection imaps
        auth       plain credential "in"
    }
    receiver mail out {
        address    "127.0.0.1:%(port)d"
        protection smtps
        from       "a@example.com"
        to         "b@example.com"
    }
}
"""


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from _walk(sub, (*path, name))
    else:
        yield path


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command | None = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(click.Context(command), name)
    assert command is not None
    return command


VERBS = list(_walk(cli))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Env:
    """A tenant with one of everything a listing can show."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "tenant"
        self.port = _closed_port()
        self.ok("init")
        self.ok(
            "credentials", "add", "in", "--user", "u@example.com", "--password-stdin", input="pw"
        )
        self.ok("keystore", "generate", "me", "--subject", "CN=me", "--key", "ec:p256")
        self.ok("locations", "add", "plant-1", "--proxy", f"127.0.0.1:{self.port}")
        self.flow = tmp / "cli-wide.flow"
        self.flow.write_text(FLOW % {"port": self.port}, encoding="utf-8")
        self.ok("deploy", str(self.flow), "--wait", "0s")
        self.ok("simulate", str(ROOT / "flows" / "mail.flow"), "--message", str(MAIL))
        listing = json.loads(self.ok("mpl", "list", "--format", "json"))
        self.message_id = listing[0]["message_id"]
        self.ok("notify", "rule", "add", "ops", "--on", "message-failed", "--to", "o@example.com")
        with edit_config(Tenant(self.root)) as edit:  # `server set` wants a live server
            server = NotifyServer("127.0.0.1", self.port, "smtps", "alerts@example.com", timeout=2)
            edit.value = replace(edit.value, server=server)
        self.connector = tmp / "connector.toml"
        self.connector.write_text(
            'location_id = "plant-1"\nlisten = "127.0.0.1:0"\n'
            'token_sha256 = "' + "0" * 64 + '"\n'
            "[[mapping]]\n"
            f'virtual = "mail.plant.example:143"\ninternal = "127.0.0.1:{self.port}"\n'
            'protocol = "tcp"\n',
            encoding="utf-8",
        )

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--tenant", str(self.root), *args], input=input)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self(*args, input=input)
        assert result.exit_code == 0, f"flowrt {' '.join(args)}: {result.output}"
        return result.stdout


# How each verb with --format runs here; the exit code may be 1 (a failed check) but the
# output must be JSON. A callable gets the Env.
Args = Callable[[Env], list[str]]
JSON_RUNS: dict[tuple[str, ...], Args] = {
    ("init",): lambda e: ["--tenant", str(e.tmp / "another"), "init"],
    ("validate",): lambda e: ["validate", str(e.flow), str(ROOT / "flows" / "mail.flow")],
    ("simulate",): lambda e: [
        "simulate",
        str(ROOT / "flows" / "mail.flow"),
        "--message",
        str(MAIL),
    ],
    ("test", "smtp"): lambda e: ["test", "smtp", f"127.0.0.1:{e.port}", "--timeout", "2s"],
    ("test", "imap"): lambda e: ["test", "imap", f"127.0.0.1:{e.port}", "--timeout", "2s"],
    ("test", "pop3"): lambda e: ["test", "pop3", f"127.0.0.1:{e.port}", "--timeout", "2s"],
    ("deploy",): lambda e: ["deploy", str(e.flow), "--wait", "0s"],
    ("undeploy",): lambda e: ["undeploy", "cli-wide"],
    ("status",): lambda e: ["status"],
    ("keystore", "list"): lambda e: ["keystore", "list"],
    ("keystore", "show"): lambda e: ["keystore", "show", "me"],
    ("keystore", "check"): lambda e: ["keystore", "check"],
    ("credentials", "list"): lambda e: ["credentials", "list"],
    ("credentials", "show"): lambda e: ["credentials", "show", "in"],
    ("locations", "list"): lambda e: ["locations", "list"],
    ("connector", "check"): lambda e: ["connector", "check", str(e.connector)],
    ("locks", "list"): lambda e: ["locks", "list"],
    ("mpl", "list"): lambda e: ["mpl", "list"],
    ("deadletter", "list"): lambda e: ["deadletter", "list"],
    ("mpl", "show"): lambda e: ["mpl", "show", e.message_id],
    ("mpl", "tail"): lambda e: ["mpl", "tail", "--timeout", "10ms"],
    ("mpl", "purge"): lambda e: ["mpl", "purge", "--dry-run"],
    ("mpl", "retention"): lambda e: ["mpl", "retention"],
    ("check",): lambda e: ["check", str(ROOT / "flows" / "mail.flow")],
    ("params", "list"): lambda e: ["params", "list"],
    ("store", "check"): lambda e: ["store", "check"],
    ("notify", "counters"): lambda e: ["notify", "counters"],
    ("notify", "log"): lambda e: ["notify", "log"],
    ("notify", "rule", "list"): lambda e: ["notify", "rule", "list"],
    ("notify", "server", "set"): lambda e: [
        "notify",
        "server",
        "set",
        f"127.0.0.1:{e.port}",
        "--protection",
        "smtps",
        "--from",
        "alerts@example.com",
        "--timeout",
        "2s",
    ],
    ("notify", "server", "show"): lambda e: ["notify", "server", "show"],
    ("notify", "server", "test"): lambda e: ["notify", "server", "test", "--to", "b@example.com"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("cli-wide"))


@pytest.mark.parametrize("path", VERBS, ids=" ".join)
def test_every_verb_has_help_for_each_option(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    command = _command(path)
    assert command.help, f"flowrt {' '.join(path)} has no help text"
    silent = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert silent == [], f"flowrt {' '.join(path)}: options without help: {silent}"


@pytest.mark.parametrize("path", VERBS, ids=" ".join)
def test_listing_verbs_take_format_json_and_print_json(env: Env, path: tuple[str, ...]) -> None:
    has_format = any(p.name == "fmt" for p in _command(path).params)
    if path[-1] in LISTING_NAMES:
        assert has_format, f"flowrt {' '.join(path)} lists things but has no --format"
    if not has_format:
        return
    assert path in JSON_RUNS, f"add how to run `flowrt {' '.join(path)} --format json` here"
    result = env(*JSON_RUNS[path](env), "--format", "json")
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    if path == ("mpl", "tail"):  # one JSON object per line
        for line in result.stdout.splitlines():
            json.loads(line)
        return
    json.loads(result.stdout)


def test_validate_json_names_the_flows_of_a_valid_file(env: Env) -> None:
    result = env("validate", str(env.flow), "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [
        {"file": str(env.flow), "ok": True, "flows": ["cli-wide"], "diagnostics": []}
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["status", "nope"],
        ["undeploy", "nope"],
        ["mpl", "show", "ffffffff-nope"],
        ["keystore", "show", "nope"],
        ["keystore", "delete", "nope"],
        ["keystore", "export", "nope"],
        ["credentials", "show", "nope"],
        ["credentials", "delete", "nope"],
        ["locations", "delete", "nope"],
        ["locks", "release", "nope"],
        ["notify", "rule", "remove", "nope"],
        ["params", "unset", "cli-wide", "nope"],
        ["notify", "reset", "nope@example.com"],
    ],
    ids=" ".join,
)
def test_a_name_the_tenant_does_not_have_exits_1(env: Env, args: list[str]) -> None:
    result = env(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and "nope" in result.stderr
    assert "Traceback" not in result.output


def test_tenant_after_the_verb_and_a_forgotten_flowrt_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWRT_HOME", raising=False)
    runner = CliRunner()
    made = runner.invoke(cli, ["init", "--tenant", "t1"])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "t1" / "tenant.json").is_file()
    listed = runner.invoke(cli, ["keystore", "list", "--tenant", "t1", "--format", "json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []

    lost = runner.invoke(cli, ["status"])
    assert lost.exit_code == 1
    assert "neither --tenant nor FLOWRT_HOME is set" in lost.stderr
    sim = runner.invoke(
        cli, ["simulate", str(ROOT / "flows" / "mail.flow"), "--message", str(MAIL)]
    )
    assert sim.exit_code == 0, sim.output
    assert "MPL: not recorded (no tenant at .flowrt (neither --tenant nor FLOWRT_HOME" in sim.output


def test_json_of_the_verbs_that_change_things(tmp_path: Path) -> None:
    env = Env(tmp_path)
    deployed = json.loads(env.ok("deploy", str(env.flow), "--format", "json"))
    assert deployed == [
        {
            "flow": "cli-wide",
            "version": 1,
            "changed": False,
            "runtime": "NOT RUNNING",
            "reason": None,
        }
    ]
    assert json.loads(env.ok("mpl", "retention", "--set", "7d", "--format", "json")) == {
        "retention": "7d",
        "seconds": 604800.0,
        "default": False,
        "changed": True,
    }
    dry = json.loads(env.ok("mpl", "purge", "--older-than", "1ms", "--dry-run", "--format", "json"))
    assert (dry["removed"], dry["would_remove"], dry["dry_run"]) == (0, 1, True)
    (entry,) = json.loads(env.ok("mpl", "list", "--format", "json"))
    assert entry["from"] == "Élodie Dupont <elodie@example.fr>"
    assert entry["subject"].startswith("Facture")
    table = env.ok("mpl", "list")
    assert "FROM" in table.splitlines()[0] and "SUBJECT" in table.splitlines()[0]
    assert "Élodie Dupont" in table
    assert "Élodie Dupont <elodie@example.fr>" in env.ok("mpl", "show", entry["message_id"])
    assert json.loads(env.ok("mpl", "list", "--kind", "real", "--format", "json")) == []
    assert len(json.loads(env.ok("mpl", "list", "--kind", "simulation", "--format", "json"))) == 1
    purged = json.loads(env.ok("mpl", "purge", "--older-than", "1ms", "--format", "json"))
    assert (purged["removed"], purged["dry_run"]) == (1, False)
    assert json.loads(env.ok("undeploy", "cli-wide", "--format", "json")) == {
        "flow": "cli-wide",
        "version": 1,
        "undeployed": True,
    }


def _complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    result = CliRunner().invoke(
        cli,
        [],
        prog_name="flowrt",
        env={
            "_FLOWRT_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": cword,
            **(env or {}),
        },
    )
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_shell_completion_offers_the_tenants_names(env: Env) -> None:
    tenant = str(env.root)
    env.ok("deploy", str(env.flow), "--wait", "0s")
    assert _complete(f"flowrt --tenant {tenant} keystore show ") == ["me"]
    assert _complete(f"flowrt keystore delete --tenant {tenant} m") == ["me"]
    assert _complete("flowrt credentials show ", {"FLOWRT_HOME": tenant}) == ["in"]
    assert _complete(f"flowrt --tenant {tenant} status ") == ["cli-wide"]
    assert _complete(f"flowrt --tenant {tenant} locations delete ") == ["plant-1"]
    assert _complete(f"flowrt --tenant {tenant} test imap h --credential ") == ["in"]
    # no tenant there: nothing to offer, and no error in the user's shell
    assert _complete(f"flowrt --tenant {env.tmp / 'none'} keystore show ") == []


def test_connector_tls_needs_the_on_premise_proxy(env: Env) -> None:
    result = env("test", "imap", "mail.plant.example", "--protection", "connector-tls")
    assert result.exit_code == 2
    assert "--protection connector-tls means the on-premise connector does TLS" in result.stderr
