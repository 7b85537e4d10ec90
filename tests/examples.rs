//! The files under examples/: every config loads through the real loader and documents every
//! key the config module accepts; every script passes `bash -n`; every crontab job is valid
//! bash behind `flock -n`; the systemd units name commands that exist.

use serde::de::{self, Deserialize, Visitor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every file under examples/ whose name ends with `suffix`.
fn files(suffix: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, suffix, out);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&examples(), suffix, &mut out);
    out.sort();
    out
}

/// A deserializer that only records the field names a struct asks for (serde passes them to
/// `deserialize_struct`): the keys the config module accepts, from its own types.
struct FieldNames(&'static [&'static str]);

impl<'de> de::Deserializer<'de> for &mut FieldNames {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(de::Error::custom("fields recorded"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn fields<'de, T: Deserialize<'de>>() -> BTreeSet<&'static str> {
    let mut f = FieldNames(&[]);
    let _ = T::deserialize(&mut f);
    assert!(
        !f.0.is_empty(),
        "{} has no fields",
        std::any::type_name::<T>()
    );
    f.0.iter().copied().collect()
}

/// (section, key) of every key a config text sets or shows commented out (`# key = ...`),
/// sub-tables (`[kafka.properties]`, `[[aggregate.views]]`) as keys of their section.
fn documented_keys(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim_start_matches("# ").trim();
        if let Some(h) = l.strip_prefix('[') {
            let h = h.trim_matches(|c| c == '[' || c == ']');
            match h.split_once('.') {
                Some((top, sub)) => {
                    out.insert((top.to_string(), sub.to_string()));
                    section = format!("{top}.{sub}");
                }
                None => section = h.to_string(),
            }
        } else if let Some((k, _)) = l.split_once(" = ") {
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                let top = section.split('.').next().unwrap_or_default();
                let top = if section == "aggregate.views" {
                    "aggregate"
                } else {
                    top
                };
                out.insert((top.to_string(), k.to_string()));
            }
        }
    }
    out
}

/// The example with every commented-out setting (`# key = value`, `# [table]`) switched on.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.starts_with('"') || k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.to_string()
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_example_config_loads_and_documents_every_key() {
    use batchlayer::config::*;
    let configs = files(".toml");
    assert!(configs
        .iter()
        .any(|p| p.ends_with("examples/batchlayer.toml")));
    for path in &configs {
        let file = load_file(path, true).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let env = std::collections::HashMap::<String, String>::new();
        let s = resolve(file, &env, &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(!s.aggregate.views.is_empty());
        // Every optional setting shown commented out is a real key with a valid value.
        let text = std::fs::read_to_string(path).unwrap();
        parse_file(&uncommented(&text))
            .unwrap_or_else(|e| panic!("{} with every setting on: {e:#}", path.display()));
    }

    // The main example names every key of every section.
    let text = std::fs::read_to_string(examples().join("batchlayer.toml")).unwrap();
    let shown = documented_keys(&text);
    let sections: Vec<(&str, BTreeSet<&str>)> = vec![
        ("kafka", fields::<KafkaFile>()),
        ("archive", fields::<ArchiveFile>()),
        ("warehouse", fields::<WarehouseFile>()),
        ("records", fields::<RecordsFile>()),
        ("aggregate", fields::<AggregateFile>()),
        ("retry", fields::<RetryFile>()),
        ("log", fields::<LogFile>()),
        ("status", fields::<StatusFile>()),
    ];
    let top: BTreeSet<&str> = sections.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        top,
        fields::<FileConfig>(),
        "a config section this test does not know"
    );
    let mut missing = Vec::new();
    for (section, keys) in &sections {
        for k in keys {
            if !shown.contains(&(section.to_string(), k.to_string())) {
                missing.push(format!("{section}.{k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "examples/batchlayer.toml lacks {missing:?}"
    );
    for k in fields::<batchlayer::records::Column>() {
        assert!(text.contains(&format!("{k} = ")), "no column shows {k}");
    }
}

#[test]
fn every_example_script_passes_bash_n() {
    let scripts = files(".sh");
    for name in ["pipeline.sh", "quickstart.sh", "bench.sh", "bench_scale.sh"] {
        assert!(
            scripts.iter().any(|p| p.ends_with(name)),
            "{name} not found"
        );
    }
    for s in &scripts {
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(s)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            s.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(s).unwrap();
        assert!(text.starts_with("#!/usr/bin/env bash\n"), "{}", s.display());
    }
    let pipeline = std::fs::read_to_string(examples().join("pipeline.sh")).unwrap();
    assert!(pipeline.contains("set -euo pipefail") && pipeline.contains("--metrics-file"));
}

#[test]
fn every_crontab_job_is_bash_behind_flock() {
    let text = std::fs::read_to_string(examples().join("crontab")).unwrap();
    let mut jobs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let is_env = line
            .split_once('=')
            .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        if line.is_empty() || line.starts_with('#') || is_env {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() > 5, "not a job line: {line}");
        let command = fields[5..].join(" ");
        assert!(!command.contains('%'), "% is special in crontab: {line}");
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &command])
            .output()
            .unwrap();
        assert!(out.status.success(), "bash -n: {command}");
        let steps = command.matches("batchlayer -q ").count();
        assert_eq!(
            command.matches("flock -n ").count(),
            steps,
            "each step behind flock -n: {command}"
        );
        jobs.push(command);
    }
    let all = jobs.join("\n");
    for step in ["ingest", "copy", "aggregate", "status"] {
        assert!(
            all.contains(&format!("batchlayer -q {step}")),
            "no {step} job"
        );
    }
}

#[test]
fn the_systemd_units_run_batchlayer_steps() {
    let units = files(".service");
    let timers = files(".timer");
    assert!(!units.is_empty() && units.len() == timers.len());
    for t in &timers {
        let text = std::fs::read_to_string(t).unwrap();
        let unit = text
            .lines()
            .find_map(|l| l.strip_prefix("Unit="))
            .unwrap_or_else(|| panic!("{}: no Unit=", t.display()));
        assert!(
            units.iter().any(|u| u.ends_with(unit)),
            "{}: {unit} missing",
            t.display()
        );
        assert!(text.contains("OnCalendar=") && text.contains("WantedBy=timers.target"));
    }
    for u in &units {
        let text = std::fs::read_to_string(u).unwrap();
        assert!(text.contains("Type=oneshot"), "{}", u.display());
        let execs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect();
        assert!(!execs.is_empty());
        for e in execs {
            // The command line parses as batchlayer's own CLI would.
            let args: Vec<&str> = e.split_whitespace().collect();
            assert!(args[0].ends_with("/batchlayer"), "{e}");
            <batchlayer::cli::Cli as clap::Parser>::try_parse_from(&args)
                .unwrap_or_else(|err| panic!("{}: {e}: {err}", u.display()));
        }
    }
}
