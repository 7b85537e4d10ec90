-- The batch view: deduplicate raw records, then count and sum per location.
-- Placeholders ({schema}, {raw}) are replaced with validated, quoted identifiers; every other
-- identifier is quoted too (Redshift reserves words PostgreSQL does not).
-- Only SQL that PostgreSQL and Redshift both accept (CTE, DISTINCT, GROUP BY).
WITH "dedup" AS (
    SELECT DISTINCT "id", "created_at", "followers_count", "location", "favorite_count", "retweet_count"
    FROM {schema}.{raw}
)
SELECT "location",
       count("id")            AS "count_id",
       sum("followers_count") AS "sum_followers_count",
       sum("favorite_count")  AS "sum_favorite_count",
       sum("retweet_count")   AS "sum_retweet_count"
FROM "dedup"
GROUP BY "location"
