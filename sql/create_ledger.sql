-- The ledger: one row per loaded object, written in the same transaction as its COPY.
CREATE TABLE IF NOT EXISTS {schema}.{ledger} (
    key           varchar(1024) PRIMARY KEY,
    size          bigint        NOT NULL,
    sha256        varchar(64)   NOT NULL,
    rows_loaded   bigint        NOT NULL,
    rows_rejected bigint        NOT NULL,
    target_table  varchar(256)  NOT NULL,
    loaded_at     timestamp     NOT NULL DEFAULT CURRENT_TIMESTAMP
);
