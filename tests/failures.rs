//! Servers that die in the middle of a run: the run fails with one line, leaves nothing
//! half-applied, and a re-run completes the step exactly once. Each test kills a private
//! server of its own (never the shared stack), or a backend connection of its own.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tweets(n: u64, seed: u64) -> Vec<Option<Vec<u8>>> {
    tweet_payloads(n, seed, 30)
}

/// A stack binary (tansu, s3s-fs): on PATH (tests/stack.sh puts ~/.cargo/bin there) or in
/// cargo's bin directory.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    dirs.push(cargo_home.join("bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found (tests/stack.sh installs it)"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, what: &str) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process that is killed when dropped.
pub struct Server(pub Child);

impl Server {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Server {
    /// Starts a stack binary with these arguments and waits until it listens on `port`.
    pub fn start(name: &str, args: &[&str], port: u16) -> Server {
        let child = Command::new(tool(name))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let server = Server(child);
        wait_port(port, name);
        server
    }
}

pub fn start_s3(port: u16, dir: &Path) -> Server {
    let (port_s, access, secret) = (port.to_string(), s3_access(), s3_secret());
    let dir = dir.to_str().expect("utf-8 temp dir");
    let args = [
        "--host",
        "127.0.0.1",
        "--port",
        &port_s,
        "--access-key",
        &access,
        "--secret-key",
        &secret,
        dir,
    ];
    Server::start("s3s-fs", &args, port)
}

fn start_tansu(port: u16) -> Server {
    let url = format!("tcp://127.0.0.1:{port}");
    let args = [
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://tansu/",
    ];
    Server::start("tansu", &args, port)
}

/// The binary with the world's config and environment, started in the background.
fn spawn(w: &World, args: &[&str]) -> Child {
    w.std_cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the child (at most `limit`); returns (exit code, stderr).
fn finish(child: Child, limit: Duration) -> (i32, String) {
    let t0 = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if t0.elapsed() > limit {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("batchlayer did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = waiter.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Data objects (finished `.log.gz` files) below a directory.
fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return v;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(object_files(&p));
        } else if p.to_string_lossy().ends_with(".log.gz") {
            v.push(p);
        }
    }
    v
}

fn wait_for_objects(dir: &Path, n: usize, child: &mut Child) {
    let t0 = Instant::now();
    while object_files(dir).len() < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {n} objects were stored"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no objects stored");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn s3_server_dying_mid_ingest_fails_in_one_line_and_a_rerun_archives_each_message_once() {
    if !stack_up() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("dying")).unwrap(); // a bucket is a directory
    let port = free_port();
    let mut s3 = start_s3(port, data.path());
    let mut w = World::local("s3dies");
    w.archive = "s3://dying/archive".into();
    w.extra_toml = "max_object_records = 5000\n".into();
    let endpoint = format!("http://127.0.0.1:{port}");
    w.env
        .insert("BATCHLAYER_S3_ENDPOINT".into(), endpoint.clone());
    w.env.insert("AWS_ACCESS_KEY_ID".into(), s3_access());
    w.env.insert("AWS_SECRET_ACCESS_KEY".into(), s3_secret());
    let msgs = tweets(200_000, 40);
    produce_raw(&brokers(), &w.topic, 2, &msgs); // 40 objects of 5,000

    let mut run = spawn(&w, &["ingest"]);
    wait_for_objects(&data.path().join("dying"), 2, &mut run);
    s3.kill();
    let (code, err) = finish(run, Duration::from_secs(120));
    eprintln!("s3s-fs killed: {err}");
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("batchlayer: error: ") && err.contains("s3://dying/archive"),
        "{err}"
    );
    assert!(!err.contains(&s3_secret()), "{err}");
    let stored = object_files(&data.path().join("dying")).len();
    assert!(
        stored < 40,
        "all {stored} objects were stored before the kill"
    );
    assert!(
        object_files(&data.path().join("dying/archive/_manifests")).is_empty(),
        "a failed run wrote a manifest"
    );

