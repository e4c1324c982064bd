"""Each semantic rule of the validator, and that all problems of a file come in one run."""

from __future__ import annotations

import pytest

from tests.dsl.helpers import SENDER, errors, flow, line_of, only_flow, parse, warnings

POP3 = """    sender mail {
        protocol pop3
        address  "pop.example.com"
        protection pop3s
        auth     plain credential "in"
%s
    }
"""


def codes(text: str) -> list[str]:
    return [code for _, code, _ in errors(text)]


def test_unknown_setting_suggests_the_right_one() -> None:
    ((line, code, message),) = errors(flow(sender_extra="protcol imap"))
    assert code == "unknown-setting"
    assert "'protcol'" in message and "did you mean 'protocol'" in message
    assert line == 8


def test_repeated_setting_names_the_first_line() -> None:
    ((_, code, message),) = errors(flow(sender_extra="timeout 5s\ntimeout 6s"))
    assert code == "repeated-setting" and "first on line 8" in message


@pytest.mark.parametrize("value", ["0s", "5m", "10m"])
def test_timeout_out_of_range(value: str) -> None:
    assert codes(flow(sender_extra=f"timeout {value}")) == ["out-of-range"]


def test_max_messages_at_least_one() -> None:
    assert codes(flow(sender_extra="max-messages 0")) == ["out-of-range"]
    assert codes(flow(sender_extra="max-messages many")) == ["bad-value"]


def test_implicit_tls_must_match_the_protocol() -> None:
    found = errors(flow(sender=POP3.replace("pop3s", "imaps") % ""))
    assert [(c, "imaps does not fit protocol pop3" in msg) for _, c, msg in found] == [
        ("conflict", True)
    ]
    assert codes(flow().replace("protection smtps", "protection imaps")) == ["conflict"]


@pytest.mark.parametrize("line", ['folder "INBOX"', "selection all"])
def test_folder_and_selection_are_imap_only(line: str) -> None:
    found = codes(flow(sender=POP3 % f"        {line}"))
    assert "conflict" in found


def test_keep_connection_is_imap_only_and_below_the_servers_autologout() -> None:
    ((_, code, message),) = errors(flow(sender=POP3 % "        keep-connection 5m"))
    assert code == "conflict" and "keep-connection is IMAP only" in message
    assert codes(flow(sender_extra="keep-connection 30m")) == ["out-of-range"]
    assert codes(flow(sender_extra="keep-connection 0s")) == ["out-of-range"]
    assert codes(flow(sender_extra="keep-connection always")) == ["bad-value"]


@pytest.mark.parametrize("line", ["post-process mark-read", 'post-process archive "X"'])
def test_pop3_post_process_is_delete_or_keep(line: str) -> None:
    assert codes(flow(sender=POP3 % f"        {line}")) == ["conflict"]


def test_selection_all_with_mark_read_is_refused() -> None:
    found = errors(flow(sender_extra="selection all\npost-process mark-read"))
    assert [c for _, c, _ in found] == ["conflict"]
    assert "every poll" in found[0][2]
    assert codes(flow(sender_extra="selection all")) == ["conflict"]  # mark-read is the default
    assert codes(flow(sender_extra="selection all\npost-process delete")) == []
    assert codes(flow(sender_extra='selection all\npost-process archive "Done"')) == []


def test_plain_auth_without_protection_is_refused_unless_allowed() -> None:
    text = flow(receiver_extra='auth plain credential "c"').replace(
        "protection smtps", "protection off"
    )
    assert codes(text) == ["plaintext-auth"]
    allowed = flow(receiver_extra='auth plain credential "c"\nallow-plaintext-auth').replace(
        "protection smtps", "protection off"
    )
    assert codes(allowed) == []
    assert [c for _, c, _ in warnings(allowed)] == ["plaintext-auth"]


def test_plain_auth_with_starttls_optional_warns() -> None:
    text = flow(receiver_extra='auth plain credential "c"').replace(
        "protection smtps", "protection starttls-optional"
    )
    assert codes(text) == []
    assert [c for _, c, _ in warnings(text)] == ["plaintext-auth"]


@pytest.mark.parametrize("method", ["plain", "encrypted", "oauth2"])
def test_auth_without_credential(method: str) -> None:
    assert codes(flow(receiver_extra=f"auth {method}")) == ["missing-credential"]


def test_sender_needs_auth() -> None:
    sender = SENDER.replace('        auth       plain credential "in"\n', "") % ""
    assert codes(flow(sender=sender)) == ["missing-setting"]
    assert codes(flow(sender=SENDER.replace('plain credential "in"', "none") % "")) == ["bad-value"]


def test_tls_through_on_premise_is_a_warning() -> None:
    text = flow(sender_extra='proxy on-premise location "plant-1"')
    result = parse(text)
    assert result.ok
    assert [d.code for d in result.diagnostics] == ["tls-on-premise"]
    assert result.diagnostics[0].severity == "warning"


