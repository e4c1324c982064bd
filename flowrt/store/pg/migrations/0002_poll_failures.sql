-- The poll-failure log (flowrt.poll_failures): every poll of a flow's sender that could not
-- run, with its chain and hint, as in the SQLite state DB's table of the same name.
CREATE TABLE poll_failures (
    id      bigserial PRIMARY KEY,
    poller  text NOT NULL,
    flow    text NOT NULL DEFAULT '',
    at      double precision NOT NULL,
    kind    text NOT NULL,
    summary text NOT NULL,
    chain   text NOT NULL,
    levels  text NOT NULL DEFAULT '[]',
    hint    text NOT NULL DEFAULT ''
);
CREATE INDEX poll_failures_by_flow ON poll_failures (flow, at);
CREATE INDEX poll_failures_by_poller ON poll_failures (poller, id);