    // Back up on the same data: nothing was committed, the stored objects are recognised.
    let _s3 = start_s3(port, data.path());
    let s = w.json(&["ingest"]);
    assert_eq!(
        s["messages"].as_u64().unwrap() + s["skipped"].as_u64().unwrap(),
        200_000,
        "{s}"
    );
    assert!(s["skipped"].as_u64().unwrap() >= 10_000, "{s}");
    crate::ingest::assert_archive_exact(&w, &msgs, 2);
    assert_eq!(w.json(&["ingest"])["messages"].as_u64().unwrap(), 0);
}

#[test]
fn kafka_broker_dying_mid_ingest_fails_in_bounded_time_and_writes_no_manifest() {
    if !stack_up() {
        return;
    }
    let port = free_port();
    let mut broker = start_tansu(port);
    let brokers = format!("127.0.0.1:{port}");
    let mut w = World::local("kdies");
    w.extra_toml = "max_object_records = 5000\n".into();
    w.kafka_toml = "stall_timeout_secs = 5\n".into();
    w.env
        .insert("BATCHLAYER_KAFKA_BROKERS".into(), brokers.clone());
    produce_raw(&brokers, &w.topic, 2, &tweets(200_000, 41));

    let archive = PathBuf::from(&w.archive);
    let mut run = spawn(&w, &["ingest"]);
    wait_for_objects(&archive, 2, &mut run);
    broker.kill();
    let t0 = Instant::now();
    let (code, err) = finish(run, Duration::from_secs(90));
    eprintln!(
        "broker killed: ingest ended after {:?}: {err}",
        t0.elapsed()
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&w.topic), "{err}");
    assert!(object_files(&archive).len() < 40);
    // No manifest: a run that did not reach its commit never claims to be complete. What it
    // stored is whole (each object decodes to a contiguous offset range).
    assert!(object_files(&archive.join("_manifests")).is_empty());
    assert!(!archive.join("_manifests").exists());
    let got = archived_messages(w.store().as_ref());
    assert!(!got.is_empty());
}

#[test]
fn postgres_connection_killed_mid_copy_rolls_back_and_a_rerun_loads_once() {
    if !stack_up() {
        return;
    }
    let w = World::local("pgdies");
    produce_raw(&brokers(), &w.topic, 1, &tweets(100, 42));
    w.run_ok(&["ingest"]);
    w.run_ok(&["copy"]); // creates the tables, loads the first object
    produce_raw(&brokers(), &w.topic, 1, &tweets(20_000, 43));
    w.run_ok(&["ingest"]);

    // Hold batch_raw so the next load waits inside its transaction, then end its connection.
    let mut holder = pg();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute(&format!(
        "LOCK TABLE {}.batch_raw IN ACCESS EXCLUSIVE MODE",
        w.schema
    ))
    .unwrap();
    let mut run = spawn(&w, &["copy"]);
    let admin = &mut pg();
    let t0 = Instant::now();
    let killed = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "copy never waited on the table"
        );
        assert!(run.try_wait().unwrap().is_none(), "copy ended early");
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'batchlayer' AND wait_event_type = 'Lock' \
                 AND query ILIKE '%batch_raw%' AND query ILIKE $1",
                &[&format!("%{}%", w.schema)],
            )
            .unwrap();
        if !rows.is_empty() {
            break rows.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(killed, 1);
    let (code, err) = finish(run, Duration::from_secs(60));
    eprintln!("backend terminated: {err}");
    tx.rollback().unwrap();
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Names the object, the table and the server (the exact PostgreSQL message depends on
    // when the connection went: "terminating connection ..." or "connection closed").
    assert!(
        err.contains("loading ") && err.contains("batch_raw at postgresql://postgres@127.0.0.1"),
        "{err}"
    );
    assert_eq!(
        w.count("batch_raw"),
        100,
        "rows of the killed load are visible"
    );
    assert_eq!(w.count("batchlayer_loads"), 1);

    let s = w.json(&["copy"]);
    assert_eq!(s["rows"].as_u64().unwrap(), 20_000, "{s}");
    assert_eq!(w.count("batch_raw"), 20_100);
    assert_eq!(w.count("batchlayer_loads"), 2);
}

/// An HTTP proxy in front of the shared s3s-fs that answers the first `fail` requests with
/// 503 SlowDown (as S3 does under load) and forwards the rest. Returns its port and the
/// number of requests it refused.
fn slowdown_proxy(fail: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::Ordering;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = refused.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let count = count.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut head = Vec::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.extend_from_slice(line.as_bytes());
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let mut w = conn;
                if count.fetch_add(1, Ordering::SeqCst) < fail {
                    let xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                    let _ = write!(
                        w,
                        "HTTP/1.1 503 Slow Down\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                        xml.len()
                    );
                    return;
                }
                count.fetch_sub(1, Ordering::SeqCst);
                // Forward this request and the rest of the connection to s3s-fs.
                let mut up = std::net::TcpStream::connect("127.0.0.1:9000").unwrap();
                up.write_all(&head).unwrap();
                up.write_all(&body).unwrap();
                let mut up_r = up.try_clone().unwrap();
                let mut down = w.try_clone().unwrap();
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut down);
                });
                let _ = std::io::copy(&mut r, &mut up);
                let _ = up.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    (port, refused)
}

