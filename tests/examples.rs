//! The files under examples/ and the docs: every config loads through the real loader and
//! documents every key the config module accepts, as does the key table in
//! docs/configuration.md; every script passes `bash -n`; every crontab job is valid bash behind
//! `flock -n`; the systemd units name commands that exist; every TOML block in README.md and
//! docs/ loads, and every relative link there resolves to a file and, for `#anchor`, a heading.

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

/// Every section of the config file with the keys it accepts, from the config types
/// themselves.
fn config_sections() -> Vec<(&'static str, BTreeSet<&'static str>)> {
    use batchlayer::config::*;
    let sections: Vec<(&str, BTreeSet<&str>)> = vec![
        ("kafka", fields::<KafkaFile>()),
        ("archive", fields::<ArchiveFile>()),
        ("warehouse", fields::<WarehouseFile>()),
        ("records", fields::<LayoutFile>()),
        ("aggregate", fields::<AggregateFile>()),
        ("retry", fields::<RetryFile>()),
        ("log", fields::<LogFile>()),
        ("status", fields::<StatusFile>()),
        ("schema_registry", fields::<SchemaRegistryFile>()),
        ("topics", fields::<TopicFile>()),
        ("lake", fields::<LakeFile>()),
    ];
    let top: BTreeSet<&str> = sections.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        top,
        fields::<FileConfig>(),
        "a config section this test does not know"
    );
    sections
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
    let sections = config_sections();
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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md.
fn docs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    out.sort();
    out.insert(0, root().join("README.md"));
    out
}

/// A Markdown text split into its prose (the lines outside fenced code blocks) and its fenced
/// code blocks (info string, body).
fn split_markdown(text: &str) -> (Vec<&str>, Vec<(String, String)>) {
    let (mut prose, mut blocks) = (Vec::new(), Vec::new());
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((info.trim().to_string(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => prose.push(line),
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    (prose, blocks)
}

/// The anchors GitHub gives a text's headings: the heading lowercased, letters, digits, `-`
/// and `_` kept, spaces made `-`, anything else dropped; a repeated one gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in split_markdown(text).0 {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let Some(heading) = line[hashes..]
            .strip_prefix(' ')
            .filter(|_| (1..=6).contains(&hashes))
        else {
            continue;
        };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while !out.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
    }
    out
}

/// The targets of a text's inline links (`[text](target)`) and link definitions
/// (`[name]: target`), outside code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    let prose = split_markdown(text).0.join("\n");
    // Code spans may run over a line break; every other backtick opens or closes one.
    let outside: String = prose.split('`').step_by(2).collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    let mut rest = outside.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let end = rest
            .find(')')
            .expect("a link without its closing parenthesis");
        out.push(rest[..end].trim().to_string());
        rest = &rest[end..];
    }
    for line in outside.lines() {
        if let Some((_, target)) = line
            .trim_start()
            .strip_prefix('[')
            .and_then(|l| l.split_once("]: "))
        {
            out.push(target.trim().to_string());
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let files = docs();
    assert!(files.len() > 1, "no docs/*.md");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !linked.exists() {
                broken.push(format!("{name}: {target}: no such file"));
            } else if !anchor.is_empty() && linked.extension().is_some_and(|x| x == "md") {
                let text = std::fs::read_to_string(&linked).unwrap();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{name}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser right?"
    );
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

#[test]
fn every_toml_block_in_the_docs_loads() {
    use batchlayer::config::*;
    let mut blocks = 0;
    for file in docs() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (info, body) in split_markdown(&text).1 {
            if info != "toml" {
                continue;
            }
            blocks += 1;
            let at = || format!("{}: the block {body:?}", file.display());
            let parsed = parse_file(&body).unwrap_or_else(|e| panic!("{}: {e:#}", at()));
            // The README's settings resolve as they are (the managed services' examples name
            // certificate files that exist only on their hosts).
            if file.ends_with("README.md") {
                let env = std::collections::HashMap::<String, String>::new();
                resolve(parsed, &env, &Overrides::default())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", at()));
            }
        }
    }
    assert!(
        blocks >= 2,
        "the README's and the managed services' examples"
    );
}

#[test]
fn the_configuration_doc_names_every_key_and_only_keys() {
    let path = root().join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    // The key table: its rows' first cells, `section.key` or a bare key of the same section as
    // the last one named, `[section.table]` or `[[section.table]]` for sub-tables.
    let mut rows = text
        .lines()
        .skip_while(|l| !l.starts_with("| key |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    let mut named = BTreeSet::new();
    let mut section = String::new();
    for row in rows.by_ref() {
        let cell = row.split('|').nth(1).unwrap_or_default();
        for token in cell.split('`').skip(1).step_by(2) {
            let token = token.trim_matches(|c| c == '[' || c == ']');
            let key = match token.split_once('.') {
                Some((s, k)) => {
                    section = s.to_string();
                    k
                }
                None => token,
            };
            named.insert((section.clone(), key.to_string()));
        }
    }
    assert!(named.len() > 20, "no key table in {}", path.display());
    let sections = config_sections();
    let real: BTreeSet<(String, String)> = sections
        .iter()
        .flat_map(|(s, keys)| keys.iter().map(move |k| (s.to_string(), k.to_string())))
        .collect();
    let unknown: Vec<_> = named.difference(&real).collect();
    assert!(
        unknown.is_empty(),
        "the table names keys that do not exist: {unknown:?}"
    );
    let missing: Vec<_> = real.difference(&named).collect();
    assert!(missing.is_empty(), "the table lacks {missing:?}");
    for k in fields::<batchlayer::records::Column>() {
        assert!(text.contains(k), "the record layout does not show {k}");
    }
}
