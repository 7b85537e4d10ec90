-- The ledger: one row per loaded object, written in the same transaction as its COPY.
-- Offsets are a record's identity: topic, partition, epoch and the object's offset range say
-- which records are loaded, whatever the object's key. rows_skipped counts records whose
-- offsets an earlier object had loaded already. `manifest` names the run manifest that listed the
-- object (copy's cursor is a row of its own, in create_cursor.sql).
-- Several raw tables may share one ledger: a row is the load of `key` into `target_table`
-- (schema.table), so the key is the pair, and every question to the ledger names the table.
-- Every identifier is quoted (Redshift reserves words PostgreSQL does not); {now} is the
-- dialect's current time (CURRENT_TIMESTAMP is leader-node-only on Redshift).
CREATE TABLE IF NOT EXISTS {schema}.{ledger} (
    "key"           varchar(1024) NOT NULL,
    "size"          bigint        NOT NULL,
    "sha256"        varchar(64)   NOT NULL,
    "rows_loaded"   bigint        NOT NULL,
    "rows_rejected" bigint        NOT NULL,
    "target_table"  varchar(256)  NOT NULL,
    "loaded_at"     timestamp     NOT NULL DEFAULT {now},
    "topic"         varchar(255),
    "partition_id"  integer,
    "epoch"         integer,
    "first_offset"  bigint,
    "last_offset"   bigint,
    "rows_skipped"  bigint,
    "manifest"      varchar(256),
    "manifest_objects" integer,
    PRIMARY KEY ("key", "target_table")
);
