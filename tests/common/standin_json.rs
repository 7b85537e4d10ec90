//! The stand-in's COPY from JSON data: `FORMAT [AS] JSON 's3://jsonpaths_file'` (or `'auto'`),
//! each rule from Redshift's documentation with its page:
//!
//! * JSON (JS) = https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json
//!   (the JSON data file, the JSONPaths file, JSONPath expressions);
//! * NOTES = https://docs.aws.amazon.com/redshift/latest/dg/copy-usage_notes-copy-from-json.html;
//! * SUPER = https://docs.aws.amazon.com/redshift/latest/dg/copy_json.html (ingest-super.html)
//!   and https://docs.aws.amazon.com/redshift/latest/dg/limitations-super.html;
//! * CODES = https://docs.aws.amazon.com/redshift/latest/dg/r_Load_Error_Reference.html.
//!
//! What the documentation does not say, and the stand-in's choice for it: what a JSON `null`
//! loads as (a NULL in a scalar column; in a SUPER column the SUPER value null, kept as jsonb
//! `null`, so that a loader relying on either reading is caught), the exact text of an object
//! loaded into a VARCHAR (compact JSON), and error codes where the page lists none fitting.

use super::{check_field, Col, ColType, CopyStatement, LineError, Record};
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::borrow::Cow;

/// Where a COPY from JSON takes each column's value.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonSource {
    /// `'auto'`: "COPY maps the data elements in the JSON source data to the columns in the
    /// target table by matching object keys [...] The matching is case-sensitive" (JS).
    Auto,
    /// `'s3://jsonpaths_file'`.
    Paths(String),
}

/// One step of a JSONPath expression: an object's key, or an array's index.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// "The maximum size of a single JSON object or array, including braces or brackets, is 4 MB.
/// [...] the COPY command fails" (JS; SUPER: "before shredding"). The smaller reading of
/// "4 MB", so that what passes here passes under either.
pub const JSON_OBJECT_MAX: usize = 4_000_000;

/// "An individual SUPER object can hold up to 16 MB of data"; "Any string literal stored in a
/// single SUPER object is limited to 16,000,000 bytes"; "The maximum nesting depth for arrays
/// and structures of the SUPER data type is 1,000" (limitations-super).
pub const SUPER_MAX_BYTES: usize = 16 * 1024 * 1024;
pub const SUPER_MAX_STRING: usize = 16_000_000;
pub const SUPER_MAX_DEPTH: usize = 1000;

/// The argument of `JSON [AS]`: 'auto' or a JSONPaths file. 'auto ignorecase' and 'noshred'
/// exist (NOTES, SUPER) and are not modelled.
pub fn json_option(arg: &str) -> Result<JsonSource> {
    match arg {
        "auto" => Ok(JsonSource::Auto),
        s if s.starts_with("s3://") => Ok(JsonSource::Paths(s.to_string())),
        "auto ignorecase" | "noshred" => {
            bail!("JSON '{arg}' is not modelled by the stand-in")
        }
        other => bail!("JSON takes 'auto' or 's3://jsonpaths_file', not {other:?}"),
    }
}

/// Reads a JSONPaths file: Some(expressions), or None when COPY takes it for 'auto'.
/// JS: "The JSONPaths file must contain only a single JSON object (not an array). The JSON
/// object is a name/value pair. The object key [...] must be "jsonpaths". The value [...] is
/// an array of JSONPath expressions"; "If the key name is any string other than "jsonpaths",
/// the COPY command does not return an error, but it ignores jsonpaths_file and uses the
/// 'auto' argument instead"; the COPY fails when "The JSON is malformed", "There is more than
/// one JSON object", "Any characters except white space exist outside the object", "An array
/// element is an empty string or is not a string".
pub fn parse_jsonpaths(body: &[u8]) -> Result<Option<Vec<Vec<Step>>>> {
    // One value, white space around it: anything else (a second object, other characters,
    // malformed JSON) is serde_json's error.
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| anyhow!("the JSONPaths file is not one well-formed JSON object ({e})"))?;
    let Value::Object(m) = v else {
        bail!("the JSONPaths file must contain a single JSON object (not an array)");
    };
    if m.len() != 1 {
        bail!(
            "the JSONPaths file's object must be one name/value pair, not {} pairs",
            m.len()
        );
    }
    let (name, value) = m.into_iter().next().expect("one pair");
    if name != "jsonpaths" {
        return Ok(None);
    }
    let Value::Array(items) = value else {
        bail!("\"jsonpaths\" must be an array of JSONPath expressions");
    };
    let mut out = Vec::with_capacity(items.len());
    let mut notations = (false, false);
    for item in items {
        let s = match item {
            Value::String(s) if !s.is_empty() => s,
            other => bail!("a jsonpaths element is an empty string or not a string: {other}"),
        };
        let (steps, bracket, dot) = parse_expression(&s)?;
        notations.0 |= bracket;
        notations.1 |= dot;
        out.push(steps);
    }
    // NOTES: "You cannot mix bracket notation and dot notation in the jsonpaths array."
    if notations == (true, true) {
        bail!("the jsonpaths array mixes bracket notation and dot notation");
    }
    Ok(Some(out))
}

