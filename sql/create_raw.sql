-- The raw table: one row per loaded record; the column list is rendered from [records] columns.
CREATE TABLE IF NOT EXISTS {schema}.{raw} (
{columns}
);
