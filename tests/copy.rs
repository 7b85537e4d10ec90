//! `copy` against s3s-fs and PostgreSQL: exactly-once loads, bad rows, locks, dry-run.

use crate::common::*;
use batchlayer::tweets::tweet;

fn tweets(n: u64, seed: u64) -> Vec<Option<Vec<u8>>> {
    tweet_payloads(n, seed, 20)
}

fn ledger(w: &World) -> Vec<(String, i64, i64)> {
    pg().query(
        &format!(
            "SELECT key, rows_loaded, rows_rejected FROM {}.batchlayer_loads ORDER BY key",
            w.schema
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn loads_each_object_once_across_reruns() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("cponce");
    w.extra_toml = "max_object_records = 50\n".into();
    produce_raw(&brokers(), &w.topic, 2, &tweets(400, 1));
    w.run_ok(&["ingest"]);
    let first = w.json(&["copy", "--limit", "3"]);
    assert_eq!(first["objects"].as_u64().unwrap(), 3, "{first}");
    let rest = w.json(&["copy"]);
    assert_eq!(rest["objects"].as_u64().unwrap(), 5, "{rest}");
    let again = w.json(&["copy"]);
    assert_eq!(again["objects"].as_u64().unwrap(), 0, "{again}");
    assert_eq!(w.count("batch_raw"), 400);
    assert_eq!(ledger(&w).len(), 8);
    // --key loads one object; one already loaded is skipped.
    let key = w.data_objects()[0].clone();
    assert_eq!(
        w.json(&["copy", "--key", &key])["objects"]
            .as_u64()
            .unwrap(),
        0
    );
}

#[test]
fn crash_between_copy_and_commit_leaves_nothing_and_rerun_loads_once() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("cpcrash");
    produce_raw(&brokers(), &w.topic, 2, &tweets(100, 2));
    w.run_ok(&["ingest"]);
    w.env
        .insert("BATCHLAYER_FAILPOINT".into(), "copy-before-commit".into());
    let (code, _, err) = w.run(&["copy"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failpoint"), "{err}");
    assert_eq!(
        w.count("batch_raw"),
        0,
        "rows of an uncommitted load are visible"
    );
    assert!(ledger(&w).is_empty());
    w.env.remove("BATCHLAYER_FAILPOINT");
    let s = w.json(&["copy"]);
    assert_eq!(s["objects"].as_u64().unwrap(), 2);
    assert_eq!(w.count("batch_raw"), 100);
}

#[test]
fn concurrent_copies_load_each_object_once() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("cpconc");
    w.extra_toml = "max_object_records = 500\n".into();
    produce_raw(&brokers(), &w.topic, 3, &tweets(6000, 3));
    w.run_ok(&["ingest"]);
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(|| w.json(&["copy"]));
        let h2 = s.spawn(|| w.json(&["copy"]));
        (h1.join().unwrap(), h2.join().unwrap())
    });
    let total = a["objects"].as_u64().unwrap() + b["objects"].as_u64().unwrap();
    assert_eq!(total, 12, "{a} {b}");
    assert_eq!(w.count("batch_raw"), 6000);
    // --no-wait while the lock is held: exit code 3.
    let mut c = pg();
    let key = format!("batchlayer:copy:{}.batch_raw", w.schema);
    c.execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
        .unwrap();
    let (code, _, err) = w.run(&["copy", "--no-wait"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("busy"), "{err}");
}

fn bad_rows_world(name: &str) -> (World, Vec<Option<Vec<u8>>>) {
    let w = World::local(name);
    let mut msgs = tweets(20, 4);
    msgs.push(Some(b"1;2024-01-01 00:00:00;5;Paris; France;1;1;".to_vec())); // ; in location
    msgs.push(Some(b"2;2024-01-01 00:00:00;many;Paris;1;1;".to_vec())); // not an integer
    msgs.push(Some(b"3;yesterday;5;Paris;1;1;".to_vec())); // bad timestamp
    msgs.push(Some(b"4;2024-01-01 00:00:00;5;\xff\xfe;1;1;".to_vec())); // invalid UTF-8
    msgs.push(Some(
        format!("5;2024-01-01 00:00:00;5;{};1;1;", "x".repeat(300)).into_bytes(),
    )); // overlong
    produce_raw(&brokers(), &w.topic, 1, &msgs);
    w.run_ok(&["ingest"]);
    (w, msgs)
}

#[test]
fn strict_mode_fails_the_object_naming_key_line_column_value() {
    if !stack_up() {
        return;
    }
    let (w, _) = bad_rows_world("cpstrict");
    let (code, _, err) = w.run(&["copy"]);
    assert_eq!(code, 1);
    let key = &w.data_objects()[0];
    assert!(err.contains(key.as_str()), "{err}");
    assert!(
        err.contains("record 21") && err.contains("found 8"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(w.count("batch_raw"), 0, "strict failure left rows");
    assert!(ledger(&w).is_empty());
}

#[test]
fn max_errors_sends_bad_rows_to_rejects_and_accounts_for_every_record() {
    if !stack_up() {
        return;
    }
    let (w, msgs) = bad_rows_world("cpmaxerr");
    // Too few allowed: the object fails, nothing changes.
    let (code, _, err) = w.run(&["copy", "--max-errors", "4"]);
    assert_eq!(code, 1);
    assert!(err.contains("more than 4 bad rows"), "{err}");
    assert_eq!(w.count("batch_raw"), 0);
    let s = w.json(&["copy", "--max-errors", "5"]);
    assert_eq!(s["rows"].as_u64().unwrap(), 20, "{s}");
    assert_eq!(s["rejects"].as_u64().unwrap(), 5);
    let l = ledger(&w);
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].1 + l[0].2) as usize,
        msgs.len(),
        "loaded + rejected = records"
    );
    let rej: Vec<(i64, String)> = pg()
        .query(
            &format!(
                "SELECT line, reason FROM {}.batchlayer_rejects ORDER BY line",
                w.schema
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let lines: Vec<i64> = rej.iter().map(|r| r.0).collect();
    assert_eq!(lines, vec![21, 22, 23, 24, 25]);
    assert!(
        rej[1].1.contains("followers_count") && rej[2].1.contains("created_at"),
        "{rej:?}"
    );
    assert!(
        rej[3].1.contains("UTF-8") && rej[4].1.contains("longer than"),
        "{rej:?}"
    );
    // NULL marker honoured.
    let nulls: i64 = pg()
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.batch_raw WHERE location IS NULL",
                w.schema
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let want = (0..20)
        .filter(|i| tweet(4, *i, 20).location.is_none())
        .count() as i64;
    assert_eq!(nulls, want);
}

#[test]
fn dry_run_lists_objects_and_sql_and_loads_nothing() {
    if !stack_up() {
        return;
    }
    let w = World::s3("cpdry");
    produce_raw(&brokers(), &w.topic, 2, &tweets(50, 5));
    w.run_ok(&["ingest"]);
    let out = w.run_ok(&["copy", "--dry-run"]);
    assert_eq!(out.matches("would load ").count(), 2, "{out}");
    assert!(
        out.contains("COPY \"") && out.contains("FROM STDIN"),
        "{out}"
    );
    let exists: i64 = pg()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&w.schema],
        )
        .unwrap()
        .get(0);
    assert_eq!(exists, 0, "dry run created tables");
    assert_eq!(w.json(&["copy"])["objects"].as_u64().unwrap(), 2);
}

