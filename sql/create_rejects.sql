-- Rows that failed validation under --max-errors, with where they came from and why.
-- `raw` keeps at most the first 4096 bytes of the record; `raw_bytes` and `raw_sha256` are
-- the whole record's length and checksum, so any record can be found again in its object.
-- Every identifier is quoted: RAW is a Redshift reserved word.
CREATE TABLE IF NOT EXISTS {schema}.{rejects} (
    "key"        varchar(1024) NOT NULL,
    "line"       bigint        NOT NULL,
    "raw"        varchar(65535),
    "reason"     varchar(1024) NOT NULL,
    "loaded_at"  timestamp     NOT NULL DEFAULT {now},
    "raw_bytes"  bigint,
    "raw_sha256" varchar(64)
);
