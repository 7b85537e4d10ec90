//! Avro records' cells: a Confluent-framed message decoded with its writer schema from the
//! archive, each column's field looked up by its dotted path.

use super::avro::{self, Schema, Value};
use super::value::{self, Cell, Src};
use super::{json, Column, RowError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The writer schemas an archive holds, by id, and the defaults the columns' fields take when
/// a writer lacks them.
#[derive(Debug, Clone, Default)]
pub struct SchemaBook {
    schemas: BTreeMap<u32, Arc<Schema>>,
    /// Per column (in layout order): the default the newest schema that declares the field
    /// gives it, if any.
    defaults: Vec<Option<serde_json::Value>>,
}

impl SchemaBook {
    /// Parses the archive's schemas (id, schema text); an unparsable one is an error naming it.
    pub fn new(schemas: &[(u32, String)], columns: &[Column]) -> anyhow::Result<SchemaBook> {
        let mut map = BTreeMap::new();
        for (id, text) in schemas {
            let s = Schema::parse(text)
                .map_err(|e| anyhow::anyhow!("archived schema {id} (_schemas/{id}.json): {e}"))?;
            map.insert(*id, Arc::new(s));
        }
        let defaults = columns
            .iter()
            .map(|c| {
                map.values()
                    .rev()
                    .find_map(|s| s.field_default(c.avro_field()).cloned())
            })
            .collect();
        Ok(SchemaBook {
            schemas: map,
            defaults,
        })
    }

    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }
}

fn record_error(reason: String) -> RowError {
    RowError {
        column: None,
        value: None,
        reason,
    }
}

/// Calls `f` with each column's cell of one Avro message, in column order; stops at the first
/// column that does not fit.
pub fn each_cell(
    book: &SchemaBook,
    columns: &[Column],
    ts_format: &str,
    rec: &[u8],
    f: &mut dyn FnMut(usize, Cell<'_>),
) -> Result<(), RowError> {
    let (id, body) = avro::confluent_split(rec)
        .map_err(|e| record_error(format!("not Confluent-framed Avro: {e}")))?;
    let schema = book.schemas.get(&id).ok_or_else(|| {
        record_error(format!(
            "schema id {id} is not in the archive (_schemas/{id}.json): ingest stores each schema before its records"
        ))
    })?;
    let v = avro::decode(schema, body)
        .map_err(|e| record_error(format!("Avro body does not match writer schema {id}: {e}")))?;
    for (i, col) in columns.iter().enumerate() {
        let field = col.avro_field();
        let (src, shown) = match v.get(field) {
            Some(x) => (src_of(x), Some(x)),
            // Through a null union on the way (`user` is null): NULL.
            None if schema.has_field(field) => (Src::Null, None),
            // A field this writer does not have: the default a schema declares for it.
            None => match &book.defaults[i] {
                Some(d) => (json::src_of(d), None),
                None => (Src::Missing, None),
            },
        };
        let null_ok = col.nullable.unwrap_or(true);
        let missing = matches!(src, Src::Missing);
        let c = value::cell(col, src, ts_format, null_ok).map_err(|reason| RowError {
            column: Some(col.name.clone()),
            value: shown.map(|x| x.to_json().to_string()),
            reason: if missing {
                format!("Avro field {field}: writer schema {id} has no such field and no schema declares a default; {reason}")
            } else {
                format!("Avro field {field}: {reason}")
            },
        })?;
        f(i, c);
    }
    Ok(())
}

/// An Avro value as a source value.
fn src_of<'a>(v: &Value<'a>) -> Src<'a> {
    match v {
        Value::Null => Src::Null,
        Value::Boolean(b) => Src::Bool(*b),
        Value::Int(i) => Src::Int((*i).into()),
        Value::Long(l) => Src::Int(*l),
        Value::Float(x) => Src::Float((*x).into()),
        Value::Double(x) => Src::Float(*x),
        Value::String(s) | Value::Enum(s) | Value::Uuid(s) => Src::Str((*s).into()),
        Value::Bytes(b) | Value::Fixed(b) => match std::str::from_utf8(b) {
            Ok(s) => Src::Str(s.into()),
            Err(_) => Src::Compound(v.to_json().to_string()),
        },
        Value::Date(d) => Src::Days(*d),
        Value::TimeMillis(t) => Src::Int((*t).into()),
        Value::TimeMicros(t) => Src::Int(*t),
        Value::TimestampMillis(m) | Value::LocalTimestampMillis(m) => match m.checked_mul(1000) {
            Some(us) => Src::Micros(us),
            None => Src::Compound(m.to_string()),
        },
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => Src::Micros(*us),
        Value::Decimal {
            unscaled, scale, ..
        } => Src::Decimal(avro::decimal_string(unscaled, *scale)),
        Value::Array(_) | Value::Map(_) | Value::Record(_) => {
            Src::Compound(v.to_json().to_string())
        }
    }
}
