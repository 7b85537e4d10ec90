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
        } => Src::Decimal(decimal_text(unscaled, *scale)),
        Value::Array(_) | Value::Map(_) | Value::Record(_) => Src::Compound(v.to_json().to_string()),
    }
}

/// A decimal's text from its unscaled big-endian two's-complement bytes and its scale.
pub fn decimal_text(unscaled: &[u8], scale: u32) -> String {
    // Magnitude in base 10 by long division of the byte string (any length).
    let negative = unscaled.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = if negative {
        // Two's complement: invert and add one.
        let mut v: Vec<u8> = unscaled.iter().map(|b| !b).collect();
        for b in v.iter_mut().rev() {
            let (s, carry) = b.overflowing_add(1);
            *b = s;
            if !carry {
                break;
            }
        }
        v
    } else {
        unscaled.to_vec()
    };
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    let scale = scale as usize;
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    s.push_str(std::str::from_utf8(int).unwrap_or("0"));
    if scale > 0 {
        s.push('.');
        s.push_str(std::str::from_utf8(frac).unwrap_or("0"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_print_exactly() {
        assert_eq!(decimal_text(&[0x04, 0xD2], 2), "12.34");
        assert_eq!(decimal_text(&[0xFB, 0x2E], 2), "-12.34");
        assert_eq!(decimal_text(&[0x05], 3), "0.005");
        assert_eq!(decimal_text(&[], 0), "0");
        assert_eq!(decimal_text(&[0x00, 0xFF], 0), "255");
        assert_eq!(decimal_text(&[0xFF], 1), "-0.1");
        // 2^64 with scale 0: past u64.
        assert_eq!(
            decimal_text(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0], 0),
            "18446744073709551616"
        );
    }
}
