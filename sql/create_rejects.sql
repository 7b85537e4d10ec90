-- Rows that failed validation under --max-errors, with where they came from and why.
CREATE TABLE IF NOT EXISTS {schema}.{rejects} (
    key       varchar(1024) NOT NULL,
    line      bigint        NOT NULL,
    raw       varchar(65535),
    reason    varchar(1024) NOT NULL,
    loaded_at timestamp     NOT NULL DEFAULT CURRENT_TIMESTAMP
);
