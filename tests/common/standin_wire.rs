//! The stand-in behind a PostgreSQL wire-protocol server (protocol 3.0,
//! https://www.postgresql.org/docs/current/protocol-message-formats.html), so that the real
//! binary reaches it: `warehouse.kind = "redshift"` with `warehouse.url` (or
//! BATCHLAYER_WAREHOUSE_URL) the URL [`StandInCluster::serve`] returns. Each connection is a
//! session of the cluster ([`StandInCluster::session`]), as in the tests that run the dialect
//! in-process; the server only carries messages:
//!
//! * a simple query (`Q`, what `batch_execute` and `simple_query` send) goes where
//!   [`SqlSession::execute`] would send it: COPY, the transaction statements and Spectrum's to
//!   the stand-in's `statement`, anything else rewritten by the stand-in and run on PostgreSQL,
//!   its rows sent back as text;
//! * the extended protocol (`P`/`B`/`D`/`E`/`C`/`S`, what `query_one` sends) prepares the
//!   statement on the session's PostgreSQL connection, rewritten as `query_i64` rewrites it;
//!   a statement with parameters goes as written, as `table_exists` and the client's own type
//!   look-ups go to PostgreSQL in-process. Values are carried in binary as the client asks
//!   (the postgres crate asks for binary results, and only that is served);
//! * an error is PostgreSQL's (its SQLSTATE, message and detail) when PostgreSQL raised it,
//!   else the stand-in's refusal as `XX000` with the whole message.
//!
//! Not served: TLS (an SSLRequest is declined: connect with `sslmode=disable` or `prefer`),
//! authentication (any user is let in), COPY FROM STDIN/TO STDOUT from the client, cancel
//! requests, portals run in parts.

use super::{StandIn, StandInCluster};
use anyhow::{anyhow, bail, Result};
use batchlayer::warehouse::session::SqlError;
use batchlayer::warehouse::Names;
use postgres::types::{Format, FromSql, IsNull, ToSql, Type};
use postgres::SimpleQueryMessage;
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};

/// Protocol 3.0's startup code, and the requests that come in its place.
const PROTOCOL_3: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

impl StandInCluster {
    /// Serves sessions of this cluster (with these table names) on 127.0.0.1 from a thread of
    /// its own, for the rest of the test process; returns the URL to give the binary.
    pub fn serve(&self, names: Names) -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding the stand-in's server");
        let port = l.local_addr().expect("its address").port();
        let cluster = self.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                let (cluster, names) = (cluster.clone(), names.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve_connection(conn, &cluster, names) {
                        eprintln!("the stand-in's server dropped a connection: {e:#}");
                    }
                });
            }
        });
        format!("postgresql://standin@127.0.0.1:{port}/standin?sslmode=disable")
    }
}

/// A value the client bound to a parameter, as it sent it.
#[derive(Debug)]
pub struct RawParam {
    value: Option<Vec<u8>>,
    text: bool,
}

