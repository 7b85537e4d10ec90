//! `aggregate` on PostgreSQL: correct view, atomic swap under readers, gates, rollback.

use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// A world whose raw table holds `n` rows over 10 locations, each row twice (duplicates).
fn seeded(name: &str, n: i64) -> World {
    let w = World::local(name);
    w.run_ok(&["copy"]); // creates the tables
    pg().batch_execute(&format!(
        "INSERT INTO {s}.batch_raw SELECT g, TIMESTAMP '2024-01-01' + g * INTERVAL '1 second', g % 100,
                CASE WHEN g % 10 = 0 THEN NULL ELSE 'loc' || (g % 10) END, g % 7, g % 3
         FROM generate_series(1, {n}) g, generate_series(1, 2) dup",
        s = w.schema
    ))
    .unwrap();
    w
}

fn view(w: &World) -> Vec<(Option<String>, i64, i64, i64, i64)> {
    let mut v: Vec<_> = pg()
        .query(
            &format!("SELECT location, count_id, sum_followers_count, sum_favorite_count, sum_retweet_count FROM {}.batch_layer", w.schema),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    v.sort();
    v
}

fn expected(n: i64) -> Vec<(Option<String>, i64, i64, i64, i64)> {
    let mut m = std::collections::BTreeMap::new();
    for g in 1..=n {
        let loc = if g % 10 == 0 {
            None
        } else {
            Some(format!("loc{}", g % 10))
        };
        let e: &mut (i64, i64, i64, i64) = m.entry(loc).or_default();
        e.0 += 1;
        e.1 += g % 100;
        e.2 += g % 7;
        e.3 += g % 3;
    }
    m.into_iter()
        .map(|(k, v)| (k, v.0, v.1, v.2, v.3))
        .collect()
}

#[test]
fn view_matches_expected_with_duplicates_in_raw() {
    if !stack_up() {
        return;
    }
    let w = seeded("aggview", 1000);
    let s = w.json(&["aggregate"]);
    assert_eq!(s["rows"].as_i64().unwrap(), 10, "{s}");
    assert_eq!(view(&w), expected(1000));
    let printed = w.run_ok(&["aggregate", "--print", "3"]);
    assert_eq!(printed.lines().count(), 5, "{printed}");
    assert!(printed.starts_with("location"), "{printed}");
}

#[test]
fn readers_always_see_a_complete_view_during_rebuilds() {
    if !stack_up() {
        return;
    }
    let w = seeded("aggread", 300_000);
    w.run_ok(&["aggregate"]);
    let want = expected(300_000);
    let stop = AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut c = pg();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let rows = c
                    .query(
                        &format!(
                            "SELECT count(*), sum(count_id)::bigint FROM {}.batch_layer",
                            w.schema
                        ),
                        &[],
                    )
                    .expect("reader got an error during the swap");
                let (cnt, sum): (i64, i64) = (rows[0].get(0), rows[0].get(1));
                assert_eq!((cnt, sum), (10, 300_000), "reader saw an incomplete view");
                n += 1;
            }
            n
        });
        for _ in 0..3 {
            w.run_ok(&["aggregate"]);
        }
        stop.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    assert!(reads > 10, "the reader ran only {reads} times");
    assert_eq!(view(&w), want);
}

#[test]
fn failing_gate_keeps_the_old_view_and_rollback_restores_previous() {
    if !stack_up() {
        return;
    }
    let w = seeded("agggate", 100);
    w.run_ok(&["aggregate"]);
    let good = view(&w);
    // An empty raw table: the min_rows gate refuses the swap.
    pg().batch_execute(&format!("TRUNCATE {}.batch_raw", w.schema))
        .unwrap();
    let (code, _, err) = w.run(&["aggregate"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("gate min_rows: the new view has 0, fewer than 1"),
        "{err}"
    );
    assert_eq!(view(&w), good, "a failed gate replaced the view");
    let rejected: i64 = pg()
        .query_one(
            &format!("SELECT count(*) FROM {}.batch_layer__rejected", w.schema),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rejected, 0);
    // --force swaps anyway; --rollback brings the good view back.
    w.run_ok(&["aggregate", "--force"]);
    assert!(view(&w).is_empty());
    w.run_ok(&["aggregate", "--rollback"]);
    assert_eq!(view(&w), good);
}

#[test]
fn dry_run_prints_sql_and_changes_nothing() {
    if !stack_up() {
        return;
    }
    let w = seeded("aggdry", 50);
    let out = w.run_ok(&["aggregate", "--dry-run"]);
    assert!(
        out.contains("CREATE TABLE") && out.contains("RENAME TO"),
        "{out}"
    );
    let n: i64 = pg()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name LIKE 'batch_layer%'",
            &[&w.schema],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[test]
fn two_concurrent_runs_both_end_with_a_correct_view() {
    if !stack_up() {
        return;
    }
    let w = seeded("aggconc", 20_000);
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(|| w.run(&["aggregate"]));
        let h2 = s.spawn(|| w.run(&["aggregate"]));
        (h1.join().unwrap(), h2.join().unwrap())
    });
    assert_eq!(a.0, 0, "{}", a.2);
    assert_eq!(b.0, 0, "{}", b.2);
    assert_eq!(view(&w), expected(20_000));
}

#[test]
fn sum_gate_keep_versions_busy_and_a_second_view_from_custom_sql() {
    if !stack_up() {
        return;
    }
    let mut w = seeded("agggates", 100);
    let sql = w.dir.path().join("by_retweets.sql");
    std::fs::write(
        &sql,
        "-- a user view\nSELECT retweet_count, count(*) AS n FROM {schema}.{raw} GROUP BY retweet_count",
    )
    .unwrap();
    w.tail_toml = format!(
        "\n[aggregate]\nmax_sum_change = {{ sum_followers_count = 0.5 }}\n\n[[aggregate.views]]\nview = \"by_retweets\"\nsql = \"{}\"\nkeep_versions = 2\n",
        path_str(&sql)
    );
    let run = |args: &[&str]| {
        let (code, _, err) = w.run(args);
        (code, err)
    };
    let (code, err) = run(&["aggregate"]);
    assert_eq!(code, 0, "{err}");
    let n: i64 = pg()
        .query_one(
            &format!("SELECT sum(n)::bigint FROM {}.by_retweets", w.schema),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        n, 200,
        "the custom view counts raw rows (duplicates included)"
    );
    // Triple the followers: the sum gate refuses, naming both values; the view stays.
    let before = view(&w);
    pg().batch_execute(&format!(
        "UPDATE {}.batch_raw SET followers_count = followers_count * 3",
        w.schema
    ))
    .unwrap();
    let (code, err) = run(&["aggregate", "--view", "batch_layer"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("max_sum_change(sum_followers_count)") && err.contains("more than 50.0%"),
        "{err}"
    );
    assert_eq!(view(&w), before);
    // keep_versions = 2 for by_retweets: two rebuilds later, __prev and __prev2 exist.
    run(&["aggregate", "--view", "by_retweets"]);
    run(&["aggregate", "--view", "by_retweets"]);
    for t in ["by_retweets", "by_retweets__prev", "by_retweets__prev2"] {
        let n: i64 = pg()
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
                &[&w.schema, &t],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{t} missing");
    }
    // --no-wait while another aggregate of the view holds the lock: exit 3.
    let mut c = pg();
    let key = format!("batchlayer:aggregate:batch_layer:{}.batch_raw", w.schema);
    c.execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
        .unwrap();
    let (code, err) = run(&["aggregate", "--view", "batch_layer", "--no-wait", "--force"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("busy"), "{err}");
}
