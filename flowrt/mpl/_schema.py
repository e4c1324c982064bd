"""The MPL database schema and its forward-only migrations.

``PRAGMA user_version`` holds the number of migrations applied. A migration is appended to
:data:`MIGRATIONS`, never edited, so a database written by any older flowrt can be brought up
to date; a database from a newer flowrt is refused rather than guessed at.

Layout and why:

- ``entries``: one row per message. The columns the list query filters and sorts on are real
  columns with indexes; the rest of an entry (runs with their steps, log lines, error levels)
  is kept as compact JSON arrays in the same row, so recording a message is one row write
  instead of seven, and ``show`` is one row read. Every index costs on each write, so there
  are only those the queries need: (status, log_start), (flow, log_start), (log_start) for
  ``list`` and ``purge`` (an entry that ended before a cutoff also started before it), and
  the unique message ID.
- ``properties``: custom header properties, one row per value, indexed by (name, value) so that
  ``--property NAME=VALUE`` is an index lookup.
- ``contents``: per-step message content at ``trace``; kept apart because it is large and
  written once, whereas an entry row may be rewritten while the message is processed.
- ``settings``: name/value pairs such as the retention.

Child rows are keyed by ``message_id`` (not the row id) because the recorder upserts entries
in batches with ``executemany`` and never learns their row ids.
"""

from __future__ import annotations

ENTRY_COLUMNS = (
    "message_id",
    "correlation_id",
    "application_id",
    "flow",
    "flow_version",
    "sender",
    "receivers",  # JSON ["...", ...]
    "status",
    "log_start",  # REAL, epoch seconds UTC
    "log_end",
    "log_level",
    "simulation",
    "filter_note",
    "error_chain",
    "error_levels",  # JSON [[type, message], ...], outermost first
    "error_hint",
    "failed_step",
    "runs",  # JSON [[number, start µs, stop µs, status, [step, ...]], ...] where a step is
    #          [step_id, model_step_id, branch, status, start offset µs, duration µs, error]
    "log_lines",  # JSON [[epoch µs, level, text], ...]
    "subject",  # the mail's Subject and From as the sender read them ("" when none)
    "mail_from",
    "node",  # the runtime node that wrote the entry ("" for a tenant of one runtime)
)
NULLABLE_COLUMNS = (
    "application_id",
    "log_end",
    "filter_note",
    "error_chain",
    "error_levels",
    "error_hint",
    "failed_step",
)

# Writes are multi-row ``INSERT ... VALUES (...), (...)`` statements: the store appends one
# ``(?, ...)`` group per row. One statement per few hundred rows (instead of executemany's one
# sqlite3_step per row) matters because sqlite3 releases the GIL around every step, and a
# writer thread that must win the GIL back from a busy engine thread waits up to the switch
# interval (5 ms) each time.
INSERT_ENTRIES = f"INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) VALUES "
UPSERT_ENTRIES_TAIL = " ON CONFLICT(message_id) DO UPDATE SET " + ", ".join(
    f"{col} = excluded.{col}" for col in ENTRY_COLUMNS[1:]
)
INSERT_PROPERTIES = "INSERT OR REPLACE INTO properties (message_id, seq, name, value) VALUES "
PROPERTY_WIDTH = 4
INSERT_CONTENTS = (
    "INSERT OR REPLACE INTO contents (message_id, run, step, headers, body, truncated, size) "
    "VALUES "
)
CONTENT_WIDTH = 7

_V1 = """
CREATE TABLE entries (
    id             INTEGER PRIMARY KEY,
    message_id     TEXT    NOT NULL UNIQUE,
    correlation_id TEXT    NOT NULL,
    application_id TEXT,
    flow           TEXT    NOT NULL,
    flow_version   TEXT    NOT NULL,
    sender         TEXT    NOT NULL,
    receivers      TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    log_start      REAL    NOT NULL,
    log_end        REAL,
    log_level      TEXT    NOT NULL,
    simulation     INTEGER NOT NULL,
    filter_note    TEXT,
    error_chain    TEXT,
    error_levels   TEXT,
    error_hint     TEXT,
    failed_step    TEXT,
    runs           TEXT    NOT NULL,
    log_lines      TEXT    NOT NULL
);
CREATE INDEX entries_by_start ON entries (log_start);
CREATE INDEX entries_by_status ON entries (status, log_start);
CREATE INDEX entries_by_flow ON entries (flow, log_start);

CREATE TABLE properties (
    message_id TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    PRIMARY KEY (message_id, seq)
) WITHOUT ROWID;
CREATE INDEX properties_by_value ON properties (name, value, message_id);

CREATE TABLE contents (
    message_id TEXT    NOT NULL,
    run        INTEGER NOT NULL,
    step       INTEGER NOT NULL,
    headers    TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    truncated  INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (message_id, run, step)
) WITHOUT ROWID;

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

# V2: subject and sender of the mail, for `mpl list` (issue 20).
_V2 = """
ALTER TABLE entries ADD COLUMN subject TEXT NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN mail_from TEXT NOT NULL DEFAULT ''
"""

# V3: the runtime node that processes the message (issue 18: several nodes on one store; an
# entry of a node that is gone is closed ABANDONED by the node that takes over).
_V3 = """
ALTER TABLE entries ADD COLUMN node TEXT NOT NULL DEFAULT ''
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
"""Migration ``i`` takes a database from ``user_version == i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