impl ToSql for RawParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.value {
            None => Ok(IsNull::Yes),
            Some(v) => {
                out.extend_from_slice(v);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        if self.text {
            Format::Text
        } else {
            Format::Binary
        }
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

/// A result value as PostgreSQL sent it (binary).
struct RawValue(Vec<u8>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl StandIn {
    /// A simple-protocol query: what [`SqlSession::execute`] carries out itself goes to
    /// `statement` (no rows), anything else is rewritten and run on PostgreSQL, its messages
    /// returned.
    fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>> {
        let lower = sql.trim_start().to_lowercase();
        let word = sql.trim().to_ascii_uppercase();
        if lower.starts_with("copy")
            || super::spectrum::is_spectrum(sql)
            || ["BEGIN", "COMMIT", "END", "ROLLBACK"].contains(&word.as_str())
        {
            self.statement(sql)?;
            return Ok(Vec::new());
        }
        let s = self.prepare(sql)?;
        Ok(self.pg.client.simple_query(&s)?)
    }

    /// A statement of the extended protocol, prepared on the session's PostgreSQL connection.
    fn prepare_extended(&mut self, sql: &str, oids: &[u32]) -> Result<postgres::Statement> {
        let s = if sql.contains("$1") {
            sql.to_string()
        } else {
            self.prepare(sql)?
        };
        let mut types: Vec<Type> = oids.iter().filter_map(|o| Type::from_oid(*o)).collect();
        if types.len() != oids.len() {
            // Left to PostgreSQL to infer.
            types.clear();
        }
        Ok(self.pg.client.prepare_typed(&s, &types)?)
    }

    fn execute_extended(
        &mut self,
        st: &postgres::Statement,
        params: &[RawParam],
    ) -> Result<Vec<postgres::Row>> {
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(self.pg.client.query(st, &refs)?)
    }
}

/// A bound statement, waiting for Execute.
struct Portal {
    statement: postgres::Statement,
    params: Vec<RawParam>,
}

/// One connection's state.
struct Conn {
    s: StandIn,
    statements: HashMap<String, postgres::Statement>,
    portals: HashMap<String, Portal>,
    /// An extended-protocol message failed: the rest up to Sync is skipped.
    failed: bool,
    /// ReadyForQuery's status: idle, in a transaction block, or in a failed one.
    status: u8,
}

fn read_i32(r: &mut impl Read) -> std::io::Result<i32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(i32::from_be_bytes(b))
}

/// A message's body, read field by field.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("message shorter than its fields");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn cstr(&mut self) -> Result<String> {
        let at = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| anyhow!("string without its NUL"))?;
        let s = String::from_utf8(self.0[..at].to_vec())?;
        self.0 = &self.0[at + 1..];
        Ok(s)
    }
}

fn send(w: &mut impl Write, tag: u8, body: &[u8]) -> std::io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(body.len() as i32 + 4).to_be_bytes())?;
    w.write_all(body)
}

fn cstr_into(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// ErrorResponse: PostgreSQL's own error when one is in the chain, else the stand-in's.
fn send_error(w: &mut impl Write, e: &anyhow::Error) -> std::io::Result<()> {
    let db = e.chain().find_map(|c| {
        c.downcast_ref::<SqlError>()
            .and_then(|s| s.0.as_db_error())
            .or_else(|| {
                c.downcast_ref::<postgres::Error>()
                    .and_then(|p| p.as_db_error())
            })
    });
    let (code, message, detail) = match db {
        Some(d) => (
            d.code().code().to_string(),
            d.message().to_string(),
            d.detail().map(str::to_string),
        ),
        None => ("XX000".to_string(), format!("{e:#}"), None),
    };
    let mut b = Vec::new();
    for (field, value) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', code.as_str()),
        (b'M', message.as_str()),
    ] {
        b.push(field);
        cstr_into(&mut b, value);
    }
    if let Some(d) = &detail {
        b.push(b'D');
        cstr_into(&mut b, d);
    }
    b.push(0);
    send(w, b'E', &b)
}

/// RowDescription: each column's name, table, column number, type, size, modifier, format.
fn row_description(cols: &[(String, u32, i16, u32, i32)], format: i16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(cols.len() as i16).to_be_bytes());
    for (name, table, attnum, oid, typmod) in cols {
        cstr_into(&mut b, name);
        b.extend_from_slice(&table.to_be_bytes());
        b.extend_from_slice(&attnum.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&typmod.to_be_bytes());
        b.extend_from_slice(&format.to_be_bytes());
    }
    b
}

fn columns_of(st: &postgres::Statement) -> Vec<(String, u32, i16, u32, i32)> {
    st.columns()
        .iter()
        .map(|c| {
            (
                c.name().to_string(),
                c.table_oid().unwrap_or(0),
                c.column_id().unwrap_or(0),
                c.type_().oid(),
                c.type_modifier(),
            )
        })
        .collect()
}

fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b
}

fn command_complete(w: &mut impl Write, tag: &str) -> std::io::Result<()> {
    let mut b = Vec::new();
    cstr_into(&mut b, tag);
    send(w, b'C', &b)
}

