//! The operator's surface: shell completions, the man page, JSON log lines and the metrics
//! file of each step (parsed back with a parser of the text format written here).

use crate::common::*;
use assert_cmd::Command;
use std::collections::BTreeMap;
use std::path::Path;

fn bl() -> Command {
    let mut c = Command::cargo_bin("batchlayer").unwrap();
    c.env_clear();
    c
}

fn stdout_of(args: &[&str]) -> String {
    let out = bl().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "batchlayer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_for_bash_zsh_and_fish_name_the_subcommands_and_flags() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let s = stdout_of(&["completions", shell]);
        for word in [
            "ingest",
            "copy",
            "aggregate",
            "completions",
            "metrics-file",
            "log-format",
            "max-errors",
            "new-epoch",
        ] {
            assert!(s.contains(word), "{shell} completions lack {word}");
        }
    }
    // Each script is valid in its own shell, where that shell is here.
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("complete -F _batchlayer"), "{bash}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("batchlayer.bash");
    std::fs::write(&f, &bash).unwrap();
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n refused the bash completions");
    assert!(stdout_of(&["completions", "zsh"]).starts_with("#compdef batchlayer"));
    assert!(stdout_of(&["completions", "fish"]).contains("complete -c batchlayer"));
    let out = bl().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_renders() {
    let page = stdout_of(&["man"]);
    assert!(page.contains(".TH batchlayer 1"), "{page}");
    for word in ["ingest", "copy", "aggregate", "\\-\\-log\\-format"] {
        assert!(page.contains(word), "batchlayer(1) lacks {word}");
    }
    let ingest = stdout_of(&["man", "ingest"]);
    assert!(ingest.contains(".TH batchlayer-ingest 1"), "{ingest}");
    assert!(ingest.contains("\\-\\-metrics\\-file"), "{ingest}");
    // man itself formats it, where man is installed.
    if std::process::Command::new("man")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("batchlayer.1");
        std::fs::write(&f, &page).unwrap();
        let out = std::process::Command::new("man")
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .arg("-l")
            .arg(&f)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("SUBCOMMANDS"),
            "{text}"
        );
    }
    let out = bl().args(["man", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A copy that cannot reach its warehouse: retried (logged), then the error line.
fn failing_copy(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[archive]\nurl = \"{}\"\n[warehouse]\nurl = \"postgresql://postgres@127.0.0.1:1/postgres\"\n\
             [retry]\nattempts = 3\ninitial_backoff_ms = 10\n",
            dir.join("archive").display()
        ),
    )
    .unwrap();
    let out = bl()
        .args(["--config", &path_str(&cfg)])
        .args(extra)
        .arg("copy")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn log_format_json_writes_json_lines_and_keeps_the_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = failing_copy(dir.path(), &["-v", "--log-format", "json"]);
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let (last, logs) = lines.split_last().expect("stderr lines");
    assert!(last.starts_with("batchlayer: error: "), "{err}");
    assert!(logs.len() >= 2, "two retries are logged: {err}");
    let mut retries = 0;
    for l in logs {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        let msg = v["message"].as_str().unwrap_or_else(|| panic!("{l}"));
        if msg.contains("retrying in") {
            assert_eq!(v["level"], "INFO", "{l}");
            retries += 1;
        }
    }
    assert_eq!(retries, 2, "{err}");

    // The same from the environment; as text, the same events are `batchlayer: ` lines.
    let out = bl()
        .env("BATCHLAYER_LOG_FORMAT", "json")
        .args([
            "-v",
            "--config",
            &path_str(&dir.path().join("c.toml")),
            "copy",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().next().unwrap().starts_with('{'), "{err}");
    let (_, text) = failing_copy(dir.path(), &["-v"]);
    assert!(
        text.lines().all(|l| l.starts_with("batchlayer: ")),
        "{text}"
    );
    assert!(text.contains("retrying in"), "{text}");
    // Without -v, nothing but the error line.
    let (_, quiet) = failing_copy(dir.path(), &["--log-format", "json"]);
    assert_eq!(quiet.lines().count(), 1, "{quiet}");
}

/// One sample of a metrics file.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format strictly: every sample's family has a HELP and a TYPE
/// line before it, names and label names are valid, label values are quoted, values are
/// floats. Panics on anything else.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the file ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter", "untyped"].contains(&ty), "{line}");
            typed.insert(name.to_string(), ty.to_string());
        } else if line.starts_with('#') {
            assert_eq!(line, "# EOF", "only HELP, TYPE and EOF comments: {line}");
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect(line)),
                None => (series, ""),
            };
            assert!(valid_name(name), "{line}");
            assert!(helped.contains(name) && typed.contains_key(name), "{line}");
            let mut map = BTreeMap::new();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').expect(line);
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                assert!(valid_name(k) && v.is_some(), "{line}");
                map.insert(k.to_string(), v.unwrap().to_string());
            }
            samples.push(Sample {
                name: name.to_string(),
                labels: map,
                value: value.parse().unwrap_or_else(|_| panic!("value: {line}")),
            });
        }
    }
    samples
}

/// The value of a metric with these labels (and no others).
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} twice");
    found.first().copied()
}

