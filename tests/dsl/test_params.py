"""Flow parameters in the DSL: where they may stand, their values checked where they are
used, and bad or secret-looking names at file:line:col."""

from __future__ import annotations

from flowrt.dsl import parse_text
from flowrt.dsl.params import is_secret_name

FLOW = """flow p {
    sender mail {
        protocol      imap
        address       "${param.IMAP_HOST}:${param.IMAP_PORT:993}"
        protection    imaps
        auth          plain credential "${param.MAILBOX:inbox}"
        max-messages  param.BATCH:50
        poll          every param.EVERY
    }
    pipeline {
        filter header.To = param.ADDRESS
        log    info "for ${param.ADDRESS} from ${header.From}"
    }
    receiver mail out {
        address "smtp.example.com:465"
        protection smtps
        from    "flowrt@example.com"
        to      "${param.TARGET}"
    }
}
"""
VALUES = {
    "IMAP_HOST": "imap.dev.example",
    "EVERY": "10s",
    "ADDRESS": "plant@example.com",
    "TARGET": "dev@example.com",
}


def test_values_stand_in_settings_bare_values_conditions_and_templates() -> None:
    result = parse_text(FLOW, "p.flow", {"p": {**VALUES, "BATCH": "7"}})
    assert result.ok, result.render()
    (flow,) = result.flows
    sender = flow.sender
    assert (sender.connection.address.host, sender.connection.address.port) == (
        "imap.dev.example",
        993,
    )
    assert sender.connection.auth.credential == "inbox"
    assert sender.max_messages == 7
    assert sender.poll.interval.total_seconds() == 10
    assert flow.receivers[0].to[0].literal == "dev@example.com"
    assert flow.param_names == (
        "IMAP_HOST",
        "IMAP_PORT",
        "MAILBOX",
        "BATCH",
        "EVERY",
        "ADDRESS",
        "TARGET",
    )
    assert [use.pos.line for use in flow.params if use.name == "ADDRESS"] == [11, 12]


def test_a_value_is_literal_text_not_an_expression() -> None:
    values = {**VALUES, "TARGET": 'x"${header.From}\\@example.com'}
    (flow,) = parse_text(FLOW, "p.flow", {"p": values}).flows
    (to,) = flow.receivers[0].to
    assert to.is_literal and to.literal == 'x"${header.From}\\@example.com'


def test_a_value_is_checked_where_it_is_used() -> None:
    result = parse_text(FLOW, "p.flow", {"p": {**VALUES, "EVERY": "often"}})
    assert not result.ok
    assert "p.flow:8:29: error: poll: bad duration often" in result.render()


def test_a_parameter_without_a_value_is_named_with_its_line_when_values_are_given() -> None:
    result = parse_text(FLOW, "p.flow", {"p": {"IMAP_HOST": "h"}})
    errors = [(d.line, d.column, d.code) for d in result.diagnostics if d.is_error]
    assert errors == [
        (8, 35, "missing-parameter"),
        (11, 34, "missing-parameter"),
        (12, 34, "missing-parameter"),
        (18, 26, "missing-parameter"),
    ]
    assert "parameter EVERY has no value" in result.render()


def test_validate_alone_accepts_parameters_and_warns_about_values_it_cannot_check() -> None:
    result = parse_text(FLOW, "p.flow")
    assert result.ok, result.render()
    warnings = [d for d in result.diagnostics if not d.is_error]
    assert [(d.line, d.column) for d in warnings] == [(8, 29)]
    assert "not checked: parameter EVERY has no value here" in warnings[0].message


def test_bad_and_secret_looking_names_at_file_line_column() -> None:
    text = FLOW.replace("${param.TARGET}", "${param.smtp-target}").replace(
        "${param.MAILBOX:inbox}", "${param.MAILBOX_PASSWORD}"
    )
    result = parse_text(text, "p.flow", {"p": VALUES})
    rendered = result.render()
    assert "p.flow:18:26: error: bad parameter name 'smtp-target'" in rendered
    assert "p.flow:6:49: error: parameter MAILBOX_PASSWORD looks like a secret" in rendered
    assert "credential store" in rendered
    # the one problem of each: no follow-on complaint about the value holding it
    assert len([d for d in result.diagnostics if d.is_error]) == 2
    assert is_secret_name("api_key") and is_secret_name("OAUTH_TOKEN")
    assert not is_secret_name("SMTP_CREDENTIAL")


def test_an_escaped_dollar_is_not_a_parameter() -> None:
    text = FLOW.replace('"for ${param.ADDRESS}', '"for \\${param.ADDRESS}')
    (flow,) = parse_text(text, "p.flow", {"p": VALUES}).flows
    assert [use.line for use in (u.pos for u in flow.params if u.name == "ADDRESS")] == [11]


TEN = """flow ten {
    sender mail {
        protocol      pop3
        protection    imaps
        auth          plain
        folder        "INBOX"
        poll          idle
        timeout       10m
        max-messages  0
    }
    pipeline {
        log info "${header}"
    }
    receiver mail out {
        address "smtp.example.com:465"
        from    "a@example.com"
        colour  blue
    }
}
"""


def test_a_file_with_ten_independent_problems_reports_ten() -> None:
    result = parse_text(TEN, "ten.flow")
    errors = [(d.line, d.code) for d in result.diagnostics if d.is_error]
    assert errors == [
        (2, "missing-setting"),  # address
        (4, "conflict"),  # imaps on POP3
        (5, "missing-credential"),  # plain auth without a credential
        (6, "conflict"),  # folder on POP3
        (7, "conflict"),  # poll idle on POP3
        (8, "out-of-range"),
        (9, "out-of-range"),
        (12, "bad-expression"),
        (14, "missing-setting"),  # to
        (17, "unknown-setting"),
    ]
