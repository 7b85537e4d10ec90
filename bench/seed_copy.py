"""The seed's approach to loading PostgreSQL: psycopg2 copy_expert of the (decompressed)
object, `;`-delimited. The seed's table takes the trailing `;` as one extra, empty column."""
import gzip
import sys

import psycopg2

dsn, table, *paths = sys.argv[1:]
conn = psycopg2.connect(dsn)
for path in paths:
    with conn, conn.cursor() as cur, gzip.open(path, "rb") as f:
        cur.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT text, DELIMITER ';', NULL 'None')", f)
conn.close()
