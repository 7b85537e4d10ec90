//! Many topics, one config (issue 26) on the real stack: topics by pattern (one created while
//! the pipeline already runs), each in its own table through ingest, copy, status, audit and
//! aggregate; topics sharing one raw table by a topic column; a strict-mode bad record that fails
//! only its topic; `--topic` narrowing each command; per-topic status thresholds; a topic no
//! route matches, archived but refused by copy.
//!
//! Each test's topics are `{prefix}.{x}` where the prefix is the world's unique schema name
//! (lower-case letters, digits, `_`), so `^{prefix}\.` matches this test's topics and no other's,
//! and the derived raw table of `{prefix}.{x}` is `{prefix}_{x}`.

use crate::common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// A world run with a multi-topic config file of its own (`World::config_path` always writes
/// `kafka.topic`, which excludes `topics` and `topics_pattern`).
struct Multi {
    w: World,
    cfg: PathBuf,
}

impl Multi {
    fn local(name: &str) -> Multi {
        Multi::with(World::local(name))
    }

    fn s3(name: &str) -> Multi {
        Multi::with(World::s3(name))
    }

    fn with(w: World) -> Multi {
        let cfg = w.dir.path().join("topics.toml");
        Multi { w, cfg }
    }

    fn prefix(&self) -> &str {
        &self.w.schema
    }

    /// This test's topic `{prefix}.{x}`.
    fn topic(&self, x: &str) -> String {
        format!("{}.{x}", self.prefix())
    }

    /// The raw table derived from `topic(x)`: the name sanitised (`.` becomes `_`).
    fn table(&self, x: &str) -> String {
        format!("{}_{x}", self.prefix())
    }

    /// A regex (Rust `regex` syntax) matching this test's topics only.
    fn pattern(&self) -> String {
        format!("^{}\\.", self.prefix())
    }

    /// Writes the config file: `kafka` names the topics (`topics = [...]` or `topics_pattern`),
    /// `archive` adds lines to [archive], `tail` adds sections ([[topics]], [records.X],
    /// [aggregate]...).
    fn configure(&self, kafka: &str, archive: &str, tail: &str) {
        let text = format!(
            "[kafka]\nbrokers = \"{}\"\ngroup = \"{}\"\n{kafka}\n\n[archive]\nurl = \"{}\"\n{archive}\n\n[warehouse]\nurl = \"{}\"\nschema = \"{}\"\n\n{tail}\n",
            brokers(),
            self.w.group,
            self.w.archive,
            pg_url(),
            self.w.schema,
        );
        // Atomic, as World::config_path.
        let tmp = self
            .w
            .dir
            .path()
            .join(format!("topics.toml.{}", unique("tmp")));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.cfg).unwrap();
    }

    /// A file in the test's directory (view SQL), its path as TOML wants it.
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.w.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        path_str(&p)
    }

    /// The real binary with a clean environment (as World::std_cmd) and this config file.
    fn cmd(&self) -> assert_cmd::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("batchlayer"));
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.env("HOME", std::env::var("HOME").unwrap_or_default());
        c.env("CI", "true");
        c.envs(&self.w.env);
        c.arg("--config").arg(&self.cfg);
        let mut c = assert_cmd::Command::from_std(c);
        c.timeout(Duration::from_secs(300));
        c
    }

    /// Runs and returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd().args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(
            code, 0,
            "batchlayer {args:?} failed:\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    /// `--json` run that must succeed: its one document.
    fn json(&self, args: &[&str]) -> Value {
        let (code, doc, err) = self.json_run(args);
        assert_eq!(
            code, 0,
            "batchlayer --json {args:?} failed: {doc}\nstderr: {err}"
        );
        doc
    }

    /// `--json` run whatever its exit: (exit code, the document on stdout, stderr).
    fn json_run(&self, args: &[&str]) -> (i32, Value, String) {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let (code, out, err) = self.run(&a);
        let doc = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!("batchlayer {a:?} ({code}): not JSON ({e}):\nstdout: {out}\nstderr: {err}")
        });
        (code, doc, err)
    }

    /// Rows of `table` in the world's schema; None when the table does not exist.
    fn rows(&self, table: &str) -> Option<i64> {
        if !self.table_exists(table) {
            return None;
        }
        Some(self.w.count(table))
    }

    fn table_exists(&self, table: &str) -> bool {
        let n: i64 = pg()
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
                &[&self.w.schema, &table],
            )
            .unwrap()
            .get(0);
        n == 1
    }

    /// Every table of the world's schema.
    fn tables(&self) -> Vec<String> {
        pg().query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&self.w.schema],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// Archived data objects of `topic` (by the topic their names carry).
    fn objects_of(&self, topic: &str) -> Vec<String> {
        // World::store reads the world's own (single-topic) config: the same archive.
        self.w
            .data_objects()
            .into_iter()
            .filter(|k| {
                batchlayer::archive::layout::parse_object_key(k).map(|(t, ..)| t)
                    == Some(topic.to_string())
            })
            .collect()
    }
}

