//! What every SQL warehouse shares: a PostgreSQL-protocol session (PostgreSQL and Redshift
//! both speak it), plain statements and transactions, and the error type that keeps the
//! server's error (and its SQLSTATE) inspectable while printing as one line.

use super::conninfo::redact_url;
use super::Names;
use crate::config::{PgTls, SslMode, WarehouseSettings};
use anyhow::{Context, Result};
use postgres::{Client, NoTls};
use std::fmt::{self, Display};
use std::str::FromStr;
use std::time::Duration;

/// Generic SQL plumbing, the same for every dialect.
pub trait SqlSession {
    /// Where it points (no secrets).
    fn describe(&self) -> String;
    /// Runs statements in one transaction.
    fn run_in_transaction(&mut self, stmts: &[String]) -> Result<()>;
    /// Runs one statement outside a transaction block.
    fn execute(&mut self, sql: &str) -> Result<()>;
    /// Runs a query returning one bigint (NULL as None).
    fn query_i64(&mut self, sql: &str) -> Result<Option<i64>>;
    /// Whether schema.table exists.
    fn table_exists(&mut self, table: &str) -> Result<bool>;
    /// Runs a query and returns column names and rows as text, NULL as None.
    fn query_text(&mut self, sql: &str) -> Result<(Vec<String>, Rows)>;
}

/// A query's rows: each value as text, NULL as None.
pub type Rows = Vec<Vec<Option<String>>>;

/// How a table shown to people writes NULL (psql's `\pset null NULL`); never compared against.
pub const NULL_SHOWN: &str = "NULL";

/// Rows as shown to people (tables, messages): NULL written as [`NULL_SHOWN`].
pub fn shown(rows: Rows) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.unwrap_or_else(|| NULL_SHOWN.into()))
                .collect()
        })
        .collect()
}

/// A server error, kept whole: `code()` gives its SQLSTATE; Display is one line without
/// connection parameters.
#[derive(Debug)]
pub struct SqlError(pub postgres::Error);

impl SqlError {
    /// The SQLSTATE, when the server sent one.
    pub fn code(&self) -> Option<&postgres::error::SqlState> {
        self.0.code()
    }
}

impl Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&pg_reason(&self.0))
    }
}

// The reason (Display) already holds the whole cause chain, so no `source` is given: the
// one-line error would otherwise repeat it.
impl std::error::Error for SqlError {}

/// Wraps a postgres error as [`SqlError`] with context.
pub trait SqlContext<T> {
    fn sql(self, context: impl Display) -> Result<T>;
    fn sql_with<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
    /// No context: the server's reason alone.
    fn sql_bare(self) -> Result<T>;
}

impl<T> SqlContext<T> for Result<T, postgres::Error> {
    fn sql(self, context: impl Display) -> Result<T> {
        self.map_err(|e| anyhow::Error::new(SqlError(e)).context(context.to_string()))
    }
    fn sql_with<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| anyhow::Error::new(SqlError(e)).context(context().to_string()))
    }
    fn sql_bare(self) -> Result<T> {
        self.map_err(|e| anyhow::Error::new(SqlError(e)))
    }
}

/// The server's message (or the I/O reason), one line, without connection parameters.
pub fn pg_reason(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s = format!("{s}: {c}");
        src = c.source();
    }
    s
}

/// Opens a client; the error names the server, never the password.
pub fn open_client(w: &WarehouseSettings) -> Result<(Client, String)> {
    let shown = redact_url(&w.url);
    let mut cfg = postgres::Config::from_str(&w.url).map_err(|_| {
        crate::error::Error::config(format!(
            "warehouse.url {shown} is not a valid PostgreSQL URL"
        ))
    })?;
    if let Some(p) = &w.password {
        cfg.password(p.expose());
    }
    cfg.connect_timeout(Duration::from_secs(10));
    cfg.application_name("batchlayer");
    let what = format!("connecting to PostgreSQL at {shown}");
    let client = crate::util::retry(&w.retry, &what, refused, || {
        connect_tls(&mut cfg, &w.tls, &shown)
    })
    .map_err(|g| {
        if g.attempts > 1 {
            g.error
                .context(format!("gave up after {} attempts", g.attempts))
        } else {
            g.error
        }
    })?;
    Ok((client, shown))
}

