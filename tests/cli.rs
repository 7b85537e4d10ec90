//! The binary's surface: help, config errors, exit codes, secrets, example configs.

use crate::common::*;
use assert_cmd::Command;

fn bl() -> Command {
    let mut c = Command::cargo_bin("batchlayer").unwrap();
    c.env_clear();
    c
}

#[test]
fn help_lists_subcommands_and_never_shows_secret_values() {
    let out = bl()
        .env("AWS_SECRET_ACCESS_KEY", "help-secret-123")
        .env("PGPASSWORD", "help-pg-456")
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "ingest",
        "copy",
        "aggregate",
        "Exit codes",
        "BATCHLAYER_KAFKA_TOPIC",
    ] {
        assert!(s.contains(sub), "--help lacks {sub}: {s}");
    }
    assert!(!s.contains("help-secret-123") && !s.contains("help-pg-456"));
    assert!(!s.contains("produce-tweets"), "the producer is hidden");
    for sub in ["ingest", "copy", "aggregate"] {
        let out = bl().args([sub, "--help"]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("--dry-run"));
    }
}

#[test]
fn no_flag_takes_a_secret() {
    for flag in ["--password", "--secret-access-key", "--sasl-password"] {
        let out = bl().args([flag, "x", "ingest"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} was accepted");
    }
}

#[test]
fn config_errors_exit_2_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[kafka]\ntopic = \"t\"\nbrokerz = \"x\"\n").unwrap();
    let out = bl()
        .args(["--config", &path_str(&p), "ingest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("batchlayer: error: ") && err.contains("brokerz"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Missing topic: names flag, env var and key.
    std::fs::write(&p, "[kafka]\n").unwrap();
    let out = bl()
        .args(["--config", &path_str(&p), "ingest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--topic") && err.contains("BATCHLAYER_KAFKA_TOPIC"),
        "{err}"
    );

    // copy and aggregate never talk to Kafka: no topic needed (they fail later, on the
    // unreachable warehouse, not on the config).
    for cmd in ["copy", "aggregate"] {
        let out = bl()
            .args(["--config", &path_str(&p), cmd])
            .env(
                "BATCHLAYER_WAREHOUSE_URL",
                "postgresql://nobody@127.0.0.1:1/db",
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            !err.contains("topic") && err.contains("127.0.0.1:1"),
            "{cmd}: {err}"
        );
    }

    // An explicit config file that does not exist.
    let out = bl()
        .args(["--config", "/nonexistent/b.toml", "ingest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A secret in the config file never appears in an error about that file.
    std::fs::write(
        &p,
        "[archive]\nsecret_access_key = \"file-secret-789\"\nbogus = 1\n",
    )
    .unwrap();
    let out = bl()
        .args(["--config", &path_str(&p), "ingest"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus") && !err.contains("file-secret-789"),
        "{err}"
    );
}

#[test]
fn shipped_example_configs_load() {
    for entry in std::fs::read_dir("examples").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) == Some("toml") {
            let file = batchlayer::config::load_file(&p, true)
                .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            let s = batchlayer::config::resolve(
                file,
                &std::collections::HashMap::new(),
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            // Every example loads the tweets' raw table (whatever its record format), so the
            // shipped view applies to each.
            let cols = |l: &batchlayer::records::Layout| -> Vec<(String, batchlayer::records::ColumnType, Option<usize>)> {
                l.columns.iter().map(|c| (c.name.clone(), c.ty, c.max_len)).collect()
            };
            assert_eq!(
                cols(&s.layout),
                cols(&batchlayer::records::Layout::tweets()),
                "{}",
                p.display()
            );
            use batchlayer::records::{Layout, RecordFormat};
            let want = match s.layout.format {
                RecordFormat::Delimited => Layout::tweets(),
                RecordFormat::Json => Layout::tweets_json(),
                RecordFormat::Avro => Layout::tweets_avro(),
            };
            assert_eq!(s.layout, want, "{}", p.display());
        }
    }
}

#[test]
fn s3_configuration_mistakes_exit_2() {
    // Half-set S3 credentials are a configuration mistake (exit 2), found before any request.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[kafka]\ntopic = \"t\"\n[archive]\nurl = \"s3://bucket/p\"\nendpoint = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = bl()
        .env("AWS_ACCESS_KEY_ID", "only-the-id")
        .args(["--config", &path_str(&p), "copy", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}

#[test]
fn flags_of_other_steps_are_refused() {
    for args in [
        ["copy", "--brokers", "x"],
        ["aggregate", "--archive", "x"],
        ["ingest", "--warehouse-url", "x"],
    ] {
        let out = bl().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
    }
}

#[test]
fn a_password_on_argv_is_refused_and_never_printed_in_any_form() {
    // On the command line: refused before anything runs, naming where it belongs.
    for url in [
        "postgresql://u:argv-pw-1@127.0.0.1:1/db",
        "postgresql://u@127.0.0.1:1/db?password=argv-pw-1",
    ] {
        let out = bl()
            .args(["copy", "--warehouse-url", url])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("PGPASSWORD") && !err.contains("argv-pw-1"),
            "{err}"
        );
    }
    // From the environment it is allowed, and never printed, whatever its form.
    for url in [
        "postgresql://postgres@127.0.0.1:1/postgres?password=qpw-secret-2",
        "postgresql://postgres:qpw-secret-2@127.0.0.1:1/postgres",
    ] {
        let out = bl()
            .env("BATCHLAYER_WAREHOUSE_URL", url)
            .env("BATCHLAYER_ARCHIVE_URL", "/nonexistent-archive")
            .args(["copy"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
        assert!(
            !err.contains("qpw-secret-2") && err.contains("***"),
            "{err}"
        );
    }
}

#[test]
fn a_config_file_with_a_secret_readable_by_others_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    if !stack_up() {
        return;
    }
    let w = World::local("cfgperm");
    let p = w.config_path();
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("[warehouse]\n", "[warehouse]\npassword = \"file-pw-3\"\n");
    let secret_file = w.dir.path().join("secret.toml");
    std::fs::write(&secret_file, text).unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = bl()
            .args(["--config", &path_str(&secret_file), "copy", "--dry-run"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(err.contains("chmod 600"), warned, "mode {mode:o}: {err}");
        assert!(!err.contains("file-pw-3"), "{err}");
    }
}