def test_route_to_unknown_receiver() -> None:
    ((_line, code, message),) = errors(flow(steps="route when body exists to ot"))
    assert code == "unknown-receiver"
    assert "did you mean 'out'" in message


def test_route_order() -> None:
    assert codes(flow(steps="route otherwise to out\nroute when body exists to out")) == [
        "route-order"
    ]
    assert codes(
        flow(steps='route when body exists to out\nlog info "x"\nroute otherwise to out')
    ) == ["route-order"]


def test_malformed_expressions_and_conditions() -> None:
    text = flow(
        receiver_extra='subject "x ${header.Subject"\nbody "${nope.x}"',
        steps='filter header.A matches "[a-"\nfilter "text" exists',
    )
    found = errors(text)
    assert [(c, line) for line, c, _ in found] == [
        ("bad-condition", line_of(text, '"[a-"')),
        ("bad-condition", line_of(text, '"text"')),
        ("bad-expression", line_of(text, "subject")),
        ("bad-expression", line_of(text, "nope")),
    ]


def test_poll_idle_and_daily_checks() -> None:
    assert codes(flow(sender=POP3 % "        poll idle")) == ["conflict"]
    assert codes(flow(sender_extra="poll daily at 25:00")) == ["bad-value"]
    assert codes(flow(sender_extra='poll daily at 07:00 tz "Mars/Olympus"')) == ["bad-value"]


def test_structure_rules() -> None:
    assert codes(flow(tail=SENDER % "")) == ["repeated-block"]
    no_name = flow().replace("receiver mail out {", "receiver mail {")
    assert codes(no_name) == ["missing-name"]
    receiver = flow().split("    receiver mail out {")[1].rsplit("}", 1)[0]
    twice = flow().rstrip().removesuffix("}") + "    receiver mail out {" + receiver + "}\n"
    assert codes(twice) == ["repeated-receiver"]
    assert codes(flow(sender=SENDER.replace("sender mail", "sender ftp") % "")) == [
        "unknown-adapter"
    ]
    assert codes(flow(sender="")) == ["missing-block"]
    assert codes(flow(tail="    on-error {\n        retry 0 every 1s\n    }\n")) == ["out-of-range"]
    assert codes(flow(tail="    on-error {\n        retry 1 every 1s backoff 0.5\n    }\n")) == [
        "out-of-range"
    ]


def test_every_problem_of_a_file_is_listed_with_its_line() -> None:
    text = flow(
        sender_extra='timeout 9m\nmax-messages 0\nfolder ""',
        receiver_extra="charset latin-1\nauth plain",
        steps='route when body exists to nobody\nlog shout "x"',
        flow_extra="log-level loud",
    )
    found = errors(text)
    assert [(line, code) for line, code, _ in found] == [
        (line_of(text, "log-level"), "bad-value"),
        (line_of(text, "timeout 9m"), "out-of-range"),
        (line_of(text, "max-messages 0"), "out-of-range"),
        (line_of(text, 'folder ""'), "bad-value"),
        (line_of(text, "nobody"), "unknown-receiver"),
        (line_of(text, "shout"), "bad-value"),
        (line_of(text, "charset latin-1"), "bad-value"),
        (line_of(text, "auth plain"), "missing-credential"),
    ]


def test_setting_a_receiver_header_is_a_warning() -> None:
    text = flow(steps='set header "Subject" = "x"\nset header "X-Ok" = "y"')
    assert codes(text) == []
    assert [c for _, c, _ in warnings(text)] == ["receiver-header"]


def test_oauth2_user() -> None:
    sender = SENDER.replace('plain credential "in"', 'oauth2 credential "o365"') % ""
    assert codes(flow(sender=sender)) == ["missing-user"]
    with_user = (
        SENDER.replace('plain credential "in"', 'oauth2 credential "o365" user "plant@example.com"')
        % ""
    )
    assert codes(flow(sender=with_user)) == []
    assert codes(flow(receiver_extra='auth oauth2 credential "o365"')) == []
    assert codes(flow(receiver_extra='auth plain credential "c" user "x@example.com"')) == [
        "bad-value"
    ]


def test_connector_tls_permits_auth_plain_through_the_connector_only() -> None:
    text = flow().replace(
        "        protection imaps\n",
        '        protection connector-tls\n        proxy on-premise location "plant-1"\n',
        1,
    )
    sender = only_flow(text).sender.connection
    # the flow speaks plain to the connector, which does TLS to the server's TLS port
    assert (sender.protection, sender.allow_plaintext_auth, sender.address.port) == (
        "off",
        True,
        993,
    )
    assert not parse(text).diagnostics

    direct = flow().replace("protection imaps", "protection connector-tls", 1)
    ((_, code, message),) = errors(direct)
    assert code == "conflict"
    assert "connector-tls" in message and 'proxy on-premise location "ID"' in message
    # the old spelling keeps its meaning: plain auth over protection off is still an error
    off = flow(sender_extra='proxy on-premise location "plant-1"').replace(
        "protection imaps", "protection off", 1
    )
    assert codes(off) == ["plaintext-auth"]