fn read_metrics(path: &Path) -> Vec<Sample> {
    parse_metrics(&std::fs::read_to_string(path).unwrap())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_failed_step_writes_its_exit_code_in_the_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("copy.prom");
    failing_copy(dir.path(), &[]);
    let before = now();
    let cfg = dir.path().join("c.toml");
    let out = bl()
        .args(["--config", &path_str(&cfg), "copy", "--metrics-file"])
        .arg(&prom)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let m = read_metrics(&prom);
    let step = [("step", "copy")];
    assert_eq!(
        metric(&m, "batchlayer_last_run_exit_code", &step),
        Some(1.0)
    );
    let ended = metric(&m, "batchlayer_last_run_timestamp_seconds", &step).unwrap();
    assert!(ended >= before && ended <= now(), "{ended}");
    assert!(metric(&m, "batchlayer_last_run_duration_seconds", &step).unwrap() > 0.0);
    assert_eq!(
        metric(&m, "batchlayer_last_success_timestamp_seconds", &step),
        None
    );
    assert_eq!(metric(&m, "batchlayer_last_run_rows", &step), None);

    // A configuration error (exit 2) is written too, and so is the last success of the file
    // it replaces.
    let mut text = std::fs::read_to_string(&prom).unwrap();
    text = text.replace(
        "# HELP batchlayer_last_run_exit_code",
        "# HELP batchlayer_last_success_timestamp_seconds x\n# TYPE batchlayer_last_success_timestamp_seconds gauge\n\
         batchlayer_last_success_timestamp_seconds{step=\"copy\"} 1234.5\n# HELP batchlayer_last_run_exit_code",
    );
    std::fs::write(&prom, text).unwrap();
    std::fs::write(&cfg, "[archive]\nurll = \"x\"\n").unwrap();
    let out = bl()
        .args(["--config", &path_str(&cfg), "copy", "--metrics-file"])
        .arg(&prom)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let m = read_metrics(&prom);
    assert_eq!(
        metric(&m, "batchlayer_last_run_exit_code", &step),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "batchlayer_last_success_timestamp_seconds", &step),
        Some(1234.5)
    );
    let out = bl()
        .args(["copy", "--dry-run", "--metrics-file", "x.prom"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a dry run writes no metrics");
}

#[test]
fn each_step_writes_metrics_that_match_its_summary() {
    if !stack_up() {
        return;
    }
    let mut w = World::local("metrics");
    produce_raw(&brokers(), &w.topic, 2, &tweet_payloads(300, 7, 20));
    let dir = tempfile::tempdir().unwrap();
    let prom = |s: &str| dir.path().join(format!("batchlayer_{s}.prom"));
    let p = |s: &str| path_str(&prom(s));

    let before = now();
    let sum = w.json(&["ingest", "--metrics-file", &p("ingest")]);
    let m = read_metrics(&prom("ingest"));
    let step = [("step", "ingest")];
    for (name, key) in [
        ("messages", "messages"),
        ("bytes", "bytes"),
        ("objects", "objects"),
        ("rejects", "rejected"),
        ("skipped_offsets", "skipped"),
    ] {
        let want = sum[key].as_f64().unwrap();
        let got = metric(&m, &format!("batchlayer_last_run_{name}"), &step);
        assert_eq!(got, Some(want), "{name}: {sum}");
    }
    assert_eq!(sum["messages"], 300);
    assert_eq!(
        metric(&m, "batchlayer_last_run_exit_code", &step),
        Some(0.0)
    );
    let success = metric(&m, "batchlayer_last_success_timestamp_seconds", &step).unwrap();
    assert!(success >= before && success <= now());
    let dur = metric(&m, "batchlayer_last_run_duration_seconds", &step).unwrap();
    assert!(dur >= sum["seconds"].as_f64().unwrap(), "{dur} {sum}");
    for part in ["0", "1"] {
        let lag = metric(
            &m,
            "batchlayer_lag_messages",
            &[("step", "ingest"), ("partition", part)],
        );
        assert_eq!(lag, Some(0.0), "partition {part} was read to its end");
    }

    let sum = w.json(&["copy", "--metrics-file", &p("copy")]);
    let m = read_metrics(&prom("copy"));
    let step = [("step", "copy")];
    for (name, key) in [
        ("rows", "rows"),
        ("bytes", "bytes"),
        ("objects", "objects"),
        ("rejects", "rejects"),
        ("skipped_offsets", "skipped_rows"),
    ] {
        let want = sum[key].as_f64().unwrap();
        assert_eq!(
            metric(&m, &format!("batchlayer_last_run_{name}"), &step),
            Some(want),
            "{name}"
        );
    }
    assert_eq!(sum["rows"], 300);

    let sum = w.json(&["aggregate", "--metrics-file", &p("aggregate")]);
    let m = read_metrics(&prom("aggregate"));
    let rows = metric(
        &m,
        "batchlayer_view_rows",
        &[("step", "aggregate"), ("view", "batch_layer")],
    );
    assert_eq!(rows, Some(sum["rows"].as_f64().unwrap()));
    let step = [("step", "aggregate")];
    let success = metric(&m, "batchlayer_last_success_timestamp_seconds", &step).unwrap();

    // A gate refuses the next build: exit 4 is written, the last success is kept.
    w.tail_toml = "[aggregate]\nmin_rows = 1000000\n".into();
    let (code, _, err) = w.run(&["aggregate", "--metrics-file", &p("aggregate")]);
    assert_eq!(code, 4, "{err}");
    let m = read_metrics(&prom("aggregate"));
    assert_eq!(
        metric(&m, "batchlayer_last_run_exit_code", &step),
        Some(4.0)
    );
    assert_eq!(
        metric(&m, "batchlayer_last_success_timestamp_seconds", &step),
        Some(success)
    );
    assert!(m.iter().all(|s| s.name != "batchlayer_view_rows"));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "no temp file left: {files:?}");
}