fn serve_connection(conn: TcpStream, cluster: &StandInCluster, names: Names) -> Result<()> {
    let _ = conn.set_nodelay(true);
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = BufWriter::new(conn);
    // The startup packet, after any TLS or GSS request (declined).
    loop {
        let len = read_i32(&mut r)?;
        if !(8..=10_000).contains(&len) {
            bail!("a startup packet of {len} bytes");
        }
        let mut body = vec![0u8; len as usize - 4];
        r.read_exact(&mut body)?;
        match i32::from_be_bytes(body[..4].try_into()?) {
            SSL_REQUEST | GSSENC_REQUEST => {
                w.write_all(b"N")?;
                w.flush()?;
            }
            PROTOCOL_3 => break,
            other => bail!("startup code {other} is not served"),
        }
    }
    let s = match cluster.session(names) {
        Ok(s) => s,
        Err(e) => {
            send_error(&mut w, &e)?;
            w.flush()?;
            return Ok(());
        }
    };
    send(&mut w, b'R', &0i32.to_be_bytes())?;
    for (k, v) in [
        // What a Redshift cluster reports.
        ("server_version", "8.0.2"),
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "off"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
    ] {
        let mut b = Vec::new();
        cstr_into(&mut b, k);
        cstr_into(&mut b, v);
        send(&mut w, b'S', &b)?;
    }
    send(
        &mut w,
        b'K',
        &[1i32.to_be_bytes(), 0i32.to_be_bytes()].concat(),
    )?;
    send(&mut w, b'Z', b"I")?;
    w.flush()?;
    let mut c = Conn {
        s,
        statements: HashMap::new(),
        portals: HashMap::new(),
        failed: false,
        status: b'I',
    };
    loop {
        let mut tag = [0u8; 1];
        if r.read_exact(&mut tag).is_err() {
            return Ok(());
        }
        let len = read_i32(&mut r)?;
        if len < 4 {
            bail!("a message of {len} bytes");
        }
        let mut body = vec![0u8; len as usize - 4];
        r.read_exact(&mut body)?;
        match tag[0] {
            b'X' => return Ok(()),
            b'S' => {
                c.failed = false;
                c.portals.remove("");
                send(&mut w, b'Z', &[c.status])?;
                w.flush()?;
            }
            b'H' => w.flush()?,
            b'Q' => {
                c.failed = false;
                let sql = Body(&body).cstr()?;
                if let Err(e) = c.simple(&mut w, &sql) {
                    send_error(&mut w, &e)?;
                    if c.status == b'T' {
                        c.status = b'E';
                    }
                }
                send(&mut w, b'Z', &[c.status])?;
                w.flush()?;
            }
            _ if c.failed => {}
            t => {
                if let Err(e) = c.extended(&mut w, t, &body) {
                    send_error(&mut w, &e)?;
                    c.failed = true;
                    if c.status == b'T' {
                        c.status = b'E';
                    }
                }
            }
        }
    }
}

