//! JSON records: each message is one JSON value; each column takes the value its JSON Pointer
//! (RFC 6901) names.

use super::value::{self, Cell, Src};
use super::{Column, RowError};
use serde_json::Value;

/// Parses a message as JSON; the error is the record's reason.
pub fn parse(rec: &[u8]) -> Result<Value, RowError> {
    serde_json::from_slice(rec).map_err(|e| RowError {
        column: None,
        value: None,
        reason: format!("not JSON: {e}"),
    })
}

/// What the record holds at `pointer`, as a source value.
pub fn src_at<'a>(doc: &'a Value, pointer: &str) -> Src<'a> {
    match doc.pointer(pointer) {
        None => Src::Missing,
        Some(v) => src_of(v),
    }
}

/// A JSON value as a source value (objects and arrays as their JSON text).
pub fn src_of(v: &Value) -> Src<'_> {
    match v {
        Value::Null => Src::Null,
        Value::Bool(b) => Src::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Src::Int(i),
            (None, Some(u), _) => Src::Uint(u),
            (_, _, Some(f)) => Src::Float(f),
            _ => Src::Compound(n.to_string()),
        },
        Value::String(s) => Src::Str(s.as_str().into()),
        Value::Array(_) | Value::Object(_) => Src::Compound(v.to_string()),
    }
}

/// The cell of `col` in the parsed record `doc`, its value at `pointer` (the column's
/// [`Column::json_pointer`]); errors name the column and the pointer.
pub fn cell<'a>(
    col: &Column,
    pointer: &str,
    doc: &'a Value,
    ts_format: &str,
) -> Result<Cell<'a>, RowError> {
    let src = src_at(doc, pointer);
    let null_ok = col.nullable.unwrap_or(false);
    value::cell(col, src, ts_format, null_ok).map_err(|reason| RowError {
        column: Some(col.name.clone()),
        value: doc.pointer(pointer).map(|v| match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        }),
        reason: format!("at JSON pointer {pointer:?}: {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ColumnType;

    #[test]
    fn pointers_reach_nested_values_and_missing_ones_are_named() {
        let doc = parse(br#"{"id":"12","user":{"loc":null,"n":3},"tags":["a"]}"#).unwrap();
        let mut id = Column::new("id", ColumnType::Bigint);
        assert_eq!(
            cell(&id, &id.json_pointer(), &doc, "%F").unwrap(),
            Cell::Bigint(12)
        );
        let mut n = Column::new("n", ColumnType::Int);
        n.path = Some("/user/n".into());
        assert_eq!(
            cell(&n, &n.json_pointer(), &doc, "%F").unwrap(),
            Cell::Int(3)
        );
        let mut loc = Column::new("loc", ColumnType::Text);
        loc.path = Some("/user/loc".into());
        let e = cell(&loc, &loc.json_pointer(), &doc, "%F").unwrap_err();
        assert_eq!(e.column.as_deref(), Some("loc"));
        assert!(e.reason.contains("\"/user/loc\""), "{e}");
        loc.nullable = Some(true);
        assert_eq!(
            cell(&loc, &loc.json_pointer(), &doc, "%F").unwrap(),
            Cell::Null
        );
        let mut whole = Column::new("doc", ColumnType::Json);
        whole.path = Some(String::new());
        let Cell::Json(j) = cell(&whole, &whole.json_pointer(), &doc, "%F").unwrap() else {
            panic!()
        };
        assert_eq!(serde_json::from_str::<Value>(&j).unwrap(), doc);
        id.path = Some("/nope".into());
        let e = cell(&id, &id.json_pointer(), &doc, "%F").unwrap_err();
        assert!(e.reason.contains("no value"), "{e}");
        assert!(parse(b"{\"a\":")
            .unwrap_err()
            .reason
            .starts_with("not JSON"));
    }
}