/// Whether a connection failed because nothing answered (a server starting or restarting):
/// worth retrying. A refused login or a TLS failure is not.
fn refused(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<SqlError>())
        .filter_map(|s| std::error::Error::source(&s.0))
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(crate::util::transient_io)
}

/// Connects as libpq would for the sslmode: `prefer` tries TLS and falls back to a plain
/// connection when the server has none or the handshake fails.
fn connect_tls(cfg: &mut postgres::Config, tls: &PgTls, shown: &str) -> Result<Client> {
    use postgres::config::SslMode as Wire;
    let ctx = || {
        format!(
            "cannot connect to PostgreSQL at {shown} (sslmode {})",
            tls.mode.as_str()
        )
    };
    if tls.mode == SslMode::Disable {
        cfg.ssl_mode(Wire::Disable);
        return cfg.connect(NoTls).sql_with(ctx);
    }
    let connector = super::tls::Connector::new(tls).with_context(ctx)?;
    cfg.ssl_mode(match tls.mode {
        SslMode::Prefer => Wire::Prefer,
        _ => Wire::Require,
    });
    match cfg.connect(connector) {
        Err(e) if tls.mode == SslMode::Prefer && e.to_string().contains("TLS handshake") => {
            cfg.ssl_mode(Wire::Disable);
            cfg.connect(NoTls).sql_with(ctx)
        }
        r => r.sql_with(ctx),
    }
}

/// A session on a PostgreSQL-protocol server, with the configured table names.
pub struct PgSession {
    pub client: Client,
    pub names: Names,
    /// The URL with any password masked.
    pub url: String,
}

impl PgSession {
    pub fn connect(w: &WarehouseSettings, names: Names) -> Result<Self> {
        let (client, url) = open_client(w)?;
        Ok(PgSession { client, names, url })
    }
}

impl SqlSession for PgSession {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn run_in_transaction(&mut self, stmts: &[String]) -> Result<()> {
        let mut tx = self.client.transaction().sql_bare()?;
        for s in stmts {
            tx.batch_execute(s).sql_with(|| first_line(s))?;
        }
        tx.commit().sql("commit")
    }

    fn execute(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).sql_with(|| first_line(sql))
    }

    fn query_i64(&mut self, sql: &str) -> Result<Option<i64>> {
        let row = self
            .client
            .query_one(sql, &[])
            .sql_with(|| first_line(sql))?;
        Ok(row.get::<_, Option<i64>>(0))
    }

    fn table_exists(&mut self, table: &str) -> Result<bool> {
        let row = self
            .client
            .query_one(
                r#"SELECT count(*) FROM "information_schema"."tables" WHERE "table_schema" = $1 AND "table_name" = $2"#,
                &[&self.names.schema, &table],
            )
            .sql_with(|| format!("checking table {table}"))?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// Sent as a simple query: the server sends every value as text, so nothing is cast and
    /// the statement is not wrapped (a wrapper would drop its ORDER BY, and on Redshift a
    /// `::text` cast is VARCHAR(256), which would cut longer values:
    /// <https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html>).
    fn query_text(&mut self, sql: &str) -> Result<(Vec<String>, Rows)> {
        use postgres::SimpleQueryMessage as M;
        let msgs = self.client.simple_query(sql).sql_bare()?;
        let mut cols: Option<Vec<String>> = None;
        let mut data = Vec::new();
        for m in msgs {
            match m {
                M::RowDescription(c) if cols.is_none() => {
                    cols = Some(c.iter().map(|c| c.name().to_string()).collect());
                }
                M::Row(r) => {
                    if cols.is_none() {
                        cols = Some(r.columns().iter().map(|c| c.name().to_string()).collect());
                    }
                    data.push((0..r.len()).map(|i| r.get(i).map(String::from)).collect());
                }
                M::CommandComplete(_) => break,
                _ => {}
            }
        }
        Ok((cols.unwrap_or_default(), data))
    }
}

/// The first non-empty line of a statement, for messages.
pub fn first_line(sql: &str) -> String {
    sql.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .chars()
        .take(80)
        .collect()
}
