//! Many topics in one config: which topics a run takes (`kafka.topics`, `kafka.topics_pattern`,
//! narrowed by `--topic`), and where each goes (`[[topics]]` routes: its raw table, its record
//! layout, per-topic archive and copy settings). [`super::Settings::for_topic`] turns the
//! config into one topic's settings, which every command runs as it runs a single topic.

use super::file::TopicFile;
use super::resolve::validate_ident;
use crate::archive::layout::Compression;
use crate::records::Layout;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;

/// A regular expression over topic names (Rust's `regex` syntax; a search, so anchor it with
/// `^...$` to match whole names). Topics whose names start with `__` (the broker's own) never
/// match.
#[derive(Debug, Clone)]
pub struct TopicPattern {
    pub text: String,
    re: regex::Regex,
}

impl TopicPattern {
    pub fn new(what: &str, text: &str) -> Result<TopicPattern> {
        let re = regex::Regex::new(text).map_err(|e| anyhow!("{what} {text:?}: {e}"))?;
        Ok(TopicPattern {
            text: text.to_string(),
            re,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        !topic.starts_with("__") && self.re.is_match(topic)
    }
}

/// One topic name, or a pattern of names.
#[derive(Debug, Clone)]
pub enum Matcher {
    Name(String),
    Pattern(TopicPattern),
}

impl Matcher {
    /// `--topic` and list values: a value starting with `^` is a pattern, else a name.
    pub fn parse(what: &str, v: &str) -> Result<Matcher> {
        if v.starts_with('^') {
            Ok(Matcher::Pattern(TopicPattern::new(what, v)?))
        } else {
            check_topic_name(what, v)?;
            Ok(Matcher::Name(v.to_string()))
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Matcher::Name(n) => n == topic,
            Matcher::Pattern(p) => p.matches(topic),
        }
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic_name(what: &str, t: &str) -> Result<()> {
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!("{what} {t:?} is not a Kafka topic name (1 to 249 of letters, digits, '.', '_' and '-')");
    }
    Ok(())
}

/// Which topics the config takes.
#[derive(Debug, Clone)]
pub enum TopicSelect {
    /// These topics (`kafka.topics`, or several `--topic` values).
    List(Vec<String>),
    /// Every topic of the cluster whose name matches (`kafka.topics_pattern`).
    Pattern(TopicPattern),
}

/// Where a topic goes: the first `[[topics]]` entry that matches it.
#[derive(Debug, Clone)]
pub struct Route {
    pub matcher: Matcher,
    /// None: the topic's name made an identifier ([`derived_table`]).
    pub raw_table: Option<String>,
    /// The layout's name (`records = "orders"`), None for `[records]`.
    pub records: Option<String>,
    pub layout: Layout,
    pub topic_column: Option<String>,
    pub compression: Option<Compression>,
    pub key_template: Option<String>,
    pub max_errors: Option<u64>,
    /// Its place in the file (`topics[i]`), for messages.
    pub index: usize,
}

/// The topics of the config and their routes.
#[derive(Debug, Clone, Default)]
pub struct TopicsSettings {
    /// None: one topic (`kafka.topic`), as before many topics existed.
    pub select: Option<TopicSelect>,
    /// `[[topics]]` in file order; empty: every topic into its derived table.
    pub routes: Vec<Route>,
    /// `--topic`: only the topics these match.
    pub narrow: Vec<Matcher>,
    /// `ingest --compression`: beats a route's compression, as flags beat the file.
    pub compression_flag: Option<Compression>,
}

impl TopicsSettings {
    /// Whether the config takes several topics (a list or a pattern).
    pub fn multi(&self) -> bool {
        self.select.is_some()
    }

    /// Whether a run takes this topic: the config selects it and `--topic` (if given) too.
    pub fn takes(&self, topic: &str) -> bool {
        let selected = match &self.select {
            None => true,
            Some(TopicSelect::List(l)) => l.iter().any(|t| t == topic),
            Some(TopicSelect::Pattern(p)) => p.matches(topic),
        };
        selected && self.narrowed(topic)
    }

    /// Whether `--topic` lets this topic through (always, without `--topic`).
    pub fn narrowed(&self, topic: &str) -> bool {
        self.narrow.is_empty() || self.narrow.iter().any(|m| m.matches(topic))
    }

    /// The topics a run takes among these (the cluster's, or the archive's), sorted.
    pub fn pick<'a>(&self, topics: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let mut v: Vec<String> = topics
            .into_iter()
            .filter(|t| self.takes(t))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The listed topics (a list selection), narrowed: what a run takes without asking the
    /// cluster. None for a pattern.
    pub fn listed(&self) -> Option<Vec<String>> {
        match &self.select {
            Some(TopicSelect::List(l)) => Some(self.pick(l)),
            _ => None,
        }
    }

    /// The route of a topic: the first entry that matches; None when there are entries and
    /// none matches (the topic is archived, but copy refuses it).
    pub fn route(&self, topic: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(topic))
    }

    /// What the selection is, for messages.
    pub fn describe(&self) -> String {
        match &self.select {
            None => "one topic".into(),
            Some(TopicSelect::List(l)) => format!("topics {}", l.join(", ")),
            Some(TopicSelect::Pattern(p)) => format!("topics matching /{}/", p.text),
        }
    }
}

/// A topic's raw table when its route names none: lower case, every character outside
/// `[a-z0-9_]` made `_`, `t_` before a leading digit, at most 63 bytes (a hash of the name
/// then ends it, so two long names stay apart).
pub fn derived_table(topic: &str) -> String {
    let mut s: String = topic
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s = format!("t_{s}");
    }
    // Room for the ledger's and rejects' suffixes (`_rejects`, `_loads__cursor`).
    const MAX: usize = 63 - "_loads__cursor".len();
    if s.len() > MAX {
        let h = &crate::util::sha256_hex(topic.as_bytes())[..8];
        s = format!("{}_{h}", &s[..MAX - 9]);
    }
    s
}

/// The selection from the file, the environment and `--topic`.
pub(super) fn topic_select(
    list: Option<Vec<String>>,
    pattern: Option<String>,
    single: Option<&str>,
    flags: &[String],
) -> Result<(Option<TopicSelect>, Vec<Matcher>)> {
    let narrow = flags
        .iter()
        .map(|f| Matcher::parse("--topic", f))
        .collect::<Result<Vec<_>>>()?;
    let select = match (list, pattern) {
        (Some(_), Some(_)) => {
            bail!("kafka.topics and kafka.topics_pattern: set one of them, not both")
        }
        (Some(l), None) => {
            if l.is_empty() {
                bail!("kafka.topics is empty");
            }
            for t in &l {
                check_topic_name("kafka.topics entry", t)?;
            }
            Some(TopicSelect::List(l))
        }
        (None, Some(p)) => Some(TopicSelect::Pattern(TopicPattern::new(
            "kafka.topics_pattern",
            &p,
        )?)),
        (None, None) => None,
    };
    if select.is_some() {
        if let Some(t) = single {
            bail!("kafka.topic {t:?} and kafka.topics/topics_pattern: set one of them (kafka.topic is one topic, the others many)");
        }
        return Ok((select, narrow));
    }
    // One topic configured: one plain --topic replaces it (as always); several, or a
    // pattern, make the run one of many topics.
    let plain_one = narrow.len() == 1 && matches!(narrow[0], Matcher::Name(_));
    if narrow.is_empty() || plain_one {
        return Ok((None, narrow));
    }
    let mut names = Vec::new();
    let mut patterns = Vec::new();
    for m in &narrow {
        match m {
            Matcher::Name(n) => names.push(n.clone()),
            Matcher::Pattern(p) => patterns.push(p.clone()),
        }
    }
    let select = match (names.is_empty(), patterns.len()) {
        (true, 1) => TopicSelect::Pattern(patterns.remove(0)),
        (false, 0) => TopicSelect::List(names),
        _ => bail!("--topic: give topic names, or one pattern (^...), not both"),
    };
    Ok((Some(select), Vec::new()))
}

/// The `[[topics]]` routes, each layout found among `[records]` and `[records.NAME]`.
pub(super) fn routes(
    entries: &[TopicFile],
    default_layout: &Layout,
    named: &BTreeMap<String, Layout>,
) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let what = format!("topics[{i}]");
        let matcher = match (&e.name, &e.pattern) {
            (Some(n), None) => {
                check_topic_name(&format!("{what}.name"), n)?;
                Matcher::Name(n.clone())
            }
            (None, Some(p)) => Matcher::Pattern(TopicPattern::new(&format!("{what}.pattern"), p)?),
            _ => bail!("{what}: set name (a topic) or pattern (a regex), one of them"),
        };
        if let Some(t) = &e.raw_table {
            validate_ident(&format!("{what}.raw_table"), t)?;
        }
        if let Some(c) = &e.topic_column {
            validate_ident(&format!("{what}.topic_column"), c)?;
        }
        let layout = match &e.records {
            None => default_layout.clone(),
            Some(n) => named.get(n).cloned().ok_or_else(|| {
                let known: Vec<&String> = named.keys().collect();
                anyhow!(
                    "{what}.records {n:?}: no [records.{n}] in the config (named layouts: {known:?})"
                )
            })?,
        };
        if let Some(c) = &e.topic_column {
            if layout.columns.iter().any(|col| &col.name == c) {
                bail!("{what}.topic_column {c:?} is also a column of its records' layout");
            }
        }
        if let Some(k) = &e.key_template {
            if k.contains("..") || k.starts_with('/') {
                bail!("{what}.key_template {k:?} must be a relative path");
            }
        }
        out.push(Route {
            matcher,
            raw_table: e.raw_table.clone(),
            records: e.records.clone(),
            layout,
            topic_column: e.topic_column.clone(),
            compression: e
                .compression
                .as_deref()
                .map(Compression::parse)
                .transpose()
                .map_err(|err| anyhow!("{what}.compression: {err}"))?,
            key_template: e.key_template.clone(),
            max_errors: e.max_errors,
            index: i,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_tables_are_identifiers() {
        assert_eq!(derived_table("prod.orders"), "prod_orders");
        assert_eq!(derived_table("Prod-Orders"), "prod_orders");
        assert_eq!(derived_table("9lives"), "t_9lives");
        let long = "x".repeat(200);
        let a = derived_table(&long);
        let b = derived_table(&format!("{long}y"));
        assert!(a.len() <= 49, "{a}");
        assert_ne!(a, b);
        validate_ident("t", &a).unwrap();
    }

    #[test]
    fn patterns_never_match_the_brokers_own_topics() {
        let p = TopicPattern::new("p", ".*offsets.*").unwrap();
        assert!(!p.matches("__consumer_offsets"));
        assert!(p.matches("my_offsets"));
    }

    #[test]
    fn the_flags_narrow_many_topics_and_replace_one() {
        let list = Some(vec!["a".to_string(), "b".to_string()]);
        let (sel, narrow) = topic_select(list, None, None, &["^a".into()]).unwrap();
        let t = TopicsSettings {
            select: sel,
            narrow,
            ..Default::default()
        };
        assert!(t.takes("a") && !t.takes("b") && !t.takes("c"));
        // One topic: one plain --topic replaces it; a pattern makes it many.
        let (sel, narrow) = topic_select(None, None, Some("x"), &["y".into()]).unwrap();
        assert!(sel.is_none() && narrow.len() == 1);
        let (sel, _) = topic_select(None, None, Some("x"), &["^y".into()]).unwrap();
        assert!(matches!(sel, Some(TopicSelect::Pattern(_))));
        let (sel, _) = topic_select(None, None, None, &["y".into(), "z".into()]).unwrap();
        assert!(matches!(sel, Some(TopicSelect::List(ref l)) if l.len() == 2));
        assert!(topic_select(None, Some("^a".into()), Some("x"), &[]).is_err());
        assert!(topic_select(Some(vec!["a b".into()]), None, None, &[]).is_err());
        assert!(topic_select(None, Some("(".into()), None, &[]).is_err());
    }
}
