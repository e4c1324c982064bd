-- The notification log (flowrt/notify/store.py has the meaning of each column) in the store
-- the nodes share: whichever node holds the notifier's lease decides from the same MPL
-- watermark, the same claims (`seen`: an alert per rule and occurrence, once) and the same
-- per-recipient counters as the node before it, so a takeover neither repeats nor skips.
CREATE TABLE notify_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created     double precision NOT NULL,
    updated     double precision NOT NULL,
    rule        text             NOT NULL,
    trigger     text             NOT NULL,
    event_key   text             NOT NULL,
    recipient   text             NOT NULL,
    status      text             NOT NULL,
    subject     text             NOT NULL,
    body        text             NOT NULL,
    mpl_id      text             NOT NULL DEFAULT '',
    tries       integer          NOT NULL DEFAULT 0,
    next_try    double precision,
    chain       text             NOT NULL DEFAULT '',
    hint        text             NOT NULL DEFAULT '',
    reply       text             NOT NULL DEFAULT '',
    digested_in bigint
);
CREATE INDEX notify_attempts_by_recipient ON notify_attempts (recipient, status, created);
CREATE INDEX notify_attempts_due ON notify_attempts (next_try) WHERE next_try IS NOT NULL;
CREATE TABLE notify_resets (
    recipient text PRIMARY KEY,
    at        double precision NOT NULL
);
CREATE TABLE notify_seen (
    key text PRIMARY KEY,
    at  double precision NOT NULL
);
CREATE TABLE notify_marks (
    name  text PRIMARY KEY,
    value text NOT NULL
);
-- messages a notifier saw unfinished: the next notifier waits for their ending too
CREATE TABLE notify_watch (
    message_id text PRIMARY KEY
);