/// `topics = ["x", "y"]` for [kafka] or a view.
fn toml_list(names: &[&String]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", q.join(", "))
}

fn sorted(names: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The names an object's keys or an array's strings give (sorted): `"topics"` of a multi-topic
/// document is a map by topic; audit's may be a list of names.
fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = match v {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .unwrap_or_else(|| panic!("not a name: {x}"))
                    .to_string()
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("neither a map nor a list of topics: {other}"),
    };
    n.sort();
    n.dedup();
    n
}

/// Every topic a multi-topic `--json` document reports on: under "topics", "failed" or "idle".
fn reported(doc: &Value) -> Vec<String> {
    let mut v = names(&doc["topics"]);
    v.extend(names(&doc["failed"]));
    v.extend(names(&doc["idle"]));
    v.sort();
    v.dedup();
    v
}

fn is_idle(doc: &Value, topic: &str) -> bool {
    names(&doc["idle"]).iter().any(|t| t == topic)
}

/// A topic's count `field` in a multi-topic ingest or copy document: 0 when the topic was idle
/// (an idle topic may or may not also appear under "topics").
fn per_topic(doc: &Value, topic: &str, field: &str) -> i64 {
    match doc["topics"][topic][field].as_i64() {
        Some(n) => n,
        None if is_idle(doc, topic) => 0,
        None => panic!("no {field} for topic {topic}: {doc}"),
    }
}