#[test]
fn hostile_table_names_are_refused_and_errors_are_clear() {
    if !stack_up() {
        return;
    }
    let mut w = World::local("cpident");
    w.extra_toml = String::new();
    let cfg = w.config_path();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[warehouse]\n",
        "[warehouse]\nraw_table = \"x; drop table y\"\n",
    );
    let bad = w.dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = assert_cmd::Command::cargo_bin("batchlayer")
        .unwrap()
        .env_clear()
        .args(["--config", &path_str(&bad), "copy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid identifier"), "{err}");

    // Unreachable PostgreSQL: one line naming the server, no password.
    w.env.insert("PGPASSWORD".into(), "pg-secret-pw".into());
    let (code, _, err) = w.run(&[
        "copy",
        "--warehouse-url",
        "postgresql://postgres@127.0.0.1:1/postgres",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/postgres"),
        "{err}"
    );
    assert!(!err.contains("pg-secret-pw"));
    // Missing bucket.
    let (code, _, err) = w.run(&[
        "copy",
        "--archive",
        "s3://no-such-bucket-cp/x",
        "--s3-endpoint",
        &s3_endpoint(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no-such-bucket-cp"), "{err}");
}

#[test]
fn since_and_until_select_objects_by_time_folder() {
    if !stack_up() {
        return;
    }
    let w = World::local("cptime");
    // 2024-01-01T00:00Z and 2024-01-02T00:00Z
    produce_at(&brokers(), &w.topic, 1, &tweets(10, 6), 1_704_067_200_000);
    w.run_ok(&["ingest"]);
    produce_at(&brokers(), &w.topic, 1, &tweets(7, 7), 1_704_153_600_000);
    w.run_ok(&["ingest"]);
    let keys = w.data_objects();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys[0].contains("/2024/01/01/00/") && keys[1].contains("/2024/01/02/00/"),
        "{keys:?}"
    );
    let a = w.json(&["copy", "--since", "2024-01-02"]);
    assert_eq!(a["rows"].as_u64().unwrap(), 7, "{a}");
    let b = w.json(&["copy", "--until", "2024-01-01T12"]);
    assert_eq!(b["rows"].as_u64().unwrap(), 10, "{b}");
    let (code, _, err) = w.run(&["copy", "--since", "last tuesday"]);
    assert_eq!(code, 2, "{err}");
}

/// An object that disappears between listing and download: one clear error naming it, and
/// nothing loaded (the other objects before it stay loaded, each in its own transaction).
#[test]
fn copy_reads_only_recent_manifests_and_refuses_an_object_that_differs_from_its_manifest() {
    if !stack_up() {
        return;
    }
    let w = World::local("cpman");
    // Four ingest runs, four manifests; copy after each reads only the newest manifest.
    for run in 0..4u64 {
        produce_raw(&brokers(), &w.topic, 1, &tweets(40, 20 + run));
        let i = w.json(&["ingest"]);
        assert_eq!(i["objects"].as_u64().unwrap(), 1, "{i}");
        if run == 0 {
            continue; // leave the first run for the second copy
        }
        let c = w.json(&["copy"]);
        assert_eq!(
            c["rows"].as_u64().unwrap(),
            if run == 1 { 80 } else { 40 },
            "{c}"
        );
        let read = c["manifests_read"].as_u64().unwrap();
        // The second copy needs run 0's manifest too (two back); later ones only the newest.
        assert_eq!(read, if run == 1 { 2 } else { 1 }, "{c}");
    }
    assert_eq!(w.count("batch_raw"), 160);
    // A fifth object whose bytes no longer match its manifest: refused by name, nothing loaded.
    produce_raw(&brokers(), &w.topic, 1, &tweets(40, 30));
    w.run_ok(&["ingest"]);
    let loaded: Vec<String> = ledger(&w).into_iter().map(|r| r.0).collect();
    let key = w
        .data_objects()
        .into_iter()
        .find(|k| !loaded.contains(k))
        .expect("a new object");
    let path = std::path::Path::new(&w.archive).join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (code, _, err) = w.run(&["copy"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&key) && err.contains("corrupt") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(w.count("batch_raw"), 160);
    assert_eq!(ledger(&w).len(), 4);
}

#[test]
fn an_object_that_disappeared_fails_clearly_and_loads_nothing() {
    use batchlayer::archive::{ObjectMeta, ObjectStore, PutOutcome};
    if !stack_up() {
        return;
    }
    struct Vanishing(Box<dyn ObjectStore>);
    impl ObjectStore for Vanishing {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn check(&self) -> anyhow::Result<()> {
            self.0.check()
        }
        fn put_file_if_absent(&self, k: &str, p: &std::path::Path) -> anyhow::Result<PutOutcome> {
            self.0.put_file_if_absent(k, p)
        }
        fn put_bytes_if_absent(&self, k: &str, d: &[u8]) -> anyhow::Result<PutOutcome> {
            self.0.put_bytes_if_absent(k, d)
        }
        fn put_bytes(&self, k: &str, d: &[u8]) -> anyhow::Result<()> {
            self.0.put_bytes(k, d)
        }
        fn get_into(&self, k: &str, w: &mut (dyn std::io::Write + Send)) -> anyhow::Result<u64> {
            if !k.starts_with('_') {
                self.0.delete(k)?; // gone, as if a lifecycle rule removed it just now
            }
            self.0.get_into(k, w)
        }
        fn list(&self, p: &str) -> anyhow::Result<Vec<ObjectMeta>> {
            self.0.list(p)
        }
        fn list_dirs(&self, p: &str) -> anyhow::Result<Vec<String>> {
            self.0.list_dirs(p)
        }
        fn delete(&self, k: &str) -> anyhow::Result<()> {
            self.0.delete(k)
        }
    }
    let w = World::s3("cpgone");
    produce_raw(&brokers(), &w.topic, 1, &tweets(30, 8));
    w.run_ok(&["ingest"]);
    let key = w.data_objects()[0].clone();
    let s = w.settings();
    let store = Vanishing(w.store());
    let mut wh = batchlayer::warehouse::connect(&s.warehouse, &s.archive).unwrap();
    let opts = batchlayer::commands::copy::CopyOptions {
        wait: true,
        ..Default::default()
    };
    let err = batchlayer::commands::copy::run(
        &store,
        wh.as_mut(),
        &s.layout,
        &opts,
        &batchlayer::output::Output::silent(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&key) && msg.contains("not found"), "{msg}");
    assert_eq!(w.count("batch_raw"), 0);
    assert_eq!(w.count("batchlayer_loads"), 0);
}

#[test]
fn wrong_postgres_role_is_one_clear_line() {
    if !stack_up() {
        return;
    }
    let w = World::local("cprole");
    let (code, _, err) = w.run(&[
        "copy",
        "--warehouse-url",
        "postgresql://no_such_role@127.0.0.1:5432/postgres",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to PostgreSQL") && err.contains("no_such_role"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_bad_record_of_any_size_is_rejected_with_prefix_length_and_checksum() {
    use sha2::Digest;
    if !stack_up() {
        return;
    }
    let w = World::local("cphuge");
    // 300 kB without a delimiter (longer than the rejects table's raw column), then good rows.
    let huge: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut payloads = vec![Some(huge.clone())];
    payloads.extend(tweets(20, 9));
    produce_raw(&brokers(), &w.topic, 1, &payloads);
    w.run_ok(&["ingest"]);
    let v = w.json(&["copy", "--max-errors", "1"]);
    assert_eq!(
        (v["rows"].as_u64(), v["rejects"].as_u64()),
        (Some(20), Some(1)),
        "{v}"
    );
    let row = pg()
        .query_one(
            &format!(
                "SELECT length(raw), raw_bytes, raw_sha256, reason, line FROM {}.batchlayer_rejects",
                w.schema
            ),
            &[],
        )
        .unwrap();
    let (len, bytes, sha, reason, line): (i32, i64, String, String, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(len, 4096);
    assert_eq!(bytes, 300_000);
    assert_eq!(sha, hex::encode(sha2::Sha256::digest(&huge)));
    assert_eq!(line, 1);
    assert!(reason.contains("fields"), "{reason}");
    // Nothing is stuck: the next run has nothing left to load and succeeds.
    let v = w.json(&["copy", "--max-errors", "1"]);
    assert_eq!(v["objects"], 0, "{v}");
}

#[test]
fn the_same_offsets_archived_under_two_templates_load_once() {
    if !stack_up() {
        return;
    }
    let mut w = World::local("twotpl");
    produce_raw(&brokers(), &w.topic, 2, &tweets(200, 31));
    // A run stores its objects and manifest, then dies before committing...
    w.env
        .insert("BATCHLAYER_FAILPOINT".into(), "ingest-before-commit".into());
    let (code, _, _) = w.run(&["ingest"]);
    assert_eq!(code, 1);
    w.env.remove("BATCHLAYER_FAILPOINT");
    // ...and the key template changes before the next run, a repair run that lists only the
    // new template's folders: it archives the same offsets again under other keys. (A normal
    // run finds the dead run's objects through its marker, whatever the template.)
    w.extra_toml = "key_template = \"moved/{topic}/{YYYY}\"\n".into();
    let ing = w.json(&["ingest", "--full-scan"]);
    assert_eq!(ing["messages"], 200, "{ing}");
    let objects = w.data_objects();
    assert_eq!(objects.len(), 4, "{objects:?}");
    let cp = w.json(&["copy"]);
    assert_eq!(cp["rows"], 200, "{cp}");
    assert_eq!(cp["skipped_rows"], 200, "{cp}");
    assert_eq!(cp["skipped_objects"].as_array().unwrap().len(), 2, "{cp}");
    assert_eq!(w.raw_counts(), (200, 200));
    // The skipped objects are in the ledger: the next run has nothing to do.
    let again = w.json(&["copy"]);
    assert_eq!(
        (again["objects"].as_u64(), again["skipped_rows"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn objects_with_partly_overlapping_offsets_load_each_offset_once() {
    use batchlayer::archive::layout::{object_file_name, Compression};
    if !stack_up() {
        return;
    }
    let mut w = World::local("overlap");
    w.extra_toml = "max_object_records = 60\n".into();
    let msgs = tweets(100, 32);
    produce_raw(&brokers(), &w.topic, 1, &msgs);
    w.run_ok(&["ingest"]); // objects with offsets 0..59 and 60..99
                           // Another writer's object with offsets 40..79, under a key that sorts first.
    let mut body = Vec::new();
    for m in &msgs[40..80] {
        batchlayer::records::frame_into(m.as_ref().unwrap(), &mut body);
    }
    let key = format!(
        "{}/0000/{}",
        w.topic,
        object_file_name(&w.topic, 0, 40, 79, Compression::None)
    );
    w.store().put_bytes_if_absent(&key, &body).unwrap();
    // No manifest lists the other writer's object: a full scan finds it.
    let dry = w.json(&["copy", "--dry-run", "--full-scan"]);
    assert_eq!(dry["partial_objects"].as_array().unwrap().len(), 2, "{dry}");
    let cp = w.json(&["copy", "--full-scan"]);
    // 40..79 from the crafted object, then 0..39 and 80..99 from the two others.
    assert_eq!(cp["rows"], 100, "{cp}");
    assert_eq!(cp["skipped_rows"], 40, "{cp}");
    assert_eq!(cp["partial_objects"].as_array().unwrap().len(), 2, "{cp}");
    assert_eq!(w.raw_counts(), (100, 100));
    let loaded: Vec<(i64, i64, i64)> = pg()
        .query(
            &format!(
                "SELECT first_offset, rows_loaded, rows_skipped FROM {}.batchlayer_loads ORDER BY first_offset",
                w.schema
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(loaded, vec![(0, 40, 20), (40, 40, 0), (60, 20, 20)]);
}

#[test]
fn objects_of_a_dead_run_are_named_by_copy_and_loaded_once_the_next_ingest_adopts_them() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("cpdead");
    w.extra_toml = "max_object_records = 20\n".into();
    produce_raw(&brokers(), &w.topic, 1, &tweets(100, 33));
    // The ingest dies (abort, as kill -9) once its first object is stored: no manifest.
    w.env.insert(
        "BATCHLAYER_FAILPOINT".into(),
        "ingest-crash-after-first-object".into(),
    );
    let (code, _, _) = w.run(&["ingest"]);
    assert_ne!(code, 0);
    w.env.remove("BATCHLAYER_FAILPOINT");
    let stored = w.data_objects().len();
    assert!(stored > 0);
    // copy cannot see that object through the catalog: it says so, and loads nothing.
    let (code, out, err) = w.run(&["--json", "copy"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rows"], 0, "{v}");
    assert_eq!(v["unlisted_runs"].as_array().unwrap().len(), 1, "{v}");
    assert!(err.contains("no manifest lists yet"), "{err}");
    // The next ingest adopts it into its manifest; copy then loads every message once.
    let ing = w.json(&["ingest"]);
    assert_eq!(ing["adopted"].as_array().unwrap().len(), stored, "{ing}");
    let cp = w.json(&["copy"]);
    assert_eq!(cp["rows"], 100, "{cp}");
    assert!(cp["unlisted_runs"].as_array().unwrap().is_empty(), "{cp}");
    assert_eq!(w.raw_counts(), (100, 100));
}

/// Awkward but valid tweets (and a few bad ones) that the text and binary COPY formats must
/// load to the same rows: extreme integers, the NULL marker, a leap second, and locations
/// with multi-byte characters, tabs, backslashes, CR/LF, `\N` and 256 characters.
fn awkward_tweets() -> Vec<Option<Vec<u8>>> {
    let locations = [
        "".to_string(),
        "None".into(),
        "none".into(),
        "\\N".into(),
        "tab\there".into(),
        "back\\slash\\".into(),
        "line\nbreak\r\nand CR\r".into(),
        "Zürich 🇨🇭 東京 ☃".into(),
        "🙂".repeat(256),
        "é".repeat(256),
        "x".repeat(256),
        "  spaces  ".into(),
    ];
    let stamps = [
        "2020-12-31 23:59:60",
        "1970-01-01 00:00:00",
        "1999-12-31 23:59:59",
        "2000-01-01 00:00:00",
        "0001-01-01 00:00:00",
        "9999-12-31 23:59:59",
    ];
    let ints = ["0", "-1", "2147483647", "-2147483648", "007", "+5"];
    let ids = ["9223372036854775807", "-9223372036854775808", "0", "42"];
    let mut out = Vec::new();
    for (i, loc) in locations.iter().enumerate() {
        for (j, ts) in stamps.iter().enumerate() {
            let id = ids[(i + j) % ids.len()];
            let (a, b, c) = (ints[i % 6], ints[j % 6], ints[(i + j) % 6]);
            out.push(Some(format!("{id};{ts};{a};{loc};{b};{c};").into_bytes()));
        }
    }
    // Bad rows: rejected the same way whatever the format.
    for bad in [
        "1;2020-01-01 00:00:00;ten;x;1;1;",
        "2;2020-02-30 00:00:00;1;x;1;1;",
        "3;2020-01-01 00:00:00;1;x;1;99999999999;",
        "4;2020-01-01 00:00:00;1;x;1;1",
    ] {
        out.push(Some(bad.as_bytes().to_vec()));
    }
    out.push(Some(
        format!("5;2020-01-01 00:00:00;1;{};1;1;", "y".repeat(257)).into_bytes(),
    ));
    out
}

fn rows_as_text(schema: &str, table: &str, cols: &str) -> Vec<String> {
    pg().query(
        &format!("SELECT {cols} FROM {schema}.{table} t ORDER BY 1"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn text_and_binary_copy_load_the_same_rows_and_rejects() {
    if !stack_up() {
        return;
    }
    let w = World::local("cpfmt");
    let payloads = awkward_tweets();
    produce_raw(&brokers(), &w.topic, 3, &payloads);
    w.run_ok(&["ingest"]);
    // A second warehouse schema fed from the same archive.
    let mut w2 = World::local("cpfmt2");
    w2.archive = w.archive.clone();
    w2.topic = w.topic.clone();
    let text = w.json(&["copy", "--copy-format", "text", "--max-errors", "10"]);
    let binary = w2.json(&["copy", "--copy-format", "binary", "--max-errors", "10"]);
    assert_eq!(text["rows"], binary["rows"], "{text} {binary}");
    assert_eq!(text["rejects"].as_u64(), Some(5), "{text}");
    assert_eq!(binary["rejects"].as_u64(), Some(5), "{binary}");
    let valid = payloads.len() as i64 - 5;
    assert_eq!(w.count("batch_raw"), valid);
    let a = rows_as_text(&w.schema, "batch_raw", "t::text");
    let b = rows_as_text(&w2.schema, "batch_raw", "t::text");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "text and binary COPY loaded different rows");
    }
    // The leap second carried into the next minute in both.
    let leap: i64 = pg()
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.batch_raw WHERE created_at = '2021-01-01 00:00:00'",
                w2.schema
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leap, 12);
    let cols = "(t.key, t.line, t.raw, t.reason, t.raw_bytes, t.raw_sha256)::text";
    let ra = rows_as_text(&w.schema, "batchlayer_rejects", cols);
    let rb = rows_as_text(&w2.schema, "batchlayer_rejects", cols);
    assert_eq!(ra.len(), 5);
    let strip = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .map(|s| s.replace(&w.schema, "S").replace(&w2.schema, "S"))
            .collect()
    };
    assert_eq!(strip(ra), strip(rb));
}

#[test]
fn binary_falls_back_to_text_when_the_raw_table_has_other_types() {
    if !stack_up() {
        return;
    }
    let w = World::local("cpfall");
    produce_raw(&brokers(), &w.topic, 1, &tweets(30, 9));
    w.run_ok(&["ingest"]);
    // A hand-made raw table whose counts are numeric and whose time has a zone: binary rows
    // of bigint/integer/timestamp would be refused, text is converted by the server.
    pg().batch_execute(&format!(
        "CREATE TABLE {}.batch_raw (id numeric, created_at timestamptz, followers_count numeric, \
         location text, favorite_count numeric, retweet_count numeric)",
        w.schema
    ))
    .unwrap();
    let (code, out, err) = w.run(&["-v", "--json", "copy"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(err.contains("loading with text COPY"), "{err}");
    assert_eq!(w.count("batch_raw"), 30);
}

#[test]
fn copy_with_jobs_loads_each_object_once_even_when_two_run_at_once() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("cpjobs");
    w.extra_toml = "max_object_records = 250\n".into();
    produce_raw(&brokers(), &w.topic, 3, &tweets(3000, 6));
    w.run_ok(&["ingest"]);
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(|| w.json(&["copy", "--jobs", "3"]));
        let h2 = s.spawn(|| w.json(&["copy", "--jobs", "2"]));
        (h1.join().unwrap(), h2.join().unwrap())
    });
    let total = a["objects"].as_u64().unwrap() + b["objects"].as_u64().unwrap();
    assert_eq!(total, 12, "{a} {b}");
    assert_eq!(w.count("batch_raw"), 3000);
    let distinct: i64 = pg()
        .query_one(
            &format!("SELECT count(DISTINCT id) FROM {}.batch_raw", w.schema),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(distinct, 3000);
    assert_eq!(ledger(&w).len(), 12);
    // --jobs 0 is refused by the CLI.
    let (code, _, err) = w.run(&["copy", "--jobs", "0"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn copy_with_jobs_stops_at_a_corrupt_object_and_loads_no_object_twice() {
    if !stack_up() {
        return;
    }
    let mut w = World::local("cpjobsbad");
    w.extra_toml = "max_object_records = 100\n".into();
    produce_raw(&brokers(), &w.topic, 2, &tweets(800, 7));
    w.run_ok(&["ingest"]);
    // Corrupt one object: its checksum no longer matches the manifest's.
    let objs = w.data_objects();
    assert_eq!(objs.len(), 8);
    let victim = std::path::Path::new(&w.archive).join(&objs[3]);
    let good = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, b"not what the manifest says").unwrap();
    let (code, _, err) = w.run(&["copy", "--jobs", "3"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&objs[3]) && err.contains("sha256"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let loaded = ledger(&w).len() as i64;
    assert!(loaded < 8);
    assert_eq!(w.count("batch_raw"), loaded * 100);
    // Repaired, the next run loads the rest, and nothing twice.
    std::fs::write(&victim, good).unwrap();
    let s = w.json(&["copy", "--jobs", "3"]);
    assert_eq!(s["objects"].as_u64().unwrap() as i64, 8 - loaded, "{s}");
    assert_eq!(w.count("batch_raw"), 800);
    assert_eq!(ledger(&w).len(), 8);
}

#[test]
fn a_topic_archived_before_the_catalog_is_catalogued_by_the_next_new_topic_and_loaded() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("cplegacy");
    produce_raw(&brokers(), &w.topic, 1, &tweets(30, 41));
    w.run_ok(&["ingest"]);
    // As an archive written before the catalog existed: manifests and objects, no `_catalog/`.
    let store = w.store();
    let catalog = store.list("_catalog/").unwrap();
    assert!(!catalog.is_empty());
    for o in catalog {
        store.delete(&o.key).unwrap();
    }
    let legacy = w.topic.clone();
    // A second topic's first run in the same archive makes the catalog non-empty; copy,
    // which finds topics through the catalog, must still find the first one.
    w.topic = format!("{legacy}2");
    w.group = format!("{}2", w.group);
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(1000..1020, 41, 20));
    w.run_ok(&["ingest"]);
    let listed: Vec<String> = store
        .list("_catalog/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        listed.contains(&format!("_catalog/{legacy}/legacy.json")),
        "{listed:?}"
    );
    let cp = w.json(&["copy"]);
    assert_eq!(cp["rows"], 50, "{cp}");
    assert_eq!(w.raw_counts(), (50, 50));
    assert_eq!(w.json(&["copy"])["rows"], 0);
}

/// Every manifest key of the world's topic, sorted by name (oldest first).
fn manifest_keys(w: &World) -> Vec<String> {
    let mut keys: Vec<String> = w
        .store()
        .list(&format!("_manifests/{}/", w.topic))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort_by_key(|k| k.rsplit('/').next().unwrap_or_default().to_string());
    keys
}

/// Moves the newest manifest of the topic to the name it would have had `back` earlier (its
/// day folder too): a manifest written by an ingest host whose clock is behind, or one that
/// copy's window has long passed.
fn age_newest_manifest(w: &World, back: chrono::Duration) -> String {
    let store = w.store();
    let key = manifest_keys(w).pop().expect("a manifest");
    let name = key.rsplit('/').next().unwrap().trim_end_matches(".json");
    let (stamp, run) = name.split_at(20);
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ")
        .unwrap()
        .and_utc()
        - back;
    let new = format!(
        "_manifests/{}/{}/{}{run}.json",
        w.topic,
        t.format("%Y%m%d"),
        t.format("%Y%m%dT%H%M%S%.3fZ")
    );
    let mut body = Vec::new();
    store.get_into(&key, &mut body).unwrap();
    store.put_bytes(&new, &body).unwrap();
    store.delete(&key).unwrap();
    new
}

/// Item 2 of issue 23: with `--jobs`, an object that skips offsets another object of the same
/// run loads must not commit unless that one did. The manifest lists a crafted object with
/// offsets 40..79 first, then the run's own 0..59 and 60..99, which skip 40..79; the crafted
/// one's load fails after the others finished. Nothing may claim 40..79 unloaded, and the next
/// run loads every offset.
#[test]
fn copy_with_jobs_never_commits_an_object_whose_skipped_offsets_failed_to_load() {
    use batchlayer::archive::layout::{object_file_name, Compression};
    if !stack_up() {
        return;
    }
    let mut w = World::local("cpjobsdep");
    w.extra_toml = "max_object_records = 60\n".into();
    let msgs = tweets(100, 51);
    produce_raw(&brokers(), &w.topic, 1, &msgs);
    w.run_ok(&["ingest"]); // objects 0..59 and 60..99, one manifest
    let mut body = Vec::new();
    for m in &msgs[40..80] {
        batchlayer::records::frame_into(m.as_ref().unwrap(), &mut body);
    }
    let key = format!(
        "{}/0000/{}",
        w.topic,
        object_file_name(&w.topic, 0, 40, 79, Compression::None)
    );
    let store = w.store();
    store.put_bytes_if_absent(&key, &body).unwrap();
    // The manifest lists the crafted object first.
    let mkey = manifest_keys(&w).pop().unwrap();
    let mut raw = Vec::new();
    store.get_into(&mkey, &mut raw).unwrap();
    let mut man: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let objects = man["objects"].as_array_mut().unwrap();
    assert_eq!(objects.len(), 2, "{man}");
    let mut crafted = objects[0].clone();
    crafted["key"] = key.clone().into();
    crafted["first_offset"] = 40.into();
    crafted["last_offset"] = 79.into();
    crafted["records"] = 40.into();
    crafted["bytes"] = (body.len() as u64).into();
    crafted["uncompressed_bytes"] = (body.len() as u64).into();
    crafted["sha256"] = batchlayer::util::sha256_hex(&body).into();
    crafted["compression"] = serde_json::to_value(Compression::None).unwrap();
    crafted.as_object_mut().unwrap().remove("max_timestamp_ms");
    objects.insert(0, crafted);
    store.delete(&mkey).unwrap();
    store
        .put_bytes(&mkey, &serde_json::to_vec_pretty(&man).unwrap())
        .unwrap();
    w.env.insert(
        "BATCHLAYER_FAILPOINT".into(),
        "copy-first-parallel-load-fails-last".into(),
    );
    let (code, _, err) = w.run(&["copy", "--jobs", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failpoint"), "{err}");
    // Whatever committed, the ledger claims no offset whose record is not in the raw table.
    let claimed: std::collections::BTreeSet<i64> = pg()
        .query(
            &format!(
                "SELECT first_offset, last_offset FROM {}.batchlayer_loads",
                w.schema
            ),
            &[],
        )
        .unwrap()
        .iter()
        .flat_map(|r| r.get::<_, i64>(0)..=r.get::<_, i64>(1))
        .collect();
    let (rows, distinct) = w.raw_counts();
    assert_eq!(rows, distinct);
    assert_eq!(
        claimed.len() as i64,
        rows,
        "the ledger claims {} offsets, the raw table holds {rows} records",
        claimed.len()
    );
    w.env.remove("BATCHLAYER_FAILPOINT");
    let cp = w.json(&["copy", "--jobs", "2"]);
    assert_eq!(w.raw_counts(), (100, 100), "{cp}");
    assert_eq!(w.json(&["copy"])["objects"], 0);
}

/// Item 3 of issue 23: a filtered copy (--since, --key) on a recent manifest must not move the
/// cursor past older manifests it did not load, even ones far older than the catalog's grace.
#[test]
fn a_filtered_copy_never_moves_the_cursor_past_manifests_it_did_not_load() {
    if !stack_up() {
        return;
    }
    let w = World::local("cpcursor");
    let day = 86_400_000i64;
    let t0 = 1_704_067_200_000i64; // 2024-01-01T00:00Z
    produce_at(&brokers(), &w.topic, 1, &tweet_range(0..10, 61, 20), t0);
    w.run_ok(&["ingest"]);
    age_newest_manifest(&w, chrono::Duration::hours(3));
    produce_at(
        &brokers(),
        &w.topic,
        1,
        &tweet_range(10..17, 61, 20),
        t0 + day,
    );
    w.run_ok(&["ingest"]);
    age_newest_manifest(&w, chrono::Duration::hours(2));
    let a = w.json(&["copy", "--since", "2024-01-02"]);
    assert_eq!(a["rows"], 7, "{a}");
    let b = w.json(&["copy"]);
    assert_eq!(b["rows"], 10, "the older manifest was passed over: {b}");
    // --key on the newest object, with an unloaded manifest an hour before it.
    produce_at(
        &brokers(),
        &w.topic,
        1,
        &tweet_range(17..22, 61, 20),
        t0 + 2 * day,
    );
    w.run_ok(&["ingest"]);
    age_newest_manifest(&w, chrono::Duration::hours(1));
    produce_at(
        &brokers(),
        &w.topic,
        1,
        &tweet_range(22..25, 61, 20),
        t0 + 3 * day,
    );
    w.run_ok(&["ingest"]);
    let newest = w
        .data_objects()
        .into_iter()
        .find(|k| k.contains("/2024/01/04/"))
        .expect("the newest object");
    assert_eq!(w.json(&["copy", "--key", &newest])["rows"], 3);
    let c = w.json(&["copy"]);
    assert_eq!(
        c["rows"], 5,
        "the manifest before the --key one was passed over: {c}"
    );
    assert_eq!(w.raw_counts(), (25, 25));
}

/// Item 3 of issue 23: a manifest named long before copy's cursor (an ingest host whose clock is
/// behind by more than the grace) is still loaded: the catalog head's offsets say it must
/// exist, so copy lists every manifest once; it does not list them again while nothing is new.
#[test]
fn a_manifest_named_before_the_cursor_window_is_found_by_its_offsets() {
    if !stack_up() {
        return;
    }
    let w = World::local("cpskew");
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(0..10, 62, 20));
    w.run_ok(&["ingest"]);
    assert_eq!(w.json(&["copy"])["rows"], 10);
    // The next run's manifest carries a name two hours old.
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(10..20, 62, 20));
    w.run_ok(&["ingest"]);
    age_newest_manifest(&w, chrono::Duration::hours(2));
    let (code, out, err) = w.run(&["-v", "--json", "copy"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rows"], 10, "the skewed manifest was not loaded: {v}");
    assert!(err.contains("listed once"), "{err}");
    // Nothing new: no second full listing.
    let (code, out, err) = w.run(&["-v", "--json", "copy"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("listed once"), "{err}");
    assert!(
        out.contains("\"rows\":0") || out.contains("\"rows\": 0"),
        "{out}"
    );
    // A skewed manifest followed by a normal one: the normal one's offsets start above what
    // the ledger holds, and the full listing finds the one between.
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(20..30, 62, 20));
    w.run_ok(&["ingest"]);
    age_newest_manifest(&w, chrono::Duration::hours(3));
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(30..40, 62, 20));
    w.run_ok(&["ingest"]);
    let v = w.json(&["copy"]);
    assert_eq!(v["rows"], 20, "{v}");
    assert_eq!(w.raw_counts(), (40, 40));
}

/// Item 10 of issue 23: two raw tables sharing one ledger (two configs naming the same
/// `ledger_table`) each get every object; a ledger made by an older version (its key `"key"`
/// alone) is upgraded to the key (key, target_table).
#[test]
fn two_raw_tables_sharing_one_ledger_each_get_every_object() {
    if !stack_up() {
        return;
    }
    let mut w = World::local("cpshare");
    w.extra_toml = "max_object_records = 20\n".into();
    produce_raw(&brokers(), &w.topic, 2, &tweets(100, 63));
    w.run_ok(&["ingest"]);
    // The ledger as an older version made it.
    pg().batch_execute(&format!(
        r#"CREATE TABLE {s}.batchlayer_loads ("key" varchar(1024) PRIMARY KEY, "size" bigint NOT NULL, "sha256" varchar(64) NOT NULL, "rows_loaded" bigint NOT NULL, "rows_rejected" bigint NOT NULL, "target_table" varchar(256) NOT NULL, "loaded_at" timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP, "topic" varchar(255), "partition_id" integer, "epoch" integer, "first_offset" bigint, "last_offset" bigint, "rows_skipped" bigint, "manifest" varchar(256), "manifest_objects" integer)"#,
        s = w.schema
    ))
    .unwrap();
    let a = w.json(&["copy"]);
    assert_eq!(a["rows"], 100, "{a}");
    // A second config: another raw table, the same ledger table.
    let mut other = World::local("cpshare2");
    other.archive = w.archive.clone();
    other.topic = w.topic.clone();
    other.schema = w.schema.clone();
    other.tail_toml = "raw_table = \"other_raw\"\nledger_table = \"batchlayer_loads\"\n".into();
    let b = other.json(&["copy"]);
    assert_eq!(
        b["rows"], 100,
        "the second raw table skipped the first one's objects: {b}"
    );
    assert_eq!(w.count("batch_raw"), 100);
    assert_eq!(w.count("other_raw"), 100);
    let key: Vec<String> = pg()
        .query(
            &format!(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{}.batchlayer_loads'::regclass AND i.indisprimary ORDER BY a.attname",
                w.schema
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(key, vec!["key", "target_table"]);
    // Each table's questions are its own: nothing left for either, each status counts its own.
    assert_eq!(w.json(&["copy"])["objects"], 0);
    assert_eq!(other.json(&["copy"])["objects"], 0);
    let rows: i64 = pg()
        .query_one(
            &format!("SELECT count(*) FROM {}.batchlayer_loads", w.schema),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 2 * w.data_objects().len() as i64);
}

/// Text COPY sends every timestamp as ISO year-month-day, so the server's DateStyle cannot
/// change what a record's time means (here the layout's times are month/day/year and the
/// session reads day/month/year).
#[test]
fn text_copy_timestamps_mean_the_same_under_any_datestyle() {
    if !stack_up() {
        return;
    }
    let mut w = World::local("cpdatestyle");
    w.tail_toml = "[records]\ntimestamp_format = \"%m/%d/%Y %H:%M:%S\"\n".into();
    let msgs = vec![
        Some(b"1;01/02/2024 03:04:05;5;Paris;1;1;".to_vec()),
        Some(b"2;12/31/2023 23:59:59;5;Paris;1;1;".to_vec()),
    ];
    produce_raw(&brokers(), &w.topic, 1, &msgs);
    w.run_ok(&["ingest"]);
    let sep = if pg_url().contains('?') { '&' } else { '?' };
    w.env.insert(
        "BATCHLAYER_WAREHOUSE_URL".into(),
        format!("{}{sep}options=--DateStyle%3DSQL%2CDMY", pg_url()),
    );
    let cp = w.json(&["copy", "--copy-format", "text"]);
    assert_eq!(cp["rows"], 2, "{cp}");
    let got: Vec<String> = pg()
        .query(
            &format!(
                "SELECT to_char(created_at, 'YYYY-MM-DD HH24:MI:SS') FROM {}.batch_raw ORDER BY id",
                w.schema
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, vec!["2024-01-02 03:04:05", "2023-12-31 23:59:59"]);
}

/// A raw table whose text column is narrower than the layout's max_len is refused before any
/// load, naming the table, the column and both widths.
#[test]
fn a_raw_table_narrower_than_the_layout_is_refused_by_name() {
    if !stack_up() {
        return;
    }
    let w = World::local("cpwidth");
    produce_raw(&brokers(), &w.topic, 1, &tweets(10, 64));
    w.run_ok(&["ingest"]);
    pg().batch_execute(&format!(
        "CREATE TABLE {}.batch_raw (id bigint, created_at timestamp, followers_count integer, \
         location varchar(100), favorite_count integer, retweet_count integer)",
        w.schema
    ))
    .unwrap();
    let (code, _, err) = w.run(&["copy"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}.batch_raw", w.schema))
            && err.contains("location")
            && err.contains("varchar(100)")
            && err.contains("256"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(w.count("batch_raw"), 0);
}

/// A session that remembers the queries it runs (to EXPLAIN them afterwards).
struct Logged {
    s: batchlayer::warehouse::session::PgSession,
    log: Vec<String>,
}

impl batchlayer::warehouse::SqlSession for Logged {
    fn describe(&self) -> String {
        self.s.describe()
    }
    fn run_in_transaction(&mut self, stmts: &[String]) -> anyhow::Result<()> {
        self.log.extend(stmts.iter().cloned());
        self.s.run_in_transaction(stmts)
    }
    fn execute(&mut self, sql: &str) -> anyhow::Result<()> {
        self.log.push(sql.into());
        self.s.execute(sql)
    }
    fn query_i64(&mut self, sql: &str) -> anyhow::Result<Option<i64>> {
        self.log.push(sql.into());
        self.s.query_i64(sql)
    }
    fn table_exists(&mut self, table: &str) -> anyhow::Result<bool> {
        self.s.table_exists(table)
    }
    fn query_text(
        &mut self,
        sql: &str,
    ) -> anyhow::Result<(Vec<String>, batchlayer::warehouse::session::Rows)> {
        self.log.push(sql.into());
        self.s.query_text(sql)
    }
}

/// A warehouse that is only its (logged) session: what the ledger's questions need.
struct LoggedWh(Logged, batchlayer::warehouse::Names);

impl batchlayer::warehouse::Warehouse for LoggedWh {
    fn session(&mut self) -> &mut dyn batchlayer::warehouse::SqlSession {
        &mut self.0
    }
    fn names(&self) -> &batchlayer::warehouse::Names {
        &self.1
    }
    fn describe(&self) -> String {
        "logged".into()
    }
    fn try_lock(&mut self, _: &str) -> anyhow::Result<bool> {
        Ok(true)
    }
    fn lock_wait(&mut self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    fn load(
        &mut self,
        _: &[batchlayer::warehouse::LoadJob],
        _: &dyn batchlayer::archive::ObjectStore,
        _: &batchlayer::records::Codec,
        _: &batchlayer::warehouse::LoadOptions,
        _: &mut dyn FnMut(&batchlayer::warehouse::LoadResult),
    ) -> anyhow::Result<Vec<batchlayer::warehouse::LoadResult>> {
        anyhow::bail!("not a loader")
    }
    fn record_skipped(&mut self, _: &batchlayer::warehouse::LoadJob, _: u64) -> anyhow::Result<()> {
        anyhow::bail!("not a loader")
    }
    fn load_sql(
        &self,
        _: &[batchlayer::warehouse::LoadJob],
        _: &batchlayer::records::Layout,
    ) -> Vec<String> {
        Vec::new()
    }
}

/// Every ledger query a copy run makes, on a ledger of 20,000 rows of this raw table and
/// 20,000 of another: none reads the whole ledger (no sequential scan of it); each finds its
/// rows through an index. The plans are printed (bench/notes.md quotes them).
#[test]
fn every_per_run_ledger_query_of_copy_uses_an_index_on_a_large_ledger() {
    use batchlayer::warehouse::{Ledger, LoadJob, OffsetRange};
    if !s3_and_pg_up() {
        return;
    }
    let w = World::local("cpexplain");
    let s = w.settings();
    let mut wh = batchlayer::warehouse::connect(&s.warehouse, &s.archive).unwrap();
    wh.ensure_tables(&s.layout).unwrap();
    let target = format!("{}.batch_raw", w.schema);
    // 4 partitions x 5,000 objects of 10 offsets, 20 objects per manifest; the same again for
    // another raw table sharing the ledger.
    for t in [target.as_str(), "other.raw"] {
        pg().batch_execute(&format!(
            "INSERT INTO {s}.batchlayer_loads (key, size, sha256, rows_loaded, rows_rejected, target_table, topic, partition_id, epoch, first_offset, last_offset, rows_skipped, manifest, manifest_objects) \
             SELECT 't/' || (i % 4) || '/' || lpad(i::text, 8, '0'), 1000, 'x', 10, 0, '{t}', 't', i % 4, 0, (i / 4) * 10, (i / 4) * 10 + 9, 0, 'm' || lpad((i / 20)::text, 6, '0'), 20 \
             FROM generate_series(0, 19999) i; ANALYZE {s}.batchlayer_loads",
            s = w.schema
        ))
        .unwrap();
    }
    let names = batchlayer::warehouse::Names::from_settings(&s.warehouse);
    let session =
        batchlayer::warehouse::session::PgSession::connect(&s.warehouse, names.clone()).unwrap();
    let mut lw = LoggedWh(
        Logged {
            s: session,
            log: Vec::new(),
        },
        names,
    );
    let mut l = Ledger::new(&mut lw);
    // What one copy run asks: its cursor, the window's manifests, the jobs' keys, the offsets
    // around the jobs and the head, and the cursor it stores.
    assert_eq!(l.copy_cursor("t").unwrap(), None);
    let manifests: Vec<String> = (990..1000).map(|i| format!("m{i:06}")).collect();
    assert_eq!(l.manifests_loaded("t", &manifests).unwrap().len(), 10);
    let keys: Vec<String> = (19_900..20_000)
        .map(|i| format!("t/{}/{i:08}", i % 4))
        .collect();
    assert_eq!(l.keys_loaded(&keys).unwrap().len(), 100);
    let jobs: Vec<LoadJob> = (0..4)
        .map(|p| LoadJob {
            range: Some(OffsetRange {
                topic: "t".into(),
                partition: p,
                epoch: 0,
                first: 49_990,
                last: 50_009,
            }),
            ..Default::default()
        })
        .collect();
    assert_eq!(l.loaded_ranges(&jobs).unwrap().len(), 4);
    l.store_copy_cursor(
        "t",
        &batchlayer::warehouse::ledger::CopyCursor {
            manifest: "m000999".into(),
            checked: None,
        },
    )
    .unwrap();
    assert!(l.copy_cursor("t").unwrap().is_some());
    let queries: Vec<String> =
        lw.0.log
            .iter()
            .filter(|q| q.starts_with("SELECT"))
            .cloned()
            .collect();
    assert!(queries.len() >= 5, "{queries:?}");
    let mut c = pg();
    // The old cursor query, for comparison.
    let old = format!(
        r#"SELECT max("manifest") FROM "{}"."batchlayer_loads" WHERE "topic" = 't'"#,
        w.schema
    );
    for q in queries.iter().chain([&old]) {
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {q}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        eprintln!("-- {q}\n{plan}\n");
        if q != &old {
            assert!(
                !plan.contains("Seq Scan on batchlayer_loads"),
                "{q} reads the whole ledger:\n{plan}"
            );
        }
    }
}
