//! Avro binary bodies: schemas, a decoder, a JSON-driven encoder, and Confluent framing.
//!
//! Written from the Apache Avro 1.11 specification ("Schema Declaration", "Data Serialization and
//! Deserialization: Binary Encoding", "Logical Types"), not from another implementation. A body is
//! one datum in the binary encoding, without the object container file: what a Kafka message
//! carries after the Confluent header (magic byte 0, then the schema id as a big-endian u32).
//!
//! `Schema::parse` resolves every named reference to an index once, so decoding walks a flat
//! table of nodes with no name lookups; `decode` borrows strings, bytes, field names and enum
//! symbols instead of copying them. Unions are transparent in a decoded `Value`.
//!
//! Decoding is strict where the specification is: a boolean byte is 0 or 1, an int varint fits
//! 32 bits, a long varint 64 bits, lengths and counts are not negative, strings are UTF-8, and the
//! datum ends exactly where the body does. Logical types whose attributes are invalid (a decimal
//! without a positive precision, a `date` on a long, ...) fall back to their underlying type, as
//! the specification requires ("Language implementations must ignore unknown logical types ...
//! an invalid logical type ... must be ignored").

use serde_json::Value as Json;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Nesting (records, arrays, maps, unions) deeper than this is refused: a recursive schema over
/// hostile bytes would otherwise recurse until the stack runs out.
pub const MAX_DEPTH: usize = 256;
/// Items of an array whose items take no bytes (null, an empty record) are limited to this many:
/// their count is the only thing the body pays for them.
pub const MAX_ZERO_WIDTH_ITEMS: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// A parsed writer schema. Cloning shares it.
#[derive(Clone)]
pub struct Schema {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<Node>,
    root: usize,
    /// The fewest bytes a datum of each node can take (a lower bound), for refusing counts the
    /// remaining body cannot hold before allocating for them.
    min_size: Vec<u64>,
}

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record {
        name: String,
        fields: Vec<Field>,
    },
    Enum {
        name: String,
        symbols: Vec<String>,
    },
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Fixed {
        name: String,
        size: usize,
    },
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    LocalTimestampMillis,
    LocalTimestampMicros,
    /// `fixed` is the size of the underlying fixed (None: bytes) and its fullname.
    Decimal {
        precision: u32,
        scale: u32,
        fixed: Option<(String, usize)>,
    },
    Uuid,
}

#[derive(Debug)]
struct Field {
    name: String,
    node: usize,
    default: Option<Json>,
}

const PRIMITIVES: [(&str, Node); 8] = [
    ("null", Node::Null),
    ("boolean", Node::Boolean),
    ("int", Node::Int),
    ("long", Node::Long),
    ("float", Node::Float),
    ("double", Node::Double),
    ("bytes", Node::Bytes),
    ("string", Node::String),
];
const NULL: usize = 0;
const INT: usize = 2;
const LONG: usize = 3;
const BYTES: usize = 6;
const STRING: usize = 7;

/// Why a schema was refused, and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where: "record batchlayer.example.Tweet, field user" (empty at the top).
    pub at: String,
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "invalid Avro schema: {}", self.message)
        } else {
            write!(f, "invalid Avro schema at {}: {}", self.at, self.message)
        }
    }
}

impl std::error::Error for SchemaError {}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({})", self.inner.describe(self.inner.root))
    }
}

impl Schema {
    /// Parses a schema in its JSON form.
    pub fn parse(text: &str) -> Result<Schema, SchemaError> {
        let json: Json = serde_json::from_str(text).map_err(|e| SchemaError {
            at: String::new(),
            message: format!("not JSON: {e}"),
        })?;
        let mut p = Parser {
            nodes: PRIMITIVES.into_iter().map(|(_, n)| n).collect(),
            names: HashMap::new(),
            at: Vec::new(),
        };
        let root = p.node(&json, "")?;
        let min_size = min_sizes(&p.nodes);
        Ok(Schema {
            inner: Arc::new(Inner {
                nodes: p.nodes,
                root,
                min_size,
            }),
        })
    }

    /// The declared default of the record field at a dotted path ("user.location"), looking
    /// through unions into their record branches; None if the field has no default or no such
    /// field exists.
    pub fn field_default(&self, path: &str) -> Option<&Json> {
        self.field(path)?.default.as_ref()
    }

    /// Whether the record field at this dotted path exists (through unions, as `field_default`).
    pub fn has_field(&self, path: &str) -> bool {
        self.field(path).is_some()
    }

    /// The positions of the fields along a dotted path (for `Value::at`, which then needs no
    /// name comparisons per record); None if there is no such field.
    pub fn field_positions(&self, path: &str) -> Option<Vec<usize>> {
        let mut node = self.inner.root;
        let mut out = Vec::new();
        for seg in path.split('.') {
            let (i, f) = self.inner.lookup(node, seg)?;
            out.push(i);
            node = f.node;
        }
        Some(out)
    }

    /// The type of the field at a dotted path, as a short description ("long",
    /// "timestamp-millis", "union [null, string]", "record batchlayer.example.User").
    pub fn field_type(&self, path: &str) -> Option<String> {
        Some(self.inner.describe(self.field(path)?.node))
    }

    /// The type of the whole datum, described as `field_type` does.
    pub fn root_type(&self) -> String {
        self.inner.describe(self.inner.root)
    }

    fn field(&self, path: &str) -> Option<&Field> {
        let mut node = self.inner.root;
        let mut found = None;
        for seg in path.split('.') {
            let (_, f) = self.inner.lookup(node, seg)?;
            node = f.node;
            found = Some(f);
        }
        found
    }
}

impl Inner {
    /// The field named `seg` of a record, or of the first record branch of a union having it.
    fn lookup(&self, node: usize, seg: &str) -> Option<(usize, &Field)> {
        match &self.nodes[node] {
            Node::Record { fields, .. } => fields.iter().enumerate().find(|(_, f)| f.name == seg),
            Node::Union(branches) => branches.iter().find_map(|&b| match &self.nodes[b] {
                Node::Record { .. } => self.lookup(b, seg),
                _ => None,
            }),
            _ => None,
        }
    }