/// The view table `view`'s (src, n) rows, in order.
fn src_counts(m: &Multi, view: &str) -> Vec<(String, i64)> {
    pg().query(
        &format!("SELECT src, n FROM {}.{view} ORDER BY src", m.w.schema),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn pairs(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

#[test]
fn three_topics_by_pattern_each_in_its_own_table_through_every_step() {
    if !stack_up() {
        return;
    }
    let m = Multi::s3("tpall");
    let (a, b, c) = (m.topic("a"), m.topic("b"), m.topic("c"));
    // A view over the three raw tables, by topic; and one over a alone.
    let all_sql = m.file(
        "all_topics.sql",
        &format!(
            "SELECT 'a' AS src, count(*) AS n FROM {{raw:{a}}}\n\
             UNION ALL SELECT 'b', count(*) FROM {{raw:{b}}}\n\
             UNION ALL SELECT 'c', count(*) FROM {{raw:{c}}}\n"
        ),
    );
    let only_a_sql = m.file(
        "only_a.sql",
        &format!("SELECT 'a' AS src, count(*) AS n FROM {{raw:{a}}}\n"),
    );
    m.configure(
        &format!("topics_pattern = '{}'", m.pattern()),
        "max_object_records = 25",
        &format!(
            "[aggregate]\nview = \"all_topics\"\nsql = \"{all_sql}\"\ntopics = {}\n\n\
             [[aggregate.views]]\nview = \"only_a\"\nsql = \"{only_a_sql}\"\ntopics = {}\n",
            toml_list(&[&a, &b, &c]),
            toml_list(&[&a]),
        ),
    );

    // Two topics exist: the pattern finds both, each lands in its derived table.
    produce_raw(&brokers(), &a, 2, &tweet_payloads(60, 1, 10));
    produce_raw(&brokers(), &b, 3, &tweet_payloads(40, 2, 10));
    let ing = m.json(&["ingest"]);
    assert_eq!(reported(&ing), sorted(&[&a, &b]), "{ing}");
    assert_eq!(ing["messages"], 100, "{ing}");
    assert_eq!(per_topic(&ing, &a, "messages"), 60, "{ing}");
    assert_eq!(per_topic(&ing, &b, "messages"), 40, "{ing}");
    assert!(names(&ing["failed"]).is_empty(), "{ing}");
    let cp = m.json(&["copy"]);
    assert_eq!(cp["rows"], 100, "{cp}");
    assert_eq!(per_topic(&cp, &a, "rows"), 60, "{cp}");
    assert_eq!(per_topic(&cp, &b, "rows"), 40, "{cp}");
    assert_eq!(m.rows(&m.table("a")), Some(60));
    assert_eq!(m.rows(&m.table("b")), Some(40));
    assert_eq!(m.rows(&m.table("c")), None);
    assert!(!m.table_exists("batch_raw"), "{:?}", m.tables());

    // A third matching topic appears while the pipeline runs (and a gets more): the next runs
    // pick it up; b has nothing new.
    produce_raw(&brokers(), &c, 1, &tweet_payloads(30, 3, 10));
    produce_raw(&brokers(), &a, 2, &tweet_range(60..70, 1, 10));
    let ing = m.json(&["ingest"]);
    assert_eq!(reported(&ing), sorted(&[&a, &b, &c]), "{ing}");
    assert_eq!(ing["messages"], 40, "{ing}");
    assert_eq!(per_topic(&ing, &a, "messages"), 10, "{ing}");
    assert_eq!(per_topic(&ing, &b, "messages"), 0, "{ing}");
    assert_eq!(per_topic(&ing, &c, "messages"), 30, "{ing}");
    // b, with nothing new, is passed by without joining the group for it.
    assert_eq!(ing["idle"], serde_json::json!([b]), "{ing}");
    let cp = m.json(&["copy"]);
    assert_eq!(cp["rows"], 40, "{cp}");
    assert_eq!(per_topic(&cp, &b, "rows"), 0, "{cp}");
    assert_eq!(cp["idle"], serde_json::json!([b]), "{cp}");
    assert_eq!(per_topic(&cp, &c, "rows"), 30, "{cp}");
    for (x, n) in [("a", 70), ("b", 40), ("c", 30)] {
        assert_eq!(m.rows(&m.table(x)), Some(n), "table of {x}");
        // Each raw table has its own ledger.
        assert!(
            m.table_exists(&format!("{}_loads", m.table(x))),
            "{:?}",
            m.tables()
        );
    }
    assert!(!m.objects_of(&c).is_empty());

    // status: one report per topic, each caught up, its rows from its own ledger.
    let s = m.json(&["status", "--max-lag", "0", "--max-unloaded-age", "1h"]);
    assert_eq!(names(&s["topics"]), sorted(&[&a, &b, &c]), "{s}");
    for (t, n) in [(&a, 70), (&b, 40), (&c, 30)] {
        let r = &s["topics"][t.as_str()];
        assert_eq!(r["topic"], t.as_str(), "{r}");
        assert_eq!(r["total_lag"], 0, "{r}");
        assert_eq!(r["archive"]["unloaded_objects"], 0, "{r}");
        assert_eq!(r["warehouse"]["rows_loaded"], n, "{r}");
    }
    assert_eq!(s["lag"], 0, "{s}");
    assert!(s["problems"].as_array().unwrap().is_empty(), "{s}");
    let screen = m.run_ok(&["status"]);
    for t in [&a, &b, &c] {
        assert!(
            screen.contains(&format!("topic {t} ")),
            "{t} not in:\n{screen}"
        );
    }

    // audit: every topic, no problem.
    let au = m.json(&["audit"]);
    assert!(au["problems"].as_array().unwrap().is_empty(), "{au}");
    assert_eq!(names(&au["topics"]), sorted(&[&a, &b, &c]), "{au}");
    let out = m.run_ok(&["audit"]);
    assert!(out.contains("no problems found"), "{out}");

    // aggregate: a view reading the three tables by {raw:TOPIC}.
    m.run_ok(&["aggregate"]);
    assert_eq!(
        src_counts(&m, "all_topics"),
        pairs(&[("a", 70), ("b", 40), ("c", 30)])
    );
    assert_eq!(src_counts(&m, "only_a"), pairs(&[("a", 70)]));

    // The completeness gate checks the topics a view declares: one more message of c,
    // archived, not loaded, holds back all_topics but not only_a.
    std::thread::sleep(Duration::from_secs(4));
    produce_raw(&brokers(), &c, 1, &tweet_range(30..31, 3, 10));
    let ing = m.json(&["ingest"]);
    assert_eq!(per_topic(&ing, &c, "messages"), 1, "{ing}");
    let (code, _, err) = m.run(&["aggregate", "--require-complete-through", "2s"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("require_complete_through"), "{err}");
    // Adjust to the lead's wording: the line names the topic that holds the view back.
    assert!(err.contains(&c), "the holding topic is not named: {err}");
    assert_eq!(
        src_counts(&m, "all_topics"),
        pairs(&[("a", 70), ("b", 40), ("c", 30)]),
        "a refused build replaced the view"
    );
    m.run_ok(&[
        "aggregate",
        "--view",
        "only_a",
        "--require-complete-through",
        "2s",
    ]);
    m.run_ok(&["copy"]);
    m.run_ok(&["aggregate", "--require-complete-through", "2s"]);
    assert_eq!(
        src_counts(&m, "all_topics"),
        pairs(&[("a", 70), ("b", 40), ("c", 31)])
    );
}

#[test]
fn two_topics_share_one_raw_table_with_a_topic_column() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpshare");
    let (a, b, c) = (m.topic("a"), m.topic("b"), m.topic("c"));
    let shared = format!("{}_shared", m.prefix());
    // a and b into one table (routes by name); c, by the pattern route after them (the first
    // route that matches wins), into its derived table with a named JSON layout.
    let json_layout = crate::formats::JSON_TWEETS
        .replace("[records]", "[records.json_tweets]")
        .replace("[[records.columns]]", "[[records.json_tweets.columns]]");
    let routes = |topic_column: bool| {
        let col = if topic_column {
            "topic_column = \"topic\"\n"
        } else {
            ""
        };
        format!(
            "[[topics]]\nname = \"{a}\"\nraw_table = \"{shared}\"\n{col}\n\
             [[topics]]\nname = \"{b}\"\nraw_table = \"{shared}\"\n{col}\n\
             [[topics]]\npattern = '{}'\nrecords = \"json_tweets\"\n\n{json_layout}",
            m.pattern()
        )
    };
    let kafka = format!("topics = {}", toml_list(&[&a, &b, &c]));
    m.configure(&kafka, "", &routes(true));

    produce_raw(&brokers(), &a, 2, &tweet_payloads(30, 1, 10));
    produce_raw(&brokers(), &b, 1, &tweet_payloads(20, 2, 10));
    let json: Vec<Option<Vec<u8>>> = (0..15)
        .map(|i| Some(crate::formats::json_tweet(3, i, 10)))
        .collect();
    produce_raw(&brokers(), &c, 1, &json);
    let ing = m.json(&["ingest"]);
    assert_eq!(ing["messages"], 65, "{ing}");

    // Without a topic column, two topics in one table are refused, naming the table.
    m.configure(&kafka, "", &routes(false));
    let (code, out, err) = m.run(&["copy"]);
    assert_eq!(code, 2, "{out}\n{err}");
    // Adjust to the lead's wording: the line names the table (or both topics).
    assert!(
        err.contains(&shared) || (err.contains(&a) && err.contains(&b)),
        "{err}"
    );
    assert!(
        err.contains("topic_column"),
        "the remedy is not named: {err}"
    );
    assert_eq!(m.rows(&shared).unwrap_or(0), 0, "rows loaded into {shared}");
    // The refusal is a's and b's alone: c, in a table of its own, loaded.
    let c_table = format!("{}_c", m.prefix());
    assert_eq!(m.rows(&c_table), Some(15), "{out}\n{err}");

    // With it: both topics' rows in the shared table, told apart by the column; c, loaded
    // already, is passed by.
    m.configure(&kafka, "", &routes(true));
    let cp = m.json(&["copy"]);
    assert_eq!(cp["rows"], 50, "{cp}");
    assert_eq!(cp["idle"], serde_json::json!([c]), "{cp}");
    assert_eq!(per_topic(&cp, &a, "rows"), 30, "{cp}");
    assert_eq!(per_topic(&cp, &b, "rows"), 20, "{cp}");
    let by_topic: Vec<(String, i64)> = pg()
        .query(
            &format!(
                "SELECT topic, count(*) FROM {}.{shared} GROUP BY topic ORDER BY topic",
                m.w.schema
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(by_topic, vec![(a.clone(), 30), (b.clone(), 20)]);
    // The ids of each topic's tweets are its own (the column, not the order, says which).
    let b_ids: Vec<i64> = (0..20)
        .map(|i| batchlayer::tweets::tweet(2, i, 10).id)
        .collect();
    let ids_b: i64 = pg()
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.{shared} WHERE topic = $1 AND id = ANY($2)",
                m.w.schema
            ),
            &[&b, &b_ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(ids_b, 20);
    // c went to its own table with the JSON layout.
    assert_eq!(m.rows(&m.table("c")), Some(15), "{:?}", m.tables());
    assert!(
        !m.table_exists(&m.table("a")) && !m.table_exists(&m.table("b")),
        "{:?}",
        m.tables()
    );
    let followers: i64 = pg()
        .query_one(
            &format!(
                "SELECT sum(followers_count)::bigint FROM {}.{}",
                m.w.schema,
                m.table("c")
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let want: i64 = (0..15)
        .map(|i| i64::from(batchlayer::tweets::tweet(3, i, 10).followers_count))
        .sum();
    assert_eq!(followers, want);

    // Per topic from the shared ledger; loaded once; audit agrees.
    let s = m.json(&["status"]);
    assert_eq!(
        s["topics"][a.as_str()]["warehouse"]["rows_loaded"],
        30,
        "{s}"
    );
    assert_eq!(
        s["topics"][b.as_str()]["warehouse"]["rows_loaded"],
        20,
        "{s}"
    );
    assert_eq!(
        s["topics"][c.as_str()]["warehouse"]["rows_loaded"],
        15,
        "{s}"
    );
    assert_eq!(m.json(&["copy"])["rows"], 0);
    assert_eq!(m.rows(&shared), Some(50));
    let au = m.json(&["audit"]);
    assert!(au["problems"].as_array().unwrap().is_empty(), "{au}");
}

#[test]
fn a_strict_bad_record_fails_only_its_topic() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpstrict");
    let (a, b, c) = (m.topic("a"), m.topic("b"), m.topic("c"));
    m.configure(&format!("topics_pattern = '{}'", m.pattern()), "", "");
    produce_raw(&brokers(), &a, 2, &tweet_payloads(30, 1, 10));
    let mut bad = tweet_payloads(20, 2, 10);
    bad.push(Some(b"2;2024-01-01 00:00:00;many;Paris;1;1;".to_vec())); // not an integer
    produce_raw(&brokers(), &b, 1, &bad);
    produce_raw(&brokers(), &c, 2, &tweet_payloads(40, 3, 10));
    let ing = m.json(&["ingest"]);
    assert_eq!(ing["messages"], 91, "{ing}");

    // Strict (the default): b fails, a and c load in full.
    let (code, doc, err) = m.json_run(&["copy"]);
    assert_eq!(code, 1, "{doc}\n{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("topics failed"))
        .collect();
    assert_eq!(lines.len(), 1, "one line naming the failed topics: {err}");
    assert!(lines[0].contains("1 of 3 topics failed"), "{err}");
    assert!(lines[0].contains(&format!("topic {b}")), "{err}");
    assert!(
        lines[0].contains("record 21") && lines[0].contains("followers_count"),
        "the reason is not named: {err}"
    );
    assert!(!lines[0].contains(&a) && !lines[0].contains(&c), "{err}");
    assert_eq!(names(&doc["failed"]), vec![b.clone()], "{doc}");
    assert_eq!(doc["failed"][b.as_str()]["exit"], 1, "{doc}");
    assert!(
        doc["failed"][b.as_str()]["error"]
            .as_str()
            .unwrap()
            .contains("record 21"),
        "{doc}"
    );
    assert_eq!(doc["rows"], 70, "{doc}");
    assert_eq!(per_topic(&doc, &a, "rows"), 30, "{doc}");
    assert_eq!(per_topic(&doc, &c, "rows"), 40, "{doc}");
    assert_eq!(m.rows(&m.table("a")), Some(30));
    assert_eq!(m.rows(&m.table("c")), Some(40));
    assert_eq!(
        m.rows(&m.table("b")).unwrap_or(0),
        0,
        "strict failure left rows"
    );

    // Tolerating the bad row: b loads, its reject in its own rejects table; a and c are done.
    let doc = m.json(&["copy", "--max-errors", "1"]);
    assert_eq!(doc["rows"], 20, "{doc}");
    assert_eq!(doc["rejects"], 1, "{doc}");
    assert_eq!(per_topic(&doc, &a, "rows"), 0, "{doc}");
    assert_eq!(m.rows(&m.table("b")), Some(20));
    assert_eq!(m.rows(&format!("{}_rejects", m.table("b"))), Some(1));
    assert_eq!(m.rows(&m.table("a")), Some(30));
    assert_eq!(m.rows(&m.table("c")), Some(40));
}

#[test]
fn topic_flag_narrows_each_command() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpflag");
    let (a, b) = (m.topic("a"), m.topic("b"));
    m.configure(&format!("topics = {}", toml_list(&[&a, &b])), "", "");
    produce_raw(&brokers(), &a, 2, &tweet_payloads(30, 1, 10));
    produce_raw(&brokers(), &b, 2, &tweet_payloads(20, 2, 10));

    // ingest --topic a: a only; b keeps its lag and has nothing archived.
    let ing = m.json(&["ingest", "--topic", &a]);
    assert_eq!(reported(&ing), vec![a.clone()], "{ing}");
    assert_eq!(ing["messages"], 30, "{ing}");
    assert!(!m.objects_of(&a).is_empty());
    assert!(m.objects_of(&b).is_empty(), "{:?}", m.objects_of(&b));
    let s = m.json(&["status"]);
    assert_eq!(names(&s["topics"]), sorted(&[&a, &b]), "{s}");
    assert_eq!(s["topics"][a.as_str()]["total_lag"], 0, "{s}");
    // tansu may report a high watermark short of the last batch (docs/operating.md): > 0.
    assert!(
        s["topics"][b.as_str()]["total_lag"].as_i64().unwrap() > 0,
        "{s}"
    );

    // copy --topic a: a only.
    let cp = m.json(&["copy", "--topic", &a]);
    assert_eq!(reported(&cp), vec![a.clone()], "{cp}");
    assert_eq!(cp["rows"], 30, "{cp}");
    assert_eq!(m.rows(&m.table("a")), Some(30));
    assert_eq!(m.rows(&m.table("b")), None);

    // status --topic b: b only, in JSON and on the screen.
    let s = m.json(&["status", "--topic", &b]);
    assert_eq!(names(&s["topics"]), vec![b.clone()], "{s}");
    let screen = m.run_ok(&["status", "--topic", &b]);
    assert!(screen.contains(&format!("topic {b} ")), "{screen}");
    assert!(!screen.contains(&a), "{screen}");

    // audit --topic a: a only.
    let au = m.json(&["audit", "--topic", &a]);
    assert_eq!(names(&au["topics"]), vec![a.clone()], "{au}");
    assert!(au["problems"].as_array().unwrap().is_empty(), "{au}");

    // A pattern value: b alone through ingest and copy.
    let only_b = format!("^{}\\.b", m.prefix());
    let ing = m.json(&["ingest", "--topic", &only_b]);
    assert_eq!(reported(&ing), vec![b.clone()], "{ing}");
    assert_eq!(ing["messages"], 20, "{ing}");
    let cp = m.json(&["copy", "--topic", &only_b]);
    assert_eq!(reported(&cp), vec![b.clone()], "{cp}");
    assert_eq!(cp["rows"], 20, "{cp}");
    assert_eq!(m.rows(&m.table("b")), Some(20));
    assert_eq!(m.rows(&m.table("a")), Some(30));
    let s = m.json(&["status", "--topic", &only_b, "--max-lag", "0"]);
    assert_eq!(names(&s["topics"]), vec![b.clone()], "{s}");
    // Repeated: both.
    let au = m.json(&["audit", "--topic", &a, "--topic", &b]);
    assert_eq!(names(&au["topics"]), sorted(&[&a, &b]), "{au}");
    assert!(au["problems"].as_array().unwrap().is_empty(), "{au}");
}

#[test]
fn status_thresholds_apply_per_topic() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tplag");
    let (a, b) = (m.topic("a"), m.topic("b"));
    m.configure(&format!("topics = {}", toml_list(&[&a, &b])), "", "");
    produce_raw(&brokers(), &a, 2, &tweet_payloads(30, 1, 10));
    produce_raw(&brokers(), &b, 2, &tweet_payloads(30, 2, 10));
    m.run_ok(&["ingest"]);
    m.run_ok(&["copy"]);
    m.run_ok(&["status", "--max-lag", "0", "--max-unloaded-age", "1"]);

    // One new message of b: b lags, a does not; the line names b only.
    produce_raw(&brokers(), &b, 2, &tweet_range(30..31, 2, 10));
    let (code, s, err) = m.json_run(&["status", "--max-lag", "0"]);
    assert_eq!(code, 5, "{s}\n{err}");
    assert!(err.contains(&format!("topic {b} lags 1 messages")), "{err}");
    assert!(!err.contains(&a), "{err}");
    assert_eq!(s["topics"][b.as_str()]["total_lag"], 1, "{s}");
    assert_eq!(s["topics"][a.as_str()]["total_lag"], 0, "{s}");
    assert_eq!(s["lag"], 1, "{s}");
    let problems = s["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{s}");
    assert!(problems[0].to_string().contains(&b), "{s}");
    // Narrowed to a: healthy.
    m.run_ok(&["status", "--max-lag", "0", "--topic", &a]);

    // Both lag 1: a total of 2, but no topic above --max-lag 1.
    produce_raw(&brokers(), &a, 2, &tweet_range(30..31, 1, 10));
    let (code, s, err) = m.json_run(&["status", "--max-lag", "1"]);
    assert_eq!(code, 0, "a threshold applied to the total: {s}\n{err}");
    assert_eq!(s["lag"], 2, "{s}");
    let (code, _, err) = m.run(&["status", "--max-lag", "0"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains(&format!("topic {a} lags 1")) && err.contains(&format!("topic {b} lags 1")),
        "{err}"
    );

    // b ingested, not loaded: its object waits; a has none waiting.
    m.run_ok(&["ingest", "--topic", &b]);
    std::thread::sleep(Duration::from_secs(2));
    let (code, s, err) = m.json_run(&["status", "--max-unloaded-age", "1"]);
    assert_eq!(code, 5, "{s}\n{err}");
    assert!(err.contains(&b), "{err}");
    assert!(!err.contains(&a), "{err}");
    assert_eq!(
        s["topics"][b.as_str()]["archive"]["unloaded_objects"],
        1,
        "{s}"
    );
    assert_eq!(
        s["topics"][a.as_str()]["archive"]["unloaded_objects"],
        0,
        "{s}"
    );
    m.run_ok(&["copy"]);
    m.run_ok(&["status", "--max-unloaded-age", "1"]);
}

#[test]
fn a_topic_that_matches_no_route_is_archived_but_refused_by_copy() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpnoroute");
    let (a, b) = (m.topic("a"), m.topic("b"));
    m.configure(
        &format!("topics = {}", toml_list(&[&a, &b])),
        "",
        &format!("[[topics]]\nname = \"{a}\"\n"),
    );
    produce_raw(&brokers(), &a, 2, &tweet_payloads(20, 1, 10));
    produce_raw(&brokers(), &b, 1, &tweet_payloads(10, 2, 10));

    // ingest archives both.
    let ing = m.json(&["ingest"]);
    assert_eq!(ing["messages"], 30, "{ing}");
    assert_eq!(per_topic(&ing, &b, "messages"), 10, "{ing}");
    assert!(!m.objects_of(&a).is_empty());
    assert!(!m.objects_of(&b).is_empty(), "b was not archived");

    // copy loads a, refuses b: exit 2, naming it; b lands in no table.
    let (code, doc, err) = m.json_run(&["copy"]);
    assert_eq!(code, 2, "{doc}\n{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("topics failed"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&format!("topic {b}")), "{err}");
    assert!(!lines[0].contains(&format!("topic {a}")), "{err}");
    assert_eq!(names(&doc["failed"]), vec![b.clone()], "{doc}");
    assert_eq!(doc["failed"][b.as_str()]["exit"], 2, "{doc}");
    assert_eq!(per_topic(&doc, &a, "rows"), 20, "{doc}");
    assert_eq!(m.rows(&m.table("a")), Some(20));
    assert!(
        m.tables().iter().all(|t| !t.starts_with(&m.table("b"))),
        "a table for b: {:?}",
        m.tables()
    );

    // Again: still refused; a has nothing new. Narrowed to a: success.
    let (code, _, err) = m.run(&["copy"]);
    assert_eq!(code, 2, "{err}");
    let cp = m.json(&["copy", "--topic", &a]);
    assert_eq!(cp["rows"], 0, "{cp}");
    assert_eq!(m.rows(&m.table("a")), Some(20));
}

#[test]
fn a_topic_missing_from_the_cluster_fails_alone_and_the_metrics_name_each_topic() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpmissing");
    let (a, gone) = (m.topic("a"), m.topic("gone"));
    m.configure(&format!("topics = {}", toml_list(&[&a, &gone])), "", "");
    produce_raw(&brokers(), &a, 2, &tweet_payloads(20, 1, 10));
    let prom = m.w.dir.path().join("ingest.prom");
    let prom_arg = path_str(&prom);

    // The listed topic the cluster lacks fails; a is archived and committed all the same.
    let (code, doc, err) = m.json_run(&["ingest", "--metrics-file", &prom_arg]);
    assert_eq!(code, 1, "{doc}\n{err}");
    let line = err
        .lines()
        .filter(|l| l.contains("topics failed"))
        .collect::<Vec<_>>();
    assert_eq!(line.len(), 1, "{err}");
    assert!(
        line[0].contains(&format!("1 of 2 topics failed: topic {gone}")),
        "{err}"
    );
    assert!(line[0].contains("does not exist"), "{err}");
    assert_eq!(per_topic(&doc, &a, "messages"), 20, "{doc}");
    assert_eq!(doc["failed"][gone.as_str()]["exit"], 1, "{doc}");
    let text = std::fs::read_to_string(&prom).unwrap();
    for want in [
        "batchlayer_last_run_exit_code{step=\"ingest\"} 1".to_string(),
        "batchlayer_last_run_messages{step=\"ingest\"} 20".to_string(),
        format!("batchlayer_topic_messages{{step=\"ingest\",topic=\"{a}\"}} 20"),
        format!("batchlayer_topic_exit_code{{step=\"ingest\",topic=\"{a}\"}} 0"),
        format!("batchlayer_topic_exit_code{{step=\"ingest\",topic=\"{gone}\"}} 1"),
    ] {
        assert!(text.lines().any(|l| l == want), "{want} not in:\n{text}");
    }
    // Nothing is left to read of a: the next run passes it by (committed at the end, and the
    // catalog head there), and still fails for the missing topic alone.
    let (code, doc, _) = m.json_run(&["ingest"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["idle"], serde_json::json!([a]), "{doc}");
    assert_eq!(doc["messages"], 0, "{doc}");
    // Copy loads a; then it too has nothing new, and says so without reading its manifests.
    let cp = m.json(&["copy"]);
    assert_eq!(cp["rows"], 20, "{cp}");
    let cp = m.json(&["copy"]);
    assert_eq!(cp["idle"], serde_json::json!([a]), "{cp}");
    assert_eq!(cp["rows"], 0, "{cp}");
    // A new message makes a busy again for both.
    produce_raw(&brokers(), &a, 2, &tweet_range(20..21, 1, 10));
    let (_, doc, _) = m.json_run(&["ingest"]);
    assert_eq!(per_topic(&doc, &a, "messages"), 1, "{doc}");
    let cp = m.json(&["copy"]);
    assert_eq!(cp["rows"], 1, "{cp}");
    assert_eq!(m.rows(&m.table("a")), Some(21));
}

/// A topic that looks idle to the group (committed at its end) while the archive is behind (the
/// offsets moved past it outside batchlayer) is not passed by: its run refuses the commit, as a
/// single-topic run does, and the other topic stays idle.
#[test]
fn a_commit_moved_past_the_archive_is_not_taken_for_an_idle_topic() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpahead");
    let (a, b) = (m.topic("a"), m.topic("b"));
    m.configure(&format!("topics = {}", toml_list(&[&a, &b])), "", "");
    produce_raw(&brokers(), &a, 2, &tweet_payloads(20, 1, 10));
    produce_raw(&brokers(), &b, 1, &tweet_payloads(10, 2, 10));
    assert_eq!(m.json(&["ingest"])["messages"], 30);
    // 10 more in a (5 a partition), and the group is moved to their end: 10..14 would be
    // skipped.
    produce_raw(&brokers(), &a, 2, &tweet_range(20..30, 1, 10));
    let mut k = m.w.kafka();
    k.topic = a.clone();
    let src =
        batchlayer::source::KafkaSource::connect(&k, batchlayer::source::Mode::Subscribe).unwrap();
    batchlayer::source::MessageSource::commit(&src, &[(0, 15), (1, 15)]).unwrap();
    drop(src);
    let (code, doc, err) = m.json_run(&["ingest"]);
    assert_eq!(code, 1, "{doc}\n{err}");
    assert!(err.contains(&format!("topic {a}")), "{err}");
    assert!(err.contains("ahead of the archive"), "{err}");
    assert_eq!(doc["idle"], serde_json::json!([b]), "{doc}");
    let objects = m.objects_of(&a).len();
    // The operator resumes from the archive: the skipped offsets are archived.
    let v = m.json(&["ingest", "--topic", &a, "--resume-from-archive"]);
    assert_eq!(v["messages"], 10, "{v}");
    assert!(m.objects_of(&a).len() > objects);
    let v = m.json(&["ingest"]);
    assert_eq!(v["idle"], serde_json::json!([a, b]), "{v}");
}

/// `copy --key` over many topics loads that one object into its topic's table; the other
/// topics are not touched, and a key of no configured topic is a usage error.
#[test]
fn copy_key_loads_one_object_of_its_topic() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpkey");
    let (a, b) = (m.topic("a"), m.topic("b"));
    m.configure(&format!("topics = {}", toml_list(&[&a, &b])), "", "");
    produce_raw(&brokers(), &a, 2, &tweet_payloads(20, 1, 10));
    produce_raw(&brokers(), &b, 1, &tweet_payloads(10, 2, 10));
    m.json(&["ingest"]);
    let keys = m.objects_of(&a);
    assert_eq!(keys.len(), 2, "{keys:?}");
    let cp = m.json(&["copy", "--key", &keys[0]]);
    assert_eq!(cp["rows"], 10, "{cp}");
    assert_eq!(names(&cp["topics"]), vec![a.clone()], "{cp}");
    assert_eq!(m.rows(&m.table("a")), Some(10));
    assert_eq!(m.rows(&m.table("b")), None);
    let (code, _, err) = m.run(&[
        "copy",
        "--key",
        "other/x+0+00000000000000000000+00000000000000000001.log.gz",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not an object of a topic this config takes"),
        "{err}"
    );
    // The rest loads as usual.
    let cp = m.json(&["copy"]);
    assert_eq!(cp["rows"], 20, "{cp}");
}

/// A pattern that matches no topic does nothing, and says so (a named warning, exit 0).
#[test]
fn a_pattern_matching_no_topic_says_so() {
    if !stack_up() {
        return;
    }
    let m = Multi::local("tpnone");
    m.configure(&format!("topics_pattern = '{}'", m.pattern()), "", "");
    for step in ["ingest", "copy"] {
        let (code, doc, err) = m.json_run(&[step]);
        assert_eq!(code, 0, "{doc}\n{err}");
        assert!(
            err.contains(&format!(
                "warning: no topic of topics matching /{}/ to {step}",
                m.pattern()
            )),
            "{err}"
        );
        assert_eq!(doc["topics"], serde_json::json!({}), "{doc}");
    }
}