impl Conn {
    fn simple(&mut self, w: &mut impl Write, sql: &str) -> Result<()> {
        if sql.trim().trim_end_matches(';').trim().is_empty() {
            send(w, b'I', &[])?;
            return Ok(());
        }
        let word = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(';')
            .to_ascii_uppercase();
        let msgs = self.s.simple_query(sql)?;
        match word.as_str() {
            "BEGIN" | "START" => self.status = b'T',
            "COMMIT" | "END" | "ROLLBACK" | "ABORT" => self.status = b'I',
            _ => {}
        }
        let mut completed = false;
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    let cols: Vec<(String, u32, i16, u32, i32)> = cols
                        .iter()
                        .map(|c| (c.name().to_string(), 0, 0, Type::TEXT.oid(), -1))
                        .collect();
                    send(w, b'T', &row_description(&cols, 0))?;
                }
                SimpleQueryMessage::Row(row) => {
                    let values: Vec<Option<&[u8]>> = (0..row.len())
                        .map(|i| row.get(i).map(str::as_bytes))
                        .collect();
                    send(w, b'D', &data_row(&values))?;
                }
                SimpleQueryMessage::CommandComplete(n) => {
                    command_complete(w, &format!("{word} {n}"))?;
                    completed = true;
                }
                _ => {}
            }
        }
        if !completed {
            command_complete(w, &word)?;
        }
        Ok(())
    }

    fn extended(&mut self, w: &mut impl Write, tag: u8, body: &[u8]) -> Result<()> {
        let mut b = Body(body);
        match tag {
            // Parse: name, query, parameter types.
            b'P' => {
                let name = b.cstr()?;
                let sql = b.cstr()?;
                let n = b.i16()?;
                let oids = (0..n)
                    .map(|_| b.i32().map(|o| o as u32))
                    .collect::<Result<Vec<_>>>()?;
                let st = self.s.prepare_extended(&sql, &oids)?;
                self.statements.insert(name, st);
                send(w, b'1', &[])?;
            }
            // Bind: portal, statement, parameter formats, values, result formats.
            b'B' => {
                let portal = b.cstr()?;
                let name = b.cstr()?;
                let nf = b.i16()?;
                let formats = (0..nf).map(|_| b.i16()).collect::<Result<Vec<_>>>()?;
                let np = b.i16()?;
                let mut params = Vec::new();
                for i in 0..np as usize {
                    let len = b.i32()?;
                    let value = if len < 0 {
                        None
                    } else {
                        Some(b.take(len as usize)?.to_vec())
                    };
                    let format = match formats.len() {
                        0 => 0,
                        1 => formats[0],
                        _ => *formats
                            .get(i)
                            .ok_or_else(|| anyhow!("a parameter without its format"))?,
                    };
                    params.push(RawParam {
                        value,
                        text: format == 0,
                    });
                }
                let nr = b.i16()?;
                let results = (0..nr).map(|_| b.i16()).collect::<Result<Vec<_>>>()?;
                if results.is_empty() || results.iter().any(|f| *f != 1) {
                    bail!("the stand-in's server sends results in binary only (result formats {results:?})");
                }
                let statement = self
                    .statements
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| anyhow!("prepared statement \"{name}\" does not exist"))?;
                self.portals.insert(portal, Portal { statement, params });
                send(w, b'2', &[])?;
            }
            // Describe a statement (its parameters and columns) or a portal (its columns).
            b'D' => {
                let kind = b.u8()?;
                let name = b.cstr()?;
                let (st, format) = match kind {
                    b'S' => {
                        let st = self.statements.get(&name).ok_or_else(|| {
                            anyhow!("prepared statement \"{name}\" does not exist")
                        })?;
                        let mut p = Vec::new();
                        p.extend_from_slice(&(st.params().len() as i16).to_be_bytes());
                        for t in st.params() {
                            p.extend_from_slice(&t.oid().to_be_bytes());
                        }
                        send(w, b't', &p)?;
                        (st.clone(), 0)
                    }
                    _ => (
                        self.portals
                            .get(&name)
                            .map(|p| p.statement.clone())
                            .ok_or_else(|| anyhow!("portal \"{name}\" does not exist"))?,
                        1,
                    ),
                };
                if st.columns().is_empty() {
                    send(w, b'n', &[])?;
                } else {
                    send(w, b'T', &row_description(&columns_of(&st), format))?;
                }
            }
            // Execute a portal (all its rows).
            b'E' => {
                let portal = b.cstr()?;
                let p = self
                    .portals
                    .remove(&portal)
                    .ok_or_else(|| anyhow!("portal \"{portal}\" does not exist"))?;
                let rows = self.s.execute_extended(&p.statement, &p.params)?;
                for row in &rows {
                    let mut values = Vec::with_capacity(row.len());
                    for i in 0..row.len() {
                        values.push(row.try_get::<_, Option<RawValue>>(i)?);
                    }
                    let refs: Vec<Option<&[u8]>> = values
                        .iter()
                        .map(|v| v.as_ref().map(|v| v.0.as_slice()))
                        .collect();
                    send(w, b'D', &data_row(&refs))?;
                }
                command_complete(w, &format!("SELECT {}", rows.len()))?;
            }
            // Close a statement or a portal.
            b'C' => {
                let kind = b.u8()?;
                let name = b.cstr()?;
                if kind == b'S' {
                    self.statements.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                send(w, b'3', &[])?;
            }
            other => bail!("message {:?} is not served by the stand-in", other as char),
        }
        Ok(())
    }
}