    fn describe(&self, node: usize) -> String {
        match &self.nodes[node] {
            Node::Record { name, .. } => format!("record {name}"),
            Node::Enum { name, .. } => format!("enum {name}"),
            Node::Fixed { name, size } => format!("fixed {name} ({size} bytes)"),
            Node::Array(i) => format!("array of {}", self.describe(*i)),
            Node::Map(v) => format!("map of {}", self.describe(*v)),
            Node::Union(bs) => {
                let names: Vec<String> = bs.iter().map(|&b| self.describe(b)).collect();
                format!("union [{}]", names.join(", "))
            }
            Node::Decimal {
                precision, scale, ..
            } => format!("decimal({precision},{scale})"),
            n => simple_name(n).to_string(),
        }
    }
}

/// The name of a node that has no attributes.
fn simple_name(n: &Node) -> &'static str {
    match n {
        Node::Null => "null",
        Node::Boolean => "boolean",
        Node::Int => "int",
        Node::Long => "long",
        Node::Float => "float",
        Node::Double => "double",
        Node::Bytes => "bytes",
        Node::String => "string",
        Node::Date => "date",
        Node::TimeMillis => "time-millis",
        Node::TimeMicros => "time-micros",
        Node::TimestampMillis => "timestamp-millis",
        Node::TimestampMicros => "timestamp-micros",
        Node::LocalTimestampMillis => "local-timestamp-millis",
        Node::LocalTimestampMicros => "local-timestamp-micros",
        Node::Uuid => "uuid",
        Node::Record { .. } => "record",
        Node::Enum { .. } => "enum",
        Node::Array(_) => "array",
        Node::Map(_) => "map",
        Node::Union(_) => "union",
        Node::Fixed { .. } => "fixed",
        Node::Decimal { .. } => "decimal",
    }
}

/// Lower bounds of each node's encoded size, by a few rounds of relaxation (a recursive
/// record's bound stays a lower bound after any number of rounds).
fn min_sizes(nodes: &[Node]) -> Vec<u64> {
    let mut min = vec![0u64; nodes.len()];
    for _ in 0..4 {
        for (i, n) in nodes.iter().enumerate() {
            min[i] = match n {
                Node::Null => 0,
                Node::Float => 4,
                Node::Double => 8,
                Node::Fixed { size, .. } => *size as u64,
                Node::Decimal {
                    fixed: Some((_, size)),
                    ..
                } => *size as u64,
                Node::Record { fields, .. } => fields
                    .iter()
                    .fold(0u64, |acc, f| acc.saturating_add(min[f.node])),
                Node::Union(bs) if bs.is_empty() => 1,
                Node::Union(bs) => {
                    1u64.saturating_add(bs.iter().map(|&b| min[b]).min().unwrap_or(0))
                }
                // Every varint, length-prefixed value and block list takes at least one byte.
                _ => 1,
            };
        }
    }
    min
}

struct Parser {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
    /// Where the parser is, for errors.
    at: Vec<String>,
}

impl Parser {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, SchemaError> {
        Err(SchemaError {
            at: self.at.join(", "),
            message: message.into(),
        })
    }

    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Parses one schema; `ns` is the enclosing namespace.
    fn node(&mut self, j: &Json, ns: &str) -> Result<usize, SchemaError> {
        match j {
            Json::String(name) => self.reference(name, ns),
            Json::Array(branches) => self.union(branches, ns),
            Json::Object(o) => match o.get("type") {
                Some(Json::String(t)) => self.object(t, o, ns),
                // {"type": {...}} or {"type": [...]}: a nested definition; its attributes apply.
                Some(t @ (Json::Object(_) | Json::Array(_))) => self.node(t, ns),
                Some(other) => self.err(format!(
                    "\"type\" must be a string, object or array, not {other}"
                )),
                None => self.err("an object schema needs a \"type\""),
            },
            other => self.err(format!(
                "a schema is a JSON string, object or array, not {other}"
            )),
        }
    }

    /// A primitive type name or a reference to a named type defined earlier.
    fn reference(&self, name: &str, ns: &str) -> Result<usize, SchemaError> {
        if let Some(i) = PRIMITIVES.iter().position(|(p, _)| *p == name) {
            return Ok(i);
        }
        let qualified = if !name.contains('.') && !ns.is_empty() {
            self.names.get(&format!("{ns}.{name}"))
        } else {
            None
        };
        match qualified.or_else(|| self.names.get(name)) {
            Some(&i) => Ok(i),
            None => self.err(format!(
                "unknown type \"{name}\" (not a primitive, nor a named type defined before this point)"
            )),
        }
    }

    fn object(
        &mut self,
        t: &str,
        o: &serde_json::Map<String, Json>,
        ns: &str,
    ) -> Result<usize, SchemaError> {
        match t {
            "record" | "error" => self.record(o, ns),
            "enum" => self.enumeration(o, ns),
            "fixed" => self.fixed(o, ns),
            "array" => {
                let items = self.required(o, "items")?;
                let i = self.node(items, ns)?;
                Ok(self.push(Node::Array(i)))
            }
            "map" => {
                let values = self.required(o, "values")?;
                let v = self.node(values, ns)?;
                Ok(self.push(Node::Map(v)))
            }
            _ => {
                let base = self.reference(t, ns)?;
                Ok(self.logical(base, o))
            }
        }
    }

