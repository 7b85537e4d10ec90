//! The schemas of an Avro topic's messages: where the run first saw each schema id, and, before
//! its manifest, the archive's copy of each schema it does not hold yet (`_schemas/{id}.json`,
//! fetched from the registry), so copy decodes every record a manifest lists without the
//! registry.
//!
//! Cost: per message, reading its 5-byte header (the spool notes the id, [`Spool::note_schema_id`]);
//! per run, one listing of `_schemas/` when it saw any id, and a registry call only for ids the
//! archive does not hold.
//!
//! [`Spool::note_schema_id`]: super::spool::Spool::note_schema_id

use crate::archive::catalog;
use crate::archive::layout::{ObjectEntry, StoredSchema};
use crate::archive::ObjectStore;
use crate::config::RegistrySettings;
use crate::registry::RegistryClient;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};

/// Where the run first saw a schema id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message {
        partition: i32,
        offset: i64,
    },
    /// In an object a run that died before its manifest stored, adopted by this run.
    Adopted(String),
}

/// Where the run first saw each schema id.
#[derive(Debug, Default)]
pub(super) struct FirstSeen(HashMap<u32, Seen>);

impl FirstSeen {
    pub(super) fn message(&mut self, id: u32, partition: i32, offset: i64) {
        self.0
            .entry(id)
            .or_insert(Seen::Message { partition, offset });
    }

    pub(super) fn adopted(&mut self, o: &ObjectEntry) {
        for id in &o.schema_ids {
            self.0
                .entry(*id)
                .or_insert_with(|| Seen::Adopted(o.key.clone()));
        }
    }

    /// "first at partition 0 offset 12", for messages.
    fn describe(&self, id: u32) -> String {
        match self.0.get(&id) {
            Some(Seen::Message { partition, offset }) => {
                format!("first at partition {partition} offset {offset}")
            }
            Some(Seen::Adopted(key)) => {
                format!("in {key}, stored by a run that died before its manifest")
            }
            None => "in this run's objects".into(),
        }
    }
}

/// Stores in the archive the schema of each id the objects carry that it holds none of,
/// fetched from the registry; returns the ids stored. An id the registry has no schema for,
/// a registry that cannot be reached or refuses the request, or no registry configured, is an
/// error naming the id and where the run first saw it (the run then commits nothing).
pub(super) fn store_missing(
    store: &dyn ObjectStore,
    topic: &str,
    objects: &[ObjectEntry],
    registry: Option<&RegistrySettings>,
    seen: &FirstSeen,
) -> Result<Vec<u32>> {
    let ids: BTreeSet<u32> = objects
        .iter()
        .flat_map(|o| o.schema_ids.iter().copied())
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let archived = catalog::schema_ids_stored(store)?;
    let missing: Vec<u32> = ids.difference(&archived).copied().collect();
    let Some(first) = missing.first() else {
        return Ok(Vec::new());
    };
    let Some(settings) = registry else {
        bail!(
            "topic {topic}: schema id {first} ({}) has no schema in the archive, and no schema registry is configured to fetch it from (set [schema_registry] url); nothing was committed",
            seen.describe(*first)
        );
    };
    let client = RegistryClient::new(settings)?;
    for &id in &missing {
        let what = || format!("topic {topic}: schema id {id} ({})", seen.describe(id));
        let found = client.schema_by_id(id).with_context(|| {
            format!(
                "{}: fetching its schema failed; nothing was committed",
                what()
            )
        })?;
        let Some(s) = found else {
            bail!(
                "{}: the schema registry {} has no schema with this id (error code 40403); nothing was committed",
                what(),
                client.url()
            );
        };
        let stored = StoredSchema {
            id,
            schema: s.schema,
            registry: client.url().to_string(),
            schema_type: s.schema_type,
        };
        catalog::store_schema(store, &stored)
            .with_context(|| format!("{}; nothing was committed", what()))?;
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::LocalStore;
    use crate::registry::standin::RegistryStandIn;

    fn object(key: &str, ids: &[u32]) -> ObjectEntry {
        ObjectEntry {
            schema_ids: ids.to_vec(),
            ..ObjectEntry::sample(key, 0, 0, 0)
        }
    }

    fn registry(url: &str) -> RegistrySettings {
        RegistrySettings {
            url: url.into(),
            username: None,
            password: None,
            bearer_token: None,
            ca_file: None,
            retry: crate::util::RetryPolicy {
                attempts: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn only_ids_the_archive_lacks_are_fetched_and_an_unknown_one_is_named_where_first_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let sr = RegistryStandIn::start(&[]);
        let c = RegistryClient::new(&registry(&sr.url)).unwrap();
        let one = c.register("t-value", r#""long""#).unwrap();
        let two = c.register("t-value", r#""string""#).unwrap();
        let mut seen = FirstSeen::default();
        seen.message(one, 1, 40);
        seen.message(one, 0, 7);
        seen.adopted(&object("t/old.log", &[two, 99]));
        let reg = registry(&sr.url);
        // No ids: nothing is read, not even the archive's listing.
        assert!(store_missing(&store, "t", &[object("a", &[])], None, &seen)
            .unwrap()
            .is_empty());
        // An id no schema exists for: named with where it was first seen; nothing stored for
        // it (the ids before it are).
        let objects = [object("a", &[one]), object("b", &[one, two, 99])];
        let err = format!(
            "{:#}",
            store_missing(&store, "t", &objects, Some(&reg), &seen).unwrap_err()
        );
        assert!(
            err.contains("topic t: schema id 99 (in t/old.log, stored by a run that died before its manifest)")
                && err.contains(&format!("the schema registry {} has no schema with this id", sr.url)),
            "{err}"
        );
        assert_eq!(catalog::read_schema(&store, 99).unwrap(), None);
        let objects = [object("a", &[one]), object("b", &[one, two])];
        // With the first two stored already, a run needs the registry for neither.
        let gone = registry("http://127.0.0.1:9");
        assert!(store_missing(&store, "t", &objects, Some(&gone), &seen)
            .unwrap()
            .is_empty());
        assert!(store_missing(&store, "t", &objects, None, &seen)
            .unwrap()
            .is_empty());
        let got = catalog::read_schema(&store, one).unwrap().unwrap();
        assert_eq!(
            (got.schema.as_str(), got.registry.as_str()),
            (r#""long""#, sr.url.as_str())
        );
        // A new id without a registry, or with one that cannot be reached: named, with the
        // message that carried it first.
        let objects = [object("c", &[one, 3])];
        let mut seen = FirstSeen::default();
        seen.message(3, 2, 11);
        let err = format!(
            "{:#}",
            store_missing(&store, "t", &objects, None, &seen).unwrap_err()
        );
        assert!(
            err.contains("schema id 3 (first at partition 2 offset 11) has no schema in the archive, and no schema registry is configured"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            store_missing(&store, "t", &objects, Some(&gone), &seen).unwrap_err()
        );
        assert!(
            err.contains("schema id 3 (first at partition 2 offset 11)")
                && err.contains(
                    "schema registry http://127.0.0.1:9: GET /schemas/ids/3: cannot reach it"
                ),
            "{err}"
        );
    }
}
