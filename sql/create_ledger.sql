-- The ledger: one row per loaded object, written in the same transaction as its COPY.
-- Offsets are a record's identity: topic, partition, epoch and the object's offset range say
-- which records are loaded, whatever the object's key. rows_skipped counts records whose
-- offsets an earlier object had loaded already. `manifest` names the run manifest that listed the
-- object: the newest one per topic is copy's cursor, and it moves with the loads.
-- Every identifier is quoted (Redshift reserves words PostgreSQL does not); {now} is the
-- dialect's current time (CURRENT_TIMESTAMP is leader-node-only on Redshift).
CREATE TABLE IF NOT EXISTS {schema}.{ledger} (
    "key"           varchar(1024) PRIMARY KEY,
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
    "manifest_objects" integer
);