    fn required<'j>(
        &self,
        o: &'j serde_json::Map<String, Json>,
        key: &str,
    ) -> Result<&'j Json, SchemaError> {
        match o.get(key) {
            Some(v) => Ok(v),
            None => self.err(format!("missing \"{key}\"")),
        }
    }

    /// The logical type a primitive's attributes ask for, or the primitive itself when the
    /// logical type is unknown or invalid for it.
    fn logical(&mut self, base: usize, o: &serde_json::Map<String, Json>) -> usize {
        let Some(Json::String(lt)) = o.get("logicalType") else {
            return base;
        };
        let node = match (lt.as_str(), base) {
            ("decimal", BYTES) => match decimal_params(o, None) {
                Some((precision, scale)) => Node::Decimal {
                    precision,
                    scale,
                    fixed: None,
                },
                None => return base,
            },
            ("uuid", STRING) => Node::Uuid,
            ("date", INT) => Node::Date,
            ("time-millis", INT) => Node::TimeMillis,
            ("time-micros", LONG) => Node::TimeMicros,
            ("timestamp-millis", LONG) => Node::TimestampMillis,
            ("timestamp-micros", LONG) => Node::TimestampMicros,
            ("local-timestamp-millis", LONG) => Node::LocalTimestampMillis,
            ("local-timestamp-micros", LONG) => Node::LocalTimestampMicros,
            _ => return base,
        };
        self.push(node)
    }

    /// The fullname and namespace a named type's "name" and "namespace" give it.
    fn define_name(
        &mut self,
        o: &serde_json::Map<String, Json>,
        ns: &str,
    ) -> Result<(String, String), SchemaError> {
        let name = match o.get("name") {
            Some(Json::String(n)) => n.as_str(),
            Some(other) => return self.err(format!("\"name\" must be a string, not {other}")),
            None => return self.err("a named type needs a \"name\""),
        };
        let (full, space) = match (name.rsplit_once('.'), o.get("namespace")) {
            (Some((space, _)), _) => (name.to_string(), space.to_string()),
            (None, Some(Json::String(space))) if !space.is_empty() => {
                (format!("{space}.{name}"), space.clone())
            }
            (None, Some(Json::String(_)) | Some(Json::Null)) => (name.to_string(), String::new()),
            (None, Some(other)) => {
                return self.err(format!("\"namespace\" must be a string, not {other}"))
            }
            (None, None) if ns.is_empty() => (name.to_string(), String::new()),
            (None, None) => (format!("{ns}.{name}"), ns.to_string()),
        };
        if !full.split('.').all(valid_name) {
            return self.err(format!(
                "invalid name \"{full}\" (each part: a letter or _, then letters, digits or _)"
            ));
        }
        if PRIMITIVES.iter().any(|(p, _)| *p == full) {
            return self.err(format!("a named type cannot be called \"{full}\""));
        }
        if self.names.contains_key(&full) {
            return self.err(format!("\"{full}\" is defined twice"));
        }
        Ok((full, space))
    }

    fn record(
        &mut self,
        o: &serde_json::Map<String, Json>,
        ns: &str,
    ) -> Result<usize, SchemaError> {
        let (full, space) = self.define_name(o, ns)?;
        // Registered before its fields, so that they can refer to it (recursive types).
        let me = self.push(Node::Record {
            name: full.clone(),
            fields: Vec::new(),
        });
        self.names.insert(full.clone(), me);
        self.at.push(format!("record {full}"));
        let Some(Json::Array(list)) = o.get("fields") else {
            return self.err("a record needs \"fields\", an array");
        };
        let mut fields: Vec<Field> = Vec::with_capacity(list.len());
        for fj in list {
            let Json::Object(fo) = fj else {
                return self.err(format!("a field is an object, not {fj}"));
            };
            let name = match fo.get("name") {
                Some(Json::String(n)) if valid_name(n) => n.clone(),
                Some(other) => return self.err(format!("invalid field name {other}")),
                None => return self.err("a field needs a \"name\""),
            };
            if fields.iter().any(|f| f.name == name) {
                return self.err(format!("field \"{name}\" is declared twice"));
            }
            self.at.push(format!("field {name}"));
            let ty = self.required(fo, "type")?;
            let node = self.node(ty, &space)?;
            self.at.pop();
            let default = fo.get("default").cloned();
            fields.push(Field {
                name,
                node,
                default,
            });
        }
        self.at.pop();
        self.nodes[me] = Node::Record { name: full, fields };
        Ok(me)
    }

    fn enumeration(
        &mut self,
        o: &serde_json::Map<String, Json>,
        ns: &str,
    ) -> Result<usize, SchemaError> {
        let (full, _) = self.define_name(o, ns)?;
        let Some(Json::Array(list)) = o.get("symbols") else {
            return self.err(format!("enum {full} needs \"symbols\", an array"));
        };
        let mut symbols: Vec<String> = Vec::with_capacity(list.len());
        for s in list {
            match s {
                Json::String(s) if valid_name(s) && !symbols.contains(s) => symbols.push(s.clone()),
                Json::String(s) if valid_name(s) => {
                    return self.err(format!("enum {full}: symbol \"{s}\" appears twice"))
                }
                other => return self.err(format!("enum {full}: invalid symbol {other}")),
            }
        }
        let i = self.push(Node::Enum {
            name: full.clone(),
            symbols,
        });
        self.names.insert(full, i);
        Ok(i)
    }

    fn fixed(&mut self, o: &serde_json::Map<String, Json>, ns: &str) -> Result<usize, SchemaError> {
        let (full, _) = self.define_name(o, ns)?;
        let size = match o.get("size").and_then(Json::as_u64) {
            Some(s) if s <= u32::MAX as u64 => s as usize,
            _ => {
                return self.err(format!(
                    "fixed {full} needs a \"size\", a non-negative integer"
                ))
            }
        };
        let node = match o.get("logicalType") {
            Some(Json::String(lt)) if lt == "decimal" => match decimal_params(o, Some(size)) {
                Some((precision, scale)) => Node::Decimal {
                    precision,
                    scale,
                    fixed: Some((full.clone(), size)),
                },
                None => Node::Fixed {
                    name: full.clone(),
                    size,
                },
            },
            _ => Node::Fixed {
                name: full.clone(),
                size,
            },
        };
        let i = self.push(node);
        self.names.insert(full, i);
        Ok(i)
    }

    fn union(&mut self, list: &[Json], ns: &str) -> Result<usize, SchemaError> {
        let mut branches = Vec::with_capacity(list.len());
        let mut kinds: Vec<String> = Vec::with_capacity(list.len());
        for b in list {
            let i = self.node(b, ns)?;
            let kind = match &self.nodes[i] {
                Node::Union(_) => return self.err("a union cannot directly contain a union"),
                Node::Record { name, .. } | Node::Enum { name, .. } | Node::Fixed { name, .. } => {
                    name.clone()
                }
                Node::Decimal {
                    fixed: Some((name, _)),
                    ..
                } => name.clone(),
                n => underlying(n).to_string(),
            };
            if kinds.contains(&kind) {
                return self.err(format!("a union contains {kind} twice"));
            }
            kinds.push(kind);
            branches.push(i);
        }
        Ok(self.push(Node::Union(branches)))
    }
}

