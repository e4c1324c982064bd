-- flowrt store schema 1: everything the nodes of one tenant share.
-- Times are epoch seconds (double precision), as in the SQLite files, so that both
-- backends hand the same values to the same code.

CREATE TABLE flowrt_meta (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- MPL: one row per message (message IDs in the C collation: a prefix is a range); see flowrt/mpl/_schema.py for the columns. The list query
-- filters by status or flow and sorts by (log_start, id) descending: one index for each,
-- so that `mpl list --status FAILED --limit 50` reads 50 index entries at 10^7 rows.
CREATE TABLE mpl_entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id     text COLLATE "C" NOT NULL UNIQUE,
    correlation_id text             NOT NULL,
    application_id text,
    flow           text             NOT NULL,
    flow_version   text             NOT NULL,
    sender         text             NOT NULL,
    receivers      text             NOT NULL,
    status         text             NOT NULL,
    log_start      double precision NOT NULL,
    log_end        double precision,
    log_level      text             NOT NULL,
    simulation     smallint         NOT NULL,
    filter_note    text,
    error_chain    text,
    error_levels   text,
    error_hint     text,
    failed_step    text,
    runs           text             NOT NULL,
    log_lines      text             NOT NULL,
    subject        text             NOT NULL DEFAULT '',  -- the mail's, as the sender read it
    mail_from      text             NOT NULL DEFAULT ''
);
CREATE INDEX mpl_entries_by_start ON mpl_entries (log_start, id);
CREATE INDEX mpl_entries_by_status ON mpl_entries (status, log_start, id);
CREATE INDEX mpl_entries_by_flow ON mpl_entries (flow, log_start, id);
CREATE INDEX mpl_entries_unfinished ON mpl_entries (flow)
    WHERE status IN ('PROCESSING', 'RETRY');

CREATE TABLE mpl_properties (
    message_id text COLLATE "C" NOT NULL,
    seq        integer NOT NULL,
    name       text    NOT NULL,
    value      text    NOT NULL,
    PRIMARY KEY (message_id, seq)
);
CREATE INDEX mpl_properties_by_value ON mpl_properties (name, value, message_id);

CREATE TABLE mpl_contents (
    message_id text    NOT NULL,
    run        integer NOT NULL,
    step       integer NOT NULL,
    headers    text    NOT NULL,
    body       text    NOT NULL,
    truncated  smallint NOT NULL,
    size       bigint  NOT NULL,
    PRIMARY KEY (message_id, run, step)
);

CREATE TABLE mpl_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- Runtime state (flowrt/runtime/state.py has the meaning of each column).
CREATE TABLE mail_records (
    mailbox        text             NOT NULL,
    key            text             NOT NULL,
    generation     text             NOT NULL DEFAULT '',
    message_id     text             NOT NULL DEFAULT '',
    status         text             NOT NULL CHECK (status IN ('done', 'failed')),
    attempts       integer          NOT NULL DEFAULT 0,
    last_error     text             NOT NULL DEFAULT '',
    action         text             NOT NULL DEFAULT '',
    post_processed smallint         NOT NULL DEFAULT 0,
    created        double precision NOT NULL,
    updated        double precision NOT NULL,
    next_attempt   double precision NOT NULL DEFAULT 0,  -- a failed mail: not before then
    PRIMARY KEY (mailbox, key)
);
CREATE INDEX mail_records_by_message_id ON mail_records (mailbox, message_id)
    WHERE message_id <> '';

-- Per-recipient delivery state (a retry sends only to who does not have the mail yet) and
-- replay requests of dead letters (`flowrt deadletter replay`).
CREATE TABLE deliveries (
    mailbox   text             NOT NULL,
    key       text             NOT NULL,
    receiver  text             NOT NULL,
    recipient text             NOT NULL,
    state     text             NOT NULL CHECK (state IN ('sent', 'refused', 'pending')),
    reply     text             NOT NULL DEFAULT '',
    updated   double precision NOT NULL,
    PRIMARY KEY (mailbox, key, receiver, recipient)
);
CREATE TABLE replays (
    mailbox    text             NOT NULL,
    key        text             NOT NULL,
    message_id text             NOT NULL DEFAULT '',
    requested  double precision NOT NULL,
    PRIMARY KEY (mailbox, key)
);

-- A lease's epoch comes from one sequence: it only grows, also across a release, so an old
-- holder's epoch never matches a later lease of the same key (the fencing token).
CREATE SEQUENCE lock_epochs;
CREATE TABLE locks (
    key      text             PRIMARY KEY,
    owner    text             NOT NULL,
    host     text             NOT NULL,
    pid      integer          NOT NULL,
    info     text             NOT NULL DEFAULT '',
    acquired double precision NOT NULL,
    renewed  double precision NOT NULL,
    expires  double precision NOT NULL,
    epoch    bigint           NOT NULL
);

CREATE TABLE poller_health (
    poller               text PRIMARY KEY,
    mailbox              text NOT NULL DEFAULT '',
    last_poll            double precision,
    last_success         double precision,
    last_error           text NOT NULL DEFAULT '',
    last_error_at        double precision,
    consecutive_failures integer NOT NULL DEFAULT 0,
    handled              integer NOT NULL DEFAULT 0,
    failed               integer NOT NULL DEFAULT 0,
    note                 text NOT NULL DEFAULT '',
    updated              double precision NOT NULL
);

-- Deployed flows: every version, self-contained (text, resolved parameter values, the
-- script modules it bundles); `deployed` says which is current. `generation` (in
-- flowrt_meta) grows with every deploy and undeploy; nodes watch it.
CREATE TABLE deployment_versions (
    name          text    NOT NULL,
    version       integer NOT NULL,
    sha256        text    NOT NULL,
    file          text    NOT NULL,
    deployed_at   text    NOT NULL,
    source        text    NOT NULL,
    params        text    NOT NULL DEFAULT '{}',  -- JSON {"NAME": "value"}
    param_sources text    NOT NULL DEFAULT '{}',  -- JSON {"NAME": "file|environment|..."}
    scripts       text    NOT NULL DEFAULT '[]',  -- JSON [ScriptRef, ...]
    PRIMARY KEY (name, version)
);
CREATE TABLE deployment_files (
    name    text    NOT NULL,
    version integer NOT NULL,
    path    text    NOT NULL,  -- relative to the flow's folder, as bundled
    content bytea   NOT NULL,
    PRIMARY KEY (name, version, path)
);
CREATE TABLE deployed (
    name    text    PRIMARY KEY,
    version integer NOT NULL
);

-- The runtime nodes: each one's heartbeat and its last status report (JSON).
CREATE TABLE nodes (
    name      text             PRIMARY KEY,
    host      text             NOT NULL,
    pid       integer          NOT NULL,
    started   double precision NOT NULL,
    heartbeat double precision NOT NULL,
    stopped   boolean          NOT NULL DEFAULT false,
    status    text             NOT NULL DEFAULT '{}'
);
