-- The runtime node that processes each MPL entry: when a node dies (kill -9, power), the
-- entries it left PROCESSING or RETRY are closed ABANDONED by a node that is still running,
-- and only those (another node's entries in progress are its own business).
ALTER TABLE mpl_entries ADD COLUMN node text NOT NULL DEFAULT '';
CREATE INDEX mpl_entries_unfinished_by_node ON mpl_entries (node)
    WHERE status IN ('PROCESSING', 'RETRY');
-- When each entry was first written, by the database's clock: ids are taken at insert, not
-- at commit, so with several nodes writing, a lower id can become visible after a higher
-- one; the notifier moves its watermark only over rows written long enough ago
-- (PgMplStore.settled_row_id). Existing rows: 0 (settled); no table rewrite.
ALTER TABLE mpl_entries ADD COLUMN written double precision NOT NULL DEFAULT 0;
ALTER TABLE mpl_entries ALTER COLUMN written SET DEFAULT extract(epoch from clock_timestamp());