/// One JSONPath expression: its steps, and whether it names keys in bracket notation
/// (`$['a']['b'][0]`) or dot notation (`$.a.b[0]`). NOTES: "a JSONPath expression specifies
/// the explicit path to a single name element [...] using either bracket notation or dot
/// notation"; no wildcards or filter expressions; "Array indices must be positive integers
/// (greater than or equal to zero)"; in dot notation no single quote, period or brackets in a
/// name ("Brackets can be used in both [...] to reference an array element").
fn parse_expression(expr: &str) -> Result<(Vec<Step>, bool, bool)> {
    let bad = |why: &str| anyhow!("JSONPath expression {expr:?}: {why}");
    let mut rest = expr
        .strip_prefix('$')
        .ok_or_else(|| bad("must start with $"))?;
    let (mut steps, mut bracket, mut dot) = (Vec::new(), false, false);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").ok_or_else(|| bad("an unclosed ['...']"))?;
            let name = &r[..end];
            if name.is_empty() || name.contains('\'') {
                return Err(bad("an empty name, or a quote inside ['...']"));
            }
            steps.push(Step::Key(name.to_string()));
            bracket = true;
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| bad("an unclosed [...]"))?;
            let index = r[..end].parse::<usize>().map_err(|_| {
                bad("an array index must be an integer >= 0 (no wildcards or filters)")
            })?;
            steps.push(Step::Index(index));
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() || name == "*" || name.contains(['\'', ']']) {
                return Err(bad(
                    "a dot-notation name is empty, a wildcard, or holds ' or ]",
                ));
            }
            steps.push(Step::Key(name.to_string()));
            dot = true;
            rest = &r[end..];
        } else {
            return Err(bad("expected [ or . after $"));
        }
    }
    if bracket && dot {
        return Err(bad("mixes bracket notation and dot notation"));
    }
    Ok((steps, bracket, dot))
}

/// One JSON object or array of a data file (or the text COPY could not read as one), with
/// "the last line of the JSON object" (JS: the LINE_NUMBER of its errors).
pub struct Item {
    pub line: u64,
    pub raw: Vec<u8>,
    pub value: Result<Value, String>,
}

/// The JSON data file's objects and arrays. JS: "COPY loads each JSON object or array into
/// one row"; they "cannot be separated by commas or any other characters except white space";
/// "If COPY encounters any non-white space characters before locating a usable JSON structure,
/// or between valid JSON objects or arrays, COPY returns an error for each instance" (here:
/// one error, then reading resumes at the next line). An object over [`JSON_OBJECT_MAX`]
/// fails the COPY.
pub fn items(data: &[u8]) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    let (mut pos, mut line) = (0usize, 1u64);
    loop {
        while pos < data.len() && data[pos].is_ascii_whitespace() {
            line += u64::from(data[pos] == b'\n');
            pos += 1;
        }
        if pos >= data.len() {
            return Ok(out);
        }
        let mut stream = serde_json::Deserializer::from_slice(&data[pos..]).into_iter::<Value>();
        let parsed = stream.next().expect("input left");
        let end = match &parsed {
            Ok(_) => pos + stream.byte_offset(),
            // Skip the rest of the line.
            Err(_) => data[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| pos + i),
        };
        let raw = &data[pos..end];
        if raw.len() > JSON_OBJECT_MAX {
            bail!(
                "a JSON object of {} bytes at line {line}: the maximum size of a single JSON object or array is 4 MB",
                raw.len()
            );
        }
        let value = match parsed {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => Ok(v),
            Ok(other) => Err(format!("Invalid JSON: {other} is not an object or array")),
            Err(e) => Err(format!("Invalid JSON: {e}")),
        };
        line += raw.iter().filter(|&&b| b == b'\n').count() as u64;
        out.push(Item {
            line,
            raw: raw.to_vec(),
            value,
        });
        pos = end;
    }
}

/// The columns' JSONPaths under 'auto': each column's own name, at the top level.
pub(super) fn auto_paths(cols: &[Col]) -> Vec<Vec<Step>> {
    cols.iter()
        .map(|c| vec![Step::Key(c.name.clone())])
        .collect()
}

/// What an expression finds in a row's value: None when an object element is not there
/// (JS: "If an object element referenced by a JSONPath expression is not found in the JSON
/// data, COPY attempts to load a NULL value"). An array element that is not there fails the
/// COPY: "COPY fails with the following error: Invalid JSONPath format: Not an array or index
/// out of range."
fn find<'a>(v: &'a Value, steps: &[Step]) -> Result<Option<&'a Value>> {
    let mut at = v;
    for s in steps {
        at = match (s, at) {
            (Step::Key(k), Value::Object(m)) => match m.get(k) {
                Some(v) => v,
                None => return Ok(None),
            },
            (Step::Key(_), _) => return Ok(None),
            (Step::Index(i), Value::Array(a)) if *i < a.len() => &a[*i],
            (Step::Index(_), _) => {
                bail!("Invalid JSONPath format: Not an array or index out of range.")
            }
        };
    }
    Ok(Some(at))
}

