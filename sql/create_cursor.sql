-- Copy's cursor: per raw table (`target_table`, schema.table) and topic, a manifest name such that
-- every manifest of the topic named before it has each object it lists in the ledger. Copy moves
-- it only over manifests it found loaded in full (whatever filter a run used), and back before
-- one that landed late. `checked_head` is the catalog head (JSON: epoch and next offsets) as it
-- was when copy last read every manifest of the topic. One row per (target_table, topic), replaced
-- by DELETE and INSERT in one transaction.
CREATE TABLE IF NOT EXISTS {schema}.{cursor} (
    "target_table"  varchar(256)   NOT NULL,
    "topic"         varchar(255)   NOT NULL,
    "manifest"      varchar(256)   NOT NULL,
    "checked_head"  varchar(65535),
    "updated_at"    timestamp      NOT NULL DEFAULT {now},
    PRIMARY KEY ("target_table", "topic")
);
