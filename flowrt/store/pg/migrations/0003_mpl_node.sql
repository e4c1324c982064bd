-- The runtime node that processes each MPL entry: when a node dies (kill -9, power), the
-- entries it left PROCESSING or RETRY are closed ABANDONED by a node that is still running,
-- and only those (another node's entries in progress are its own business).
ALTER TABLE mpl_entries ADD COLUMN node text NOT NULL DEFAULT '';
CREATE INDEX mpl_entries_unfinished_by_node ON mpl_entries (node)
    WHERE status IN ('PROCESSING', 'RETRY');