/// One row: each column's value as PostgreSQL's text COPY takes it (None: NULL), or the
/// row's load error; Err when the COPY fails. "Each JSONPath expression corresponds to one
/// column [...] The order of the jsonpaths array elements must match the order of the columns
/// in the target table or the column list" (NOTES): the counts are checked before any row.
pub(super) fn row(
    item: &Item,
    paths: &[Vec<Step>],
    cols: &[Col],
    st: &CopyStatement,
) -> Result<std::result::Result<Vec<Option<String>>, LineError>> {
    let value = match &item.value {
        Ok(v) => v,
        Err(reason) => return Ok(Err(line_error("", &item.raw, 1216, reason.clone()))),
    };
    if st.json == Some(JsonSource::Auto) && value.is_array() {
        // JS: "If your data files use arrays, you must specify a JSONPaths file".
        let why = "JSON arrays need a JSONPaths file".to_string();
        return Ok(Err(line_error("", &item.raw, 1216, why)));
    }
    let mut out = Vec::with_capacity(cols.len());
    for (c, steps) in cols.iter().zip(paths) {
        let found = find(value, steps)?;
        match cell(c, found, st) {
            Ok(v) => out.push(v),
            Err((code, reason)) => {
                let shown = found.map(|v| text_of(v).into_owned()).unwrap_or_default();
                return Ok(Err(line_error(&c.name, shown.as_bytes(), code, reason)));
            }
        }
    }
    Ok(Ok(out))
}

fn line_error(column: &str, value: &[u8], code: i32, reason: String) -> LineError {
    LineError {
        column: column.to_string(),
        value: value.to_vec(),
        code,
        reason,
    }
}

/// A JSON value as text: a string as itself, anything else as its (compact) JSON.
fn text_of(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// One column's value. SUPER: any JSON value is the SUPER value (SUPER: "Attributes can be
/// Amazon Redshift scalars or SUPER values", the nested ones "ingested as SUPER values, such
/// as JSON arrays and objects"), within the SUPER limits. VARCHAR: an object or array "is
/// loaded as a string, including the braces or brackets" (NOTES). Other types: "COPY attempts
/// to implicitly convert the strings in the source data to the data type of the target column"
/// (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-conversion.html), by
/// the rules of a delimited field ([`check_field`]: TIMEFORMAT, DATEFORMAT, ranges, varchar
/// bytes), with JS's "Empty strings for other data types, such as INT, are always loaded with
/// NULL" (EMPTYASNULL is not given, so an empty string is '' in a VARCHAR).
fn cell(
    c: &Col,
    found: Option<&Value>,
    st: &CopyStatement,
) -> std::result::Result<Option<String>, (i32, String)> {
    let v = match found {
        None => return Ok(None),
        Some(Value::Null) if !matches!(c.ty, ColType::Super) => return Ok(None),
        Some(v) => v,
    };
    if let ColType::Super = c.ty {
        check_super(v, 0)?;
        let text = v.to_string();
        if text.len() > SUPER_MAX_BYTES {
            return Err((
                1204,
                format!("SUPER value of {} bytes exceeds 16 MB", text.len()),
            ));
        }
        return Ok(Some(text));
    }
    let compound = matches!(v, Value::Object(_) | Value::Array(_));
    if compound && !matches!(c.ty, ColType::Varchar(_)) {
        return Err((
            1223,
            format!(
                "Invalid data type: an object or array for {}",
                c.ty.redshift_name()
            ),
        ));
    }
    let text = text_of(v);
    check_field(c, text.as_bytes(), st)?;
    if text.is_empty() && !matches!(c.ty, ColType::Varchar(_)) {
        return Ok(None);
    }
    Ok(Some(text.into_owned()))
}

/// The SUPER limits a value's strings and nesting must keep (limitations-super).
fn check_super(v: &Value, depth: usize) -> std::result::Result<(), (i32, String)> {
    if depth > SUPER_MAX_DEPTH {
        return Err((1224, "SUPER nesting deeper than 1,000".into()));
    }
    match v {
        Value::String(s) if s.len() > SUPER_MAX_STRING => Err((
            1204,
            format!(
                "a string of {} bytes in a SUPER value exceeds 16,000,000 bytes",
                s.len()
            ),
        )),
        Value::Array(a) => a.iter().try_for_each(|x| check_super(x, depth + 1)),
        Value::Object(m) => m.values().try_for_each(|x| check_super(x, depth + 1)),
        _ => Ok(()),
    }
}

/// The record of an item, for the error views.
pub(super) fn record_of(item: &Item) -> Record {
    Record {
        line: item.line,
        raw: item.raw.clone(),
        fields: Vec::new(),
    }
}