#[test]
fn s3_slowdown_is_retried_with_backoff_and_a_run_that_gives_up_says_how_often_it_tried() {
    if !stack_up() {
        return;
    }
    // Three refusals: the default 4 attempts get through, each retry shown under -v.
    let (port, refused) = slowdown_proxy(3);
    let mut w = World::s3("s3slow");
    w.env.insert(
        "BATCHLAYER_S3_ENDPOINT".into(),
        format!("http://127.0.0.1:{port}"),
    );
    produce_raw(&brokers(), &w.topic, 1, &tweets(100, 51));
    let (code, _, err) = w.run(&["-v", "ingest"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 3);
    let retries: Vec<&str> = err.lines().filter(|l| l.contains("retrying in")).collect();
    assert_eq!(retries.len(), 3, "{err}");
    assert!(
        retries[0].contains("SlowDown") || retries[0].contains("503"),
        "{err}"
    );
    // Ten refusals and two attempts: the run gives up, in one line that says so.
    let (port, _) = slowdown_proxy(10);
    w.env.insert(
        "BATCHLAYER_S3_ENDPOINT".into(),
        format!("http://127.0.0.1:{port}"),
    );
    w.tail_toml = "[retry]\nattempts = 2\ninitial_backoff_ms = 10\n".into();
    let (code, _, err) = w.run(&["copy"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("gave up after 2 attempts"), "{err}");
}

#[test]
fn postgres_refusing_connections_at_start_is_retried() {
    if !stack_up() {
        return;
    }
    let port = free_port();
    let w = World::local("pglate");
    // PostgreSQL "comes up" (a forwarder to the shared server) half a second after copy starts.
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let child = Command::new("socat")
            .args([
                &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"),
                "TCP:127.0.0.1:5432",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Server(child)
    });
    let url = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
    let (code, _, err) = w.run(&["-v", "copy", "--warehouse-url", &url]);
    let _server = starter.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("connecting to PostgreSQL") && l.contains("retrying in")),
        "{err}"
    );
    // Nothing listening at all: bounded, and the error says how often it tried.
    let dead = free_port();
    let url = format!("postgresql://postgres@127.0.0.1:{dead}/postgres");
    let (code, _, err) = w.run(&["copy", "--warehouse-url", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gave up after 4 attempts") && err.contains("cannot connect"),
        "{err}"
    );
}