/// The Avro type under a node (a logical type's primitive), for the union duplicate rule.
fn underlying(n: &Node) -> &'static str {
    match n {
        Node::Date | Node::TimeMillis => "int",
        Node::TimeMicros
        | Node::TimestampMillis
        | Node::TimestampMicros
        | Node::LocalTimestampMillis
        | Node::LocalTimestampMicros => "long",
        Node::Decimal { .. } => "bytes",
        Node::Uuid => "string",
        n => simple_name(n),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*` (the specification's "Names").
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A decimal's precision and scale if they are valid: precision a positive integer, scale an
/// integer from 0 (the default) to precision, and for a fixed of n bytes, precision at most
/// floor(log10(2^(8n-1) - 1)) digits.
fn decimal_params(o: &serde_json::Map<String, Json>, fixed: Option<usize>) -> Option<(u32, u32)> {
    let precision = o.get("precision")?.as_u64().filter(|p| *p > 0)?;
    let scale = match o.get("scale") {
        None => 0,
        Some(s) => s.as_u64()?,
    };
    if scale > precision || precision > u32::MAX as u64 {
        return None;
    }
    if let Some(n) = fixed {
        // 2^k is never a power of ten, so floor(log10(2^k - 1)) = floor(k * log10(2)).
        let bits = (8 * n as u64).checked_sub(1)?;
        let max_digits = (bits as f64 * std::f64::consts::LOG10_2).floor() as u64;
        if precision > max_digits {
            return None;
        }
    }
    Some((precision as u32, scale as u32))
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/// A decoded datum, borrowing from the body and the schema. Unions are transparent: a union's
/// value is its chosen branch's value (`Null` for the null branch).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bytes(&'a [u8]),
    String(&'a str),
    Fixed(&'a [u8]),
    Enum(&'a str),
    Array(Vec<Value<'a>>),
    Map(Vec<(&'a str, Value<'a>)>),
    Record(Vec<(&'a str, Value<'a>)>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Milliseconds after midnight.
    TimeMillis(i32),
    /// Microseconds after midnight.
    TimeMicros(i64),
    /// Milliseconds since 1970-01-01T00:00:00Z.
    TimestampMillis(i64),
    TimestampMicros(i64),
    /// Milliseconds since 1970-01-01T00:00:00 in an unspecified local time zone.
    LocalTimestampMillis(i64),
    LocalTimestampMicros(i64),
    /// The unscaled value as big-endian two's complement; the number is unscaled * 10^-scale.
    Decimal {
        unscaled: &'a [u8],
        precision: u32,
        scale: u32,
    },
    Uuid(&'a str),
}

impl<'a> Value<'a> {
    /// The value at a dotted path of record field names ("user.location"); None if a field
    /// is missing or a record on the way is null.
    pub fn get(&self, path: &str) -> Option<&Value<'a>> {
        let mut v = self;
        for seg in path.split('.') {
            match v {
                Value::Record(fields) => v = &fields.iter().find(|(n, _)| *n == seg)?.1,
                _ => return None,
            }
        }
        Some(v)
    }

    /// The value at field positions from `Schema::field_positions`.
    pub fn at(&self, positions: &[usize]) -> Option<&Value<'a>> {
        let mut v = self;
        for &i in positions {
            match v {
                Value::Record(fields) => v = &fields.get(i)?.1,
                _ => return None,
            }
        }
        Some(v)
    }

    /// The value as JSON: records and maps are objects, bytes and fixed are strings of the
    /// code points U+0000..U+00FF (Avro's JSON rule for bytes), floats are their shortest
    /// decimal form, non-finite floats the strings "NaN", "Infinity", "-Infinity", dates,
    /// times and timestamps numbers of their unit, a decimal a string ("-12.34"), a uuid a string.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Boolean(b) => Json::Bool(*b),
            Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(*i),
            Value::Long(i)
            | Value::TimeMicros(i)
            | Value::TimestampMillis(i)
            | Value::TimestampMicros(i)
            | Value::LocalTimestampMillis(i)
            | Value::LocalTimestampMicros(i) => Json::from(*i),
            Value::Float(f) => float_json(*f as f64, || f.to_string()),
            Value::Double(d) => float_json(*d, || d.to_string()),
            Value::Bytes(b) | Value::Fixed(b) => Json::String(latin1(b)),
            Value::String(s) | Value::Enum(s) | Value::Uuid(s) => Json::String(s.to_string()),
            Value::Array(items) => Json::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(entries) | Value::Record(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
            Value::Decimal {
                unscaled, scale, ..
            } => Json::String(decimal_string(unscaled, *scale)),
        }
    }
}

/// A float as a JSON number of its shortest decimal form (`shortest` prints it), or a string
/// for NaN and the infinities, which JSON numbers cannot hold.
fn float_json(f: f64, shortest: impl Fn() -> String) -> Json {
    if f.is_nan() {
        Json::String("NaN".into())
    } else if f.is_infinite() {
        Json::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        let d: f64 = shortest().parse().unwrap_or(f);
        serde_json::Number::from_f64(d).map_or(Json::Null, Json::Number)
    }
}

/// Bytes as the string of the code points with those numbers (ISO-8859-1).
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

/// The decimal number unscaled * 10^-scale as a string, from big-endian two's complement.
pub fn decimal_string(unscaled: &[u8], scale: u32) -> String {
    let negative = unscaled.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = unscaled.to_vec();
    if negative {
        // Two's complement negation: invert, add one.
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    let mut digits = magnitude_digits(mag);
    let scale = scale as usize;
    if digits.len() <= scale {
        digits = format!("{}{digits}", "0".repeat(scale + 1 - digits.len()));
    }
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if negative { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// The decimal digits of a big-endian unsigned magnitude ("0" for zero).
fn magnitude_digits(mut mag: Vec<u8>) -> String {
    const CHUNK: u64 = 1_000_000_000;
    let mut chunks: Vec<u32> = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem: u64 = 0;
        for b in mag.iter_mut() {
            let cur = rem * 256 + *b as u64;
            *b = (cur / CHUNK) as u8;
            rem = cur % CHUNK;
        }
        chunks.push(rem as u32);
    }
    match chunks.split_last() {
        None => "0".to_string(),
        Some((top, rest)) => {
            let mut s = top.to_string();
            for c in rest.iter().rev() {
                s.push_str(&format!("{c:09}"));
            }
            s
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// What was wrong with a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// A value needs more bytes than the body has left.
    Truncated {
        needed: u64,
        left: usize,
    },
    /// The body ends inside a varint.
    TruncatedVarint,
    /// A varint has more significant bits than its type (int: 32, long: 64).
    VarintOverflow {
        int: bool,
    },
    NegativeLength(i64),
    BadUnionIndex {
        index: i64,
        branches: usize,
    },
    EnumIndex {
        index: i64,
        symbols: usize,
    },
    /// The byte at the error's offset starts no valid UTF-8 sequence.
    InvalidUtf8,
    InvalidBoolean(u8),
    InvalidUuid,
    TooDeep,
    TooManyItems(u64),
    /// The datum ended with this many bytes of the body left over.
    TrailingBytes(usize),
}

/// A body that does not decode: what, at which byte offset of the body, in which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub offset: usize,
    /// Dotted field path, with `[i]` for array items and `["key"]` for map values; empty at
    /// the top level.
    pub path: String,
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind as K;
        match self {
            K::Truncated { needed, left } => {
                write!(f, "truncated: needs {needed} more bytes, {left} left")
            }
            K::TruncatedVarint => write!(f, "truncated: the body ends inside a varint"),
            K::VarintOverflow { int: true } => write!(f, "varint does not fit a 32-bit int"),
            K::VarintOverflow { int: false } => write!(f, "varint does not fit a 64-bit long"),
            K::NegativeLength(n) => write!(f, "negative length {n}"),
            K::BadUnionIndex { index, branches } => write!(
                f,
                "union branch index {index} out of range (the union has {branches} branches)"
            ),
            K::EnumIndex { index, symbols } => write!(
                f,
                "enum index {index} out of range (the enum has {symbols} symbols)"
            ),
            K::InvalidUtf8 => write!(f, "invalid UTF-8 in a string"),
            K::InvalidBoolean(b) => write!(f, "boolean byte 0x{b:02x} is neither 0 nor 1"),
            K::InvalidUuid => write!(f, "uuid string is not 8-4-4-4-12 hex digits"),
            K::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            K::TooManyItems(n) => write!(
                f,
                "array of {n} zero-size items exceeds the limit of {MAX_ZERO_WIDTH_ITEMS}"
            ),
            K::TrailingBytes(n) => write!(f, "{n} trailing bytes after the datum"),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Avro: {} at byte {}", self.kind, self.offset)?;
        if !self.path.is_empty() {
            write!(f, " (field {})", self.path)?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// Puts a field name (or `[i]`) in front of the path, as the error leaves a record.
    fn within(mut self, seg: &str) -> Self {
        if self.path.is_empty() || self.path.starts_with('[') {
            self.path.insert_str(0, seg);
        } else {
            self.path.insert(0, '.');
            self.path.insert_str(0, seg);
        }
        self
    }
}

/// Decodes one datum that must take exactly all of `body`.
pub fn decode<'a>(schema: &'a Schema, body: &'a [u8]) -> Result<Value<'a>, DecodeError> {
    let s: &'a Inner = &schema.inner;
    let mut d = Decoder {
        s,
        buf: body,
        pos: 0,
        depth: 0,
    };
    let v = d.value(s.root)?;
    if d.pos != body.len() {
        return Err(d.err(d.pos, DecodeErrorKind::TrailingBytes(body.len() - d.pos)));
    }
    Ok(v)
}

struct Decoder<'a> {
    s: &'a Inner,
    buf: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Decoder<'a> {
    fn err(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            kind,
            offset,
            path: String::new(),
        }
    }

    fn value(&mut self, n: usize) -> Result<Value<'a>, DecodeError> {
        let s = self.s;
        Ok(match &s.nodes[n] {
            Node::Null => Value::Null,
            Node::Boolean => match self.take(1)?[0] {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                b => {
                    return Err(self.err(self.pos - 1, DecodeErrorKind::InvalidBoolean(b)));
                }
            },
            Node::Int => Value::Int(self.int()?),
            Node::Long => Value::Long(self.long()?),
            Node::Float => Value::Float(f32::from_le_bytes(self.array4()?)),
            Node::Double => Value::Double(f64::from_le_bytes(self.array8()?)),
            Node::Bytes => Value::Bytes(self.bytes()?),
            Node::String => Value::String(self.string()?),
            Node::Fixed { size, .. } => Value::Fixed(self.take(*size)?),
            Node::Enum { symbols, .. } => {
                let at = self.pos;
                let i = self.long()?;
                match usize::try_from(i).ok().and_then(|i| symbols.get(i)) {
                    Some(sym) => Value::Enum(sym),
                    None => {
                        let kind = DecodeErrorKind::EnumIndex {
                            index: i,
                            symbols: symbols.len(),
                        };
                        return Err(self.err(at, kind));
                    }
                }
            }
            Node::Record { fields, .. } => self.nested(|d| d.record(fields))?,
            Node::Array(item) => self.nested(|d| d.array(*item))?,
            Node::Map(v) => self.nested(|d| d.map(*v))?,
            Node::Union(branches) => self.nested(|d| d.union(branches))?,
            Node::Date => Value::Date(self.int()?),
            Node::TimeMillis => Value::TimeMillis(self.int()?),
            Node::TimeMicros => Value::TimeMicros(self.long()?),
            Node::TimestampMillis => Value::TimestampMillis(self.long()?),
            Node::TimestampMicros => Value::TimestampMicros(self.long()?),
            Node::LocalTimestampMillis => Value::LocalTimestampMillis(self.long()?),
            Node::LocalTimestampMicros => Value::LocalTimestampMicros(self.long()?),
            Node::Decimal {
                precision,
                scale,
                fixed,
            } => Value::Decimal {
                unscaled: match fixed {
                    Some((_, size)) => self.take(*size)?,
                    None => self.bytes()?,
                },
                precision: *precision,
                scale: *scale,
            },
            Node::Uuid => {
                let at = self.pos;
                let u = self.string()?;
                if !is_uuid(u) {
                    return Err(self.err(at, DecodeErrorKind::InvalidUuid));
                }
                Value::Uuid(u)
            }
        })
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Value<'a>, DecodeError>,
    ) -> Result<Value<'a>, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err(self.pos, DecodeErrorKind::TooDeep));
        }
        self.depth += 1;
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn record(&mut self, fields: &'a [Field]) -> Result<Value<'a>, DecodeError> {
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            match self.value(f.node) {
                Ok(v) => out.push((f.name.as_str(), v)),
                Err(e) => return Err(e.within(&f.name)),
            }
        }
        Ok(Value::Record(out))
    }

    fn union(&mut self, branches: &[usize]) -> Result<Value<'a>, DecodeError> {
        let at = self.pos;
        let i = self.long()?;
        match usize::try_from(i).ok().and_then(|i| branches.get(i)) {
            Some(&b) => self.value(b),
            None => Err(self.err(
                at,
                DecodeErrorKind::BadUnionIndex {
                    index: i,
                    branches: branches.len(),
                },
            )),
        }
    }

    fn array(&mut self, item: usize) -> Result<Value<'a>, DecodeError> {
        let min = self.s.min_size[item];
        let mut out = Vec::new();
        loop {
            let n = self.block_count(min, out.len() as u64)?;
            if n == 0 {
                return Ok(Value::Array(out));
            }
            out.reserve(n);
            for _ in 0..n {
                match self.value(item) {
                    Ok(v) => out.push(v),
                    Err(e) => return Err(e.within(&format!("[{}]", out.len()))),
                }
            }
        }
    }

    fn map(&mut self, values: usize) -> Result<Value<'a>, DecodeError> {
        // A key takes at least its length byte.
        let min = self.s.min_size[values].saturating_add(1);
        let mut out = Vec::new();
        loop {
            let n = self.block_count(min, out.len() as u64)?;
            if n == 0 {
                return Ok(Value::Map(out));
            }
            out.reserve(n);
            for _ in 0..n {
                let key = match self.string() {
                    Ok(k) => k,
                    Err(e) => return Err(e.within(&format!("[{}]", out.len()))),
                };
                match self.value(values) {
                    Ok(v) => out.push((key, v)),
                    Err(e) => return Err(e.within(&format!("[{key:?}]"))),
                }
            }
        }
    }

    /// The item count of the next block of an array or map (0 at the end): a negative count is
    /// followed by the block's size in bytes, which is read and not needed. A count the rest of
    /// the body cannot hold is refused before anything is allocated for it.
    fn block_count(&mut self, min_item: u64, so_far: u64) -> Result<usize, DecodeError> {
        let at = self.pos;
        let raw = self.long()?;
        let n = if raw < 0 {
            let size_at = self.pos;
            let size = self.long()?;
            if size < 0 {
                return Err(self.err(size_at, DecodeErrorKind::NegativeLength(size)));
            }
            raw.unsigned_abs()
        } else {
            raw as u64
        };
        let left = self.buf.len() - self.pos;
        if min_item == 0 {
            if so_far.saturating_add(n) > MAX_ZERO_WIDTH_ITEMS {
                return Err(self.err(at, DecodeErrorKind::TooManyItems(so_far.saturating_add(n))));
            }
        } else if n.saturating_mul(min_item) > left as u64 {
            let needed = n.saturating_mul(min_item);
            return Err(self.err(at, DecodeErrorKind::Truncated { needed, left }));
        }
        Ok(n as usize)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            let kind = DecodeErrorKind::Truncated {
                needed: n as u64,
                left,
            };
            return Err(self.err(self.pos, kind));
        }
        let buf: &'a [u8] = self.buf;
        let b = &buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn array4(&mut self) -> Result<[u8; 4], DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(a)
    }

    fn array8(&mut self) -> Result<[u8; 8], DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(a)
    }

    /// A zig-zag varint of at most 64 significant bits.
    #[inline]
    fn long(&mut self) -> Result<i64, DecodeError> {
        let acc = self.varint(63, 0x01, false)?;
        Ok((acc >> 1) as i64 ^ -((acc & 1) as i64))
    }

    /// A zig-zag varint of at most 32 significant bits.
    #[inline]
    fn int(&mut self) -> Result<i32, DecodeError> {
        let acc = self.varint(28, 0x0f, true)? as u32;
        Ok((acc >> 1) as i32 ^ -((acc & 1) as i32))
    }

    /// The raw bits of a varint whose byte at `last_shift` may be at most `max_last` (which
    /// ends it): more is an overflow of an int or a long.
    #[inline]
    fn varint(&mut self, last_shift: u32, max_last: u8, int: bool) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut acc: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(start, DecodeErrorKind::TruncatedVarint));
            };
            self.pos += 1;
            if shift == last_shift && b > max_last {
                return Err(self.err(start, DecodeErrorKind::VarintOverflow { int }));
            }
            acc |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(acc);
            }
            shift += 7;
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.long()?;
        if n < 0 {
            return Err(self.err(at, DecodeErrorKind::NegativeLength(n)));
        }
        let left = self.buf.len() - self.pos;
        if n as u64 > left as u64 {
            let kind = DecodeErrorKind::Truncated {
                needed: n as u64,
                left,
            };
            return Err(self.err(self.pos, kind));
        }
        self.take(n as usize)
    }

    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.bytes()?;
        match simdutf8::basic::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(_) => {
                let bad = std::str::from_utf8(b).err().map_or(0, |e| e.valid_up_to());
                let at = self.pos - b.len() + bad;
                Err(self.err(at, DecodeErrorKind::InvalidUtf8))
            }
        }
    }
}

/// RFC 4122's text form: 8-4-4-4-12 hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

// ---------------------------------------------------------------------------------------------
// Encoding (from our JSON mapping)
// ---------------------------------------------------------------------------------------------

/// A JSON value that does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    /// Dotted field path, as `DecodeError::path`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "Avro encode: {}", self.message)
        } else {
            write!(f, "Avro encode: {} (field {})", self.message, self.path)
        }
    }
}

impl std::error::Error for EncodeError {}

impl EncodeError {
    fn within(mut self, seg: &str) -> Self {
        if self.path.is_empty() || self.path.starts_with('[') {
            self.path.insert_str(0, seg);
        } else {
            self.path.insert(0, '.');
            self.path.insert_str(0, seg);
        }
        self
    }
}

/// Encodes a JSON value as an Avro body. The mapping is `Value::to_json`'s, read back: objects
/// for records (a missing field takes its declared default) and maps, strings of U+0000..U+00FF
/// for bytes and fixed, numbers (or "NaN", "Infinity", "-Infinity") for floats, numbers for
/// dates, times and timestamps (an RFC 3339 string is also taken for a timestamp, "YYYY-MM-DD"
/// for a date), a string or number for a decimal. A union takes null if the value is null and
/// the union has a null branch, else the first branch the value fits.
pub fn encode(schema: &Schema, v: &Json) -> Result<Vec<u8>, EncodeError> {
    let mut e = Encoder {
        s: &schema.inner,
        out: Vec::new(),
        depth: 0,
    };
    e.value(schema.inner.root, v)?;
    Ok(e.out)
}

struct Encoder<'s> {
    s: &'s Inner,
    out: Vec<u8>,
    depth: usize,
}

fn mismatch(expected: &str, got: &Json) -> EncodeError {
    let mut shown = got.to_string();
    if shown.len() > 60 {
        let mut cut = 57;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push_str("...");
    }
    EncodeError {
        path: String::new(),
        message: format!("expected {expected}, got {shown}"),
    }
}

fn plain(message: String) -> EncodeError {
    EncodeError {
        path: String::new(),
        message,
    }
}

impl Encoder<'_> {
    fn value(&mut self, n: usize, j: &Json) -> Result<(), EncodeError> {
        let s = self.s;
        match &s.nodes[n] {
            Node::Record { name, fields } => self.nested(|e| e.record(name, fields, j)),
            Node::Array(item) => self.nested(|e| e.array(*item, j)),
            Node::Map(v) => self.nested(|e| e.map(*v, j)),
            Node::Union(branches) => self.nested(|e| e.union(branches, j)),
            node @ (Node::Null
            | Node::Boolean
            | Node::Int
            | Node::Long
            | Node::Float
            | Node::Double
            | Node::Bytes
            | Node::String) => self.primitive(node, j),
            node => self.annotated(node, j),
        }
    }

    fn primitive(&mut self, node: &Node, j: &Json) -> Result<(), EncodeError> {
        match (node, j) {
            (Node::Null, Json::Null) => {}
            (Node::Boolean, Json::Bool(b)) => self.out.push(*b as u8),
            (Node::Int, _) => {
                let i = j.as_i64().and_then(|i| i32::try_from(i).ok());
                let i = i.ok_or_else(|| mismatch("int (32-bit)", j))?;
                write_long(&mut self.out, i as i64);
            }
            (Node::Long, _) => write_long(
                &mut self.out,
                j.as_i64().ok_or_else(|| mismatch("long", j))?,
            ),
            (Node::Float, _) => {
                let f = float(j).ok_or_else(|| mismatch("a float", j))?;
                let g = f as f32;
                if f.is_finite() && !g.is_finite() {
                    return Err(plain(format!("{j} is out of the range of a float")));
                }
                self.out.extend_from_slice(&g.to_le_bytes());
            }
            (Node::Double, _) => {
                let f = float(j).ok_or_else(|| mismatch("a double", j))?;
                self.out.extend_from_slice(&f.to_le_bytes());
            }
            (Node::Bytes, _) => {
                let b = latin1_bytes(j)
                    .ok_or_else(|| mismatch("bytes (a string of U+0000..U+00FF)", j))?;
                write_long(&mut self.out, b.len() as i64);
                self.out.extend_from_slice(&b);
            }
            (Node::String, Json::String(t)) => write_string(&mut self.out, t),
            (Node::String, _) => return Err(mismatch("a string", j)),
            (Node::Boolean, _) => return Err(mismatch("a boolean", j)),
            (n, _) => return Err(mismatch(simple_name(n), j)),
        }
        Ok(())
    }

    /// Named types other than records, and logical types.
    fn annotated(&mut self, node: &Node, j: &Json) -> Result<(), EncodeError> {
        match node {
            Node::TimeMillis => {
                let i = j.as_i64().and_then(|i| i32::try_from(i).ok());
                let i = i.ok_or_else(|| mismatch("time-millis (32-bit)", j))?;
                write_long(&mut self.out, i as i64);
            }
            Node::TimeMicros => {
                let i = j.as_i64().ok_or_else(|| mismatch("time-micros", j))?;
                write_long(&mut self.out, i);
            }
            Node::Date => {
                let days =
                    date_days(j).ok_or_else(|| mismatch("a date (days or YYYY-MM-DD)", j))?;
                write_long(&mut self.out, days as i64);
            }
            Node::TimestampMillis
            | Node::TimestampMicros
            | Node::LocalTimestampMillis
            | Node::LocalTimestampMicros => {
                let micros = matches!(node, Node::TimestampMicros | Node::LocalTimestampMicros);
                let t = timestamp(j, micros).ok_or_else(|| {
                    mismatch(&format!("{} (a number or RFC 3339)", simple_name(node)), j)
                })?;
                write_long(&mut self.out, t);
            }
            Node::Fixed { name, size } => {
                let b = latin1_bytes(j)
                    .filter(|b| b.len() == *size)
                    .ok_or_else(|| {
                        mismatch(&format!("fixed {name}: {size} bytes as U+0000..U+00FF"), j)
                    })?;
                self.out.extend_from_slice(&b);
            }
            Node::Uuid => match j {
                Json::String(t) if is_uuid(t) => write_string(&mut self.out, t),
                _ => return Err(mismatch("a uuid string (8-4-4-4-12 hex digits)", j)),
            },
            Node::Enum { name, symbols } => {
                let i = j
                    .as_str()
                    .and_then(|t| symbols.iter().position(|s| s == t))
                    .ok_or_else(|| mismatch(&format!("a symbol of enum {name}"), j))?;
                write_long(&mut self.out, i as i64);
            }
            Node::Decimal {
                precision,
                scale,
                fixed,
            } => {
                let size = fixed.as_ref().map(|(_, s)| *s);
                let b = decimal_bytes(j, *precision, *scale, size).map_err(plain)?;
                if size.is_none() {
                    write_long(&mut self.out, b.len() as i64);
                }
                self.out.extend_from_slice(&b);
            }
            n => return Err(mismatch(simple_name(n), j)),
        }
        Ok(())
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(plain(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn record(&mut self, name: &str, fields: &[Field], j: &Json) -> Result<(), EncodeError> {
        let Json::Object(o) = j else {
            return Err(mismatch(&format!("record {name} (an object)"), j));
        };
        if let Some(k) = o.keys().find(|k| !fields.iter().any(|f| &f.name == *k)) {
            return Err(plain(format!("record {name} has no field \"{k}\"")));
        }
        for f in fields {
            let v = match (o.get(&f.name), &f.default) {
                (Some(v), _) | (None, Some(v)) => v,
                (None, None) => {
                    return Err(plain(format!(
                        "missing field \"{}\" (it has no default)",
                        f.name
                    )))
                }
            };
            self.value(f.node, v).map_err(|e| e.within(&f.name))?;
        }
        Ok(())
    }

    fn array(&mut self, item: usize, j: &Json) -> Result<(), EncodeError> {
        let Json::Array(items) = j else {
            return Err(mismatch("an array", j));
        };
        if !items.is_empty() {
            write_long(&mut self.out, items.len() as i64);
            for (i, v) in items.iter().enumerate() {
                self.value(item, v)
                    .map_err(|e| e.within(&format!("[{i}]")))?;
            }
        }
        self.out.push(0);
        Ok(())
    }

    fn map(&mut self, values: usize, j: &Json) -> Result<(), EncodeError> {
        let Json::Object(o) = j else {
            return Err(mismatch("a map (an object)", j));
        };
        if !o.is_empty() {
            write_long(&mut self.out, o.len() as i64);
            for (k, v) in o {
                write_long(&mut self.out, k.len() as i64);
                self.out.extend_from_slice(k.as_bytes());
                self.value(values, v)
                    .map_err(|e| e.within(&format!("[{k:?}]")))?;
            }
        }
        self.out.push(0);
        Ok(())
    }

    fn union(&mut self, branches: &[usize], j: &Json) -> Result<(), EncodeError> {
        let s = self.s;
        let null = branches.iter().position(|&b| b == NULL);
        if let (Json::Null, Some(i)) = (j, null) {
            write_long(&mut self.out, i as i64);
            return Ok(());
        }
        let candidates: Vec<(usize, usize)> = branches
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, b)| b != NULL)
            .collect();
        let mark = self.out.len();
        let mut last = None;
        for &(i, b) in &candidates {
            write_long(&mut self.out, i as i64);
            match self.value(b, j) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.out.truncate(mark);
                    last = Some(e);
                }
            }
        }
        match (candidates.len(), last) {
            // One branch besides null: its own error says best what is wrong.
            (1, Some(e)) => Err(e),
            _ => {
                let names: Vec<String> = branches.iter().map(|&b| s.describe(b)).collect();
                Err(mismatch(
                    &format!(
                        "a value of one of the branches of union [{}]",
                        names.join(", ")
                    ),
                    j,
                ))
            }
        }
    }
}

/// Appends a long as a zig-zag varint.
pub fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends a string (length, then UTF-8 bytes).
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    write_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn float(j: &Json) -> Option<f64> {
    match j {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn latin1_bytes(j: &Json) -> Option<Vec<u8>> {
    let s = j.as_str()?;
    s.chars().map(|c| u8::try_from(c as u32).ok()).collect()
}

fn date_days(j: &Json) -> Option<i32> {
    match j {
        Json::Number(n) => n.as_i64().and_then(|i| i32::try_from(i).ok()),
        Json::String(s) => {
            let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
            i32::try_from((d - epoch).num_days()).ok()
        }
        _ => None,
    }
}

fn timestamp(j: &Json, micros: bool) -> Option<i64> {
    match j {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => {
            let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
            if micros {
                t.timestamp_micros().into()
            } else {
                t.timestamp_millis().into()
            }
        }
        _ => None,
    }
}

/// The unscaled value of a decimal given as a string ("-12.34") or number, as minimal
/// big-endian two's complement, or sign-extended to `size` bytes for a fixed.
fn decimal_bytes(
    j: &Json,
    precision: u32,
    scale: u32,
    size: Option<usize>,
) -> Result<Vec<u8>, String> {
    let text = match j {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => {
            return Err(format!(
                "expected a decimal (a string like \"-12.34\"), got {j}"
            ))
        }
    };
    let bad = || format!("\"{text}\" is not a decimal number like -12.34");
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(&text)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let scale = scale as usize;
    let kept = frac.trim_end_matches('0');
    if kept.len() > scale {
        return Err(format!(
            "{text} has more than {scale} digits after the point (the decimal's scale)"
        ));
    }
    let mut digits: String = int.to_string();
    digits.push_str(frac.get(..scale).unwrap_or(frac));
    digits.extend(std::iter::repeat_n('0', scale.saturating_sub(frac.len())));
    let digits = digits.trim_start_matches('0');
    if digits.len() > precision as usize {
        return Err(format!(
            "{text} has more than {precision} digits (the decimal's precision)"
        ));
    }
    let mut mag = magnitude_bytes(digits);
    if negative && mag.iter().any(|&b| b != 0) {
        negate(&mut mag);
    }
    match size {
        None => Ok(mag),
        Some(size) if mag.len() <= size => {
            let fill = if mag[0] & 0x80 != 0 { 0xff } else { 0 };
            let mut out = vec![fill; size - mag.len()];
            out.extend_from_slice(&mag);
            Ok(out)
        }
        Some(size) => Err(format!("{text} does not fit a fixed of {size} bytes")),
    }
}

/// The decimal digits as big-endian bytes with a leading 0 bit (room for the sign): at least one
/// byte, no redundant leading zero byte.
fn magnitude_bytes(digits: &str) -> Vec<u8> {
    // Little-endian base-256 limbs while multiplying.
    let mut le: Vec<u8> = vec![0];
    for d in digits.bytes() {
        let mut carry = (d - b'0') as u32;
        for limb in le.iter_mut() {
            let v = *limb as u32 * 10 + carry;
            *limb = v as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            le.push(carry as u8);
        }
    }
    if le.last().is_some_and(|b| b & 0x80 != 0) {
        le.push(0);
    }
    le.reverse();
    le
}

/// Two's complement negation in place, then dropping 0xff bytes that only repeat the sign.
fn negate(be: &mut Vec<u8>) {
    for b in be.iter_mut() {
        *b = !*b;
    }
    for b in be.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    while be.len() > 1 && be[0] == 0xff && be[1] & 0x80 != 0 {
        be.remove(0);
    }
}

// ---------------------------------------------------------------------------------------------
// Confluent framing
// ---------------------------------------------------------------------------------------------

/// A message that is not in the Confluent wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    WrongMagic(u8),
    Short(usize),
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::WrongMagic(b) => write!(
                f,
                "wrong magic byte 0x{b:02x} (a Confluent-framed Avro message starts with 0x00)"
            ),
            FramingError::Short(n) => write!(
                f,
                "message of {n} bytes is shorter than the 5-byte header (magic byte 0, schema id)"
            ),
        }
    }
}

impl std::error::Error for FramingError {}

/// Splits a Confluent-framed message into its schema id and Avro body.
pub fn confluent_split(msg: &[u8]) -> Result<(u32, &[u8]), FramingError> {
    match msg {
        [m, ..] if *m != 0 => Err(FramingError::WrongMagic(*m)),
        [0, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => Err(FramingError::Short(msg.len())),
    }
}

/// Frames an Avro body: magic byte 0, the schema id big-endian, the body.
pub fn confluent_frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests;
