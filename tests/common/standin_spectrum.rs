//! The stand-in's Redshift Spectrum: `CREATE EXTERNAL SCHEMA`, `CREATE EXTERNAL TABLE` and
//! `ALTER TABLE ... ADD [IF NOT EXISTS] PARTITION`, as `batchlayer ddl --engine spectrum`
//! prints them and `publish` (with `lake.spectrum_schema`) runs the last. Each rule with its
//! page:
//!
//! * ALTER = https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html (the external
//!   table options and their parameters);
//! * EXT-TABLE = https://docs.aws.amazon.com/redshift/latest/dg/r_CREATE_EXTERNAL_TABLE.html;
//! * EXT-SCHEMA = https://docs.aws.amazon.com/redshift/latest/dg/r_CREATE_EXTERNAL_SCHEMA.html;
//! * PARTS = https://docs.aws.amazon.com/redshift/latest/dg/c-spectrum-external-tables.html
//!   ("Partitioning Redshift Spectrum external tables");
//! * EXAMPLES = https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE_external-table.html.
//!
//! The external catalog is kept in the cluster's system schema, written at once (outside the
//! session's transaction: the statements cannot run inside one anyway):
//! `standin_external_schemas`, `standin_external_tables` and `standin_spectrum_partitions`
//! (schemaname, tablename, partition_values as a JSON array of the values as written, location),
//! the stand-in's own tables, which tests read; Redshift shows the same in SVV_EXTERNAL_SCHEMAS,
//! SVV_EXTERNAL_TABLES and SVV_EXTERNAL_PARTITIONS, not modelled.
//!
//! What the pages do not say, and the stand-in's choice: a partition's LOCATION outside the
//! table's is accepted and recorded as given (no page requires it under the table's); the
//! partition columns are to be named in the table's order (refused otherwise: stricter than
//! Redshift may be); a value is recorded as written, not converted by its column's type
//! (`hour=9` and `hour='9'` both record "9", `hour='09'` records "09", a different partition);
//! CREATE EXTERNAL SCHEMA may run in a transaction block (no page says otherwise). Anything
//! else in these statements' places (ROW FORMAT, TABLE PROPERTIES, another file format or data
//! source, the other ALTER forms for external tables) is refused as not modelled.

use super::{ident, is_role_arn, string, tokenize, word, StandIn, Tok, Toks};
use anyhow::{anyhow, bail, Context, Result};
use batchlayer::warehouse::quote_ident;
use batchlayer::warehouse::session::first_line;

/// "If you use the AWS Glue catalog, you can add up to 100 partitions using a single ALTER
/// TABLE statement" (ALTER; PARTS): the schemas modelled are `FROM DATA CATALOG`'s.
const MAX_PARTITIONS_PER_ALTER: usize = 100;

/// The types a column or partition column of an external table may have: "SMALLINT (INT2),
/// INTEGER (INT, INT4), BIGINT (INT8), DECIMAL (NUMERIC), REAL (FLOAT4), DOUBLE PRECISION
/// (FLOAT8), BOOLEAN (BOOL), CHAR (CHARACTER), VARCHAR (CHARACTER VARYING), DATE, TIMESTAMP"
/// (EXT-TABLE, data_type; PARTS gives the same list for partition keys). Nested types (struct,
/// array, map) are not modelled.
const TYPES: &str = "SMALLINT, INTEGER, BIGINT, DECIMAL, REAL, DOUBLE PRECISION, BOOLEAN, CHAR, VARCHAR, DATE, TIMESTAMP";

/// Whether the stand-in carries this statement out as Redshift Spectrum's: CREATE EXTERNAL
/// ..., and ALTER TABLE in the forms that apply only to external tables (ALTER: "The following
/// options apply only to external tables": SET LOCATION, SET FILE FORMAT, SET TABLE
/// PROPERTIES, PARTITION ... SET LOCATION, ADD [IF NOT EXISTS] PARTITION, DROP PARTITION).
pub fn is_spectrum(sql: &str) -> bool {
    let Ok(toks) = tokenize(sql) else {
        return false;
    };
    let w = |i: usize| match toks.get(i) {
        Some(Tok::Word(w)) => w.to_ascii_uppercase(),
        _ => String::new(),
    };
    match (w(0).as_str(), w(1).as_str()) {
        ("CREATE", "EXTERNAL") => true,
        ("ALTER", "TABLE") => {
            // The table's name: one identifier, or schema `.` table.
            let at = if toks.get(3) == Some(&Tok::Punct('.')) {
                5
            } else {
                3
            };
            match w(at).as_str() {
                "ADD" => matches!(w(at + 1).as_str(), "PARTITION" | "IF"),
                "DROP" => w(at + 1) == "PARTITION",
                "PARTITION" => true,
                "SET" => matches!(w(at + 1).as_str(), "LOCATION" | "FILE" | "TABLE"),
                _ => false,
            }
        }
        _ => false,
    }
}

/// A Spectrum statement the stand-in understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Spectrum {
    Schema(ExternalSchema),
    Table(ExternalTable),
    AddPartitions(AddPartitions),
}

/// `CREATE EXTERNAL SCHEMA [IF NOT EXISTS] name FROM [DATA CATALOG] DATABASE 'db' [REGION 'r']
/// [IAM_ROLE {default | 'SESSION' | 'arn'[,...]}] [CATALOG_ROLE ...] [CREATE EXTERNAL DATABASE
/// IF NOT EXISTS]` (EXT-SCHEMA, the data catalog form).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExternalSchema {
    pub name: String,
    pub if_not_exists: bool,
    pub database: String,
    pub iam_role: Option<String>,
}

/// `CREATE EXTERNAL TABLE schema.table (col type, ...) [PARTITIONED BY (col type, ...)]
/// STORED AS PARQUET LOCATION 's3://...'` (EXT-TABLE).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExternalTable {
    pub schema: String,
    pub name: String,
    /// (name, type as the stand-in writes it).
    pub columns: Vec<(String, String)>,
    pub partition_columns: Vec<(String, String)>,
    pub location: String,
}

/// `ALTER TABLE schema.table ADD [IF NOT EXISTS] PARTITION (col=value, ...) LOCATION 's3://...'
/// [[,] PARTITION (...) LOCATION '...']...` (ALTER; the EXAMPLES and PARTS write the partitions
/// one after the other, the syntax with `[, ... ]`: both are read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddPartitions {
    pub schema: String,
    pub table: String,
    pub if_not_exists: bool,
    /// Each partition: its (column, value as written), its location.
    pub partitions: Vec<(Vec<(String, String)>, String)>,
}

/// Parses a Spectrum statement; anything else in its form is an error.
pub fn parse(sql: &str) -> Result<Spectrum> {
    let toks = tokenize(sql)?;
    let mut t: Toks = toks.into_iter().peekable();
    let first = word(t.next())?;
    let second = word(t.next())?;
    let st = match (first.as_str(), second.as_str()) {
        ("CREATE", "EXTERNAL") => match word(t.next())?.as_str() {
            "SCHEMA" => Spectrum::Schema(parse_schema(&mut t)?),
            "TABLE" => Spectrum::Table(parse_table(&mut t)?),
            other => bail!("CREATE EXTERNAL {other} is not modelled by the stand-in"),
        },
        ("ALTER", "TABLE") => Spectrum::AddPartitions(parse_alter(&mut t)?),
        (a, b) => bail!("{a} {b} is not a Spectrum statement"),
    };
    end(&mut t)?;
    Ok(st)
}

/// The end of the statement: nothing, or `;` and nothing.
fn end(t: &mut Toks) -> Result<()> {
    match t.next() {
        None => Ok(()),
        Some(Tok::Punct(';')) => match t.next() {
            None => Ok(()),
            Some(more) => bail!("text after the statement: {more:?}"),
        },
        Some(other) => bail!("unexpected {other:?}"),
    }
}

fn is_word(t: &mut Toks, w: &str) -> bool {
    matches!(t.peek(), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
}

fn expect(t: &mut Toks, w: &str) -> Result<()> {
    let got = word(t.next())?;
    if got != w {
        bail!("expected {w}, found {got}");
    }
    Ok(())
}

fn punct(t: &mut Toks, c: char) -> Result<()> {
    match t.next() {
        Some(Tok::Punct(p)) if p == c => Ok(()),
        other => bail!("expected {c:?}, found {other:?}"),
    }
}

/// `IF NOT EXISTS`, if it comes next.
fn if_not_exists(t: &mut Toks) -> Result<bool> {
    if !is_word(t, "IF") {
        return Ok(false);
    }
    t.next();
    expect(t, "NOT")?;
    expect(t, "EXISTS")?;
    Ok(true)
}

/// `schema.table`: "External tables must be qualified by an external schema name" (ALTER,
/// table_name); "The name of the table to be created, qualified by an external schema name"
/// (EXT-TABLE). A database-qualified name is not modelled.
fn qualified(t: &mut Toks) -> Result<(String, String)> {
    let first = ident(t.next())?.1;
    if t.peek() != Some(&Tok::Punct('.')) {
        bail!("{first}: external tables must be qualified by an external schema name");
    }
    t.next();
    let second = ident(t.next())?.1;
    if t.peek() == Some(&Tok::Punct('.')) {
        bail!("a name qualified by a database is not modelled by the stand-in");
    }
    Ok((first, second))
}

fn s3_location(t: &mut Toks) -> Result<String> {
    let l = string(t.next())?;
    // LOCATION { 's3://bucket/folder/' | 's3://bucket/manifest_file' } (EXT-TABLE, ALTER).
    if !l.starts_with("s3://") || l.len() <= "s3://".len() {
        bail!("LOCATION {l:?} is not an Amazon S3 path ('s3://bucket/folder/')");
    }
    Ok(l)
}

fn parse_schema(t: &mut Toks) -> Result<ExternalSchema> {
    let mut s = ExternalSchema {
        if_not_exists: if_not_exists(t)?,
        name: ident(t.next())?.1,
        ..Default::default()
    };
    expect(t, "FROM")?;
    // FROM [ [ DATA CATALOG ] | HIVE METASTORE | POSTGRES | MYSQL | KINESIS | MSK | REDSHIFT |
    // KAFKA ]: DATA CATALOG is the default, and the only source modelled.
    if is_word(t, "DATA") {
        t.next();
        expect(t, "CATALOG")?;
    } else if !is_word(t, "DATABASE") {
        let other = word(t.next())?;
        bail!("FROM {other} is not modelled by the stand-in (FROM DATA CATALOG is)");
    }
    let mut seen = std::collections::HashSet::new();
    let mut database = None;
    while let Some(Tok::Word(w)) = t.peek().cloned() {
        let kw = w.to_ascii_uppercase();
        t.next();
        if !seen.insert(kw.clone()) {
            bail!("{kw} given twice");
        }
        match kw.as_str() {
            "DATABASE" => database = Some(string(t.next())?),
            "REGION" => {
                string(t.next())?;
            }
            // IAM_ROLE [ default | 'SESSION' | 'arn:aws:iam::<account-id>:role/<role-name>' ];
            // chained roles are ARNs separated by commas, without spaces.
            "IAM_ROLE" => {
                s.iam_role = Some(match t.next() {
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("default") => "default".into(),
                    Some(Tok::Str(r)) if r == "SESSION" => r,
                    Some(Tok::Str(r)) if r.split(',').all(is_role_arn) => r,
                    other => bail!("IAM_ROLE takes default, 'SESSION' or role ARNs 'arn:aws:iam::<account-id>:role/<role-name>', not {other:?}"),
                })
            }
            "CATALOG_ROLE" => match t.next() {
                Some(Tok::Str(r)) if r.split(',').all(is_role_arn) => {}
                other => bail!("CATALOG_ROLE takes role ARNs, not {other:?}"),
            },
            "CREATE" => {
                expect(t, "EXTERNAL")?;
                expect(t, "DATABASE")?;
                expect(t, "IF")?;
                expect(t, "NOT")?;
                expect(t, "EXISTS")?;
            }
            other => bail!("{other} is not modelled by the stand-in"),
        }
    }
    s.database = database.ok_or_else(|| {
        anyhow!("DATABASE 'database_name' (the data catalog's database) is missing")
    })?;
    Ok(s)
}

/// One column type of an external table, as the stand-in writes it (`varchar(256)`,
/// `double precision`).
fn data_type(t: &mut Toks) -> Result<String> {
    let mut w = word(t.next())?;
    if w == "CHARACTER" && is_word(t, "VARYING") {
        t.next();
        w = "VARCHAR".into();
    }
    // (name, how many numbers its parentheses may hold).
    let (name, max_args) = match w.as_str() {
        "SMALLINT" | "INT2" => ("smallint", 0),
        "INTEGER" | "INT" | "INT4" => ("integer", 0),
        "BIGINT" | "INT8" => ("bigint", 0),
        "DECIMAL" | "NUMERIC" => ("decimal", 2),
        "REAL" | "FLOAT4" => ("real", 0),
        "DOUBLE" => {
            expect(t, "PRECISION")?;
            ("double precision", 0)
        }
        "FLOAT8" => ("double precision", 0),
        "BOOLEAN" | "BOOL" => ("boolean", 0),
        "CHAR" | "CHARACTER" => ("char", 1),
        "VARCHAR" => ("varchar", 1),
        "DATE" => ("date", 0),
        "TIMESTAMP" => ("timestamp", 0),
        other => bail!("data type {other} is not modelled by the stand-in for external tables (the page's list: {TYPES})"),
    };
    let mut args = Vec::new();
    if t.peek() == Some(&Tok::Punct('(')) {
        t.next();
        loop {
            match t.next() {
                Some(Tok::Num(n)) => args.push(n.to_string()),
                other => bail!("{name}: expected a number, found {other:?}"),
            }
            match t.next() {
                Some(Tok::Punct(',')) => continue,
                Some(Tok::Punct(')')) => break,
                other => bail!("{name}: unexpected {other:?}"),
            }
        }
        if args.len() > max_args {
            bail!("{name} takes at most {max_args} numbers in parentheses");
        }
    }
    Ok(if args.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", args.join(","))
    })
}

/// `(name type, ...)`.
fn column_list(t: &mut Toks) -> Result<Vec<(String, String)>> {
    punct(t, '(')?;
    let mut cols = Vec::new();
    loop {
        let name = ident(t.next())?.1;
        cols.push((name, data_type(t)?));
        match t.next() {
            Some(Tok::Punct(',')) => continue,
            Some(Tok::Punct(')')) => break,
            other => bail!("column list: unexpected {other:?}"),
        }
    }
    Ok(cols)
}

fn parse_table(t: &mut Toks) -> Result<ExternalTable> {
    if is_word(t, "IF") {
        bail!("CREATE EXTERNAL TABLE IF NOT EXISTS is not modelled by the stand-in");
    }
    let (schema, name) = qualified(t)?;
    let mut tb = ExternalTable {
        schema,
        name,
        columns: column_list(t)?,
        ..Default::default()
    };
    if is_word(t, "PARTITIONED") {
        t.next();
        expect(t, "BY")?;
        tb.partition_columns = column_list(t)?;
    }
    match word(t.next())?.as_str() {
        "STORED" => {}
        "ROW" => bail!("ROW FORMAT is not modelled by the stand-in"),
        other => bail!("expected STORED AS, found {other}"),
    }
    expect(t, "AS")?;
    match word(t.next())?.as_str() {
        "PARQUET" => {}
        other => bail!("STORED AS {other} is not modelled by the stand-in (PARQUET is)"),
    }
    expect(t, "LOCATION")?;
    tb.location = s3_location(t)?;
    if is_word(t, "TABLE") {
        bail!("TABLE PROPERTIES is not modelled by the stand-in");
    }
    Ok(tb)
}

fn parse_alter(t: &mut Toks) -> Result<AddPartitions> {
    let (schema, table) = qualified(t)?;
    let kw = word(t.next())?;
    if kw != "ADD" || !(is_word(t, "IF") || is_word(t, "PARTITION")) {
        bail!("ALTER TABLE ... {kw} on an external table is not modelled by the stand-in (ADD [IF NOT EXISTS] PARTITION is)");
    }
    let mut a = AddPartitions {
        schema,
        table,
        if_not_exists: if_not_exists(t)?,
        partitions: Vec::new(),
    };
    loop {
        expect(t, "PARTITION")?;
        punct(t, '(')?;
        let mut values = Vec::new();
        loop {
            let col = ident(t.next())?.1;
            punct(t, '=')?;
            let v = match t.next() {
                Some(Tok::Str(s)) => s,
                Some(Tok::Num(n)) => n.to_string(),
                other => bail!("partition value of {col}: expected a literal, found {other:?}"),
            };
            values.push((col, v));
            match t.next() {
                Some(Tok::Punct(',')) => continue,
                Some(Tok::Punct(')')) => break,
                other => bail!("partition: unexpected {other:?}"),
            }
        }
        // ADD [IF NOT EXISTS] PARTITION (...) LOCATION { 's3://bucket/folder' |
        // 's3://bucket/manifest_file' }: the location is not optional (ALTER).
        expect(t, "LOCATION")?;
        a.partitions.push((values, s3_location(t)?));
        if t.peek() == Some(&Tok::Punct(',')) {
            t.next();
        }
        if !is_word(t, "PARTITION") {
            break;
        }
    }
    Ok(a)
}

impl StandIn {
    /// A Spectrum statement, carried out on the stand-in's catalog.
    pub(super) fn spectrum(&mut self, sql: &str) -> Result<()> {
        let st = parse(sql).with_context(|| {
            format!(
                "Redshift stand-in: Spectrum statement it does not understand: {}",
                first_line(sql)
            )
        })?;
        match st {
            Spectrum::Schema(s) => self.create_external_schema(&s),
            Spectrum::Table(tb) => {
                // "You can't run CREATE EXTERNAL TABLE inside a transaction (BEGIN … END)"
                // (EXT-TABLE).
                self.refuse_in_transaction_block("CREATE EXTERNAL TABLE")?;
                self.create_external_table(&tb)
            }
            Spectrum::AddPartitions(a) => {
                // "You can't run ALTER TABLE on an external table within a transaction block
                // (BEGIN ... END)" (ALTER).
                self.refuse_in_transaction_block("ALTER TABLE on an external table")?;
                self.add_partitions(&a)
            }
        }
    }

    /// Whether the session is inside a transaction block: PostgreSQL's statement_timestamp()
    /// "is the same as transaction_timestamp() during the first command of a transaction"
    /// (https://www.postgresql.org/docs/current/functions-datetime.html#FUNCTIONS-DATETIME-CURRENT),
    /// so they differ once a BEGIN came before. A transaction block already failed refuses the
    /// question: inside a block too.
    /// Asked over the simple query protocol: one message, so outside a block the query is the
    /// first command of its own transaction (the extended protocol's Parse and Execute are
    /// separate messages, and the two times differ there whatever the block).
    fn in_transaction_block(&mut self) -> bool {
        let rows = self
            .pg
            .client
            .simple_query("SELECT transaction_timestamp() <> statement_timestamp()");
        match rows {
            Ok(msgs) => msgs.iter().any(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("t"),
                _ => false,
            }),
            Err(_) => true,
        }
    }

    fn refuse_in_transaction_block(&mut self, what: &str) -> Result<()> {
        if self.in_transaction_block() {
            bail!(
                "Redshift stand-in: {what} cannot run inside a transaction block (BEGIN ... END)"
            );
        }
        Ok(())
    }

    fn sys(&self) -> String {
        quote_ident(&self.cluster.system_schema)
    }

    /// Whether schema `name` is an external schema of this cluster.
    fn external_schema_exists(&mut self, name: &str) -> Result<bool> {
        let sys = self.sys();
        Ok(self
            .log
            .query_one(
                &format!(
                    "SELECT count(*) FROM {sys}.standin_external_schemas WHERE schemaname = $1"
                ),
                &[&name],
            )?
            .get::<_, i64>(0)
            > 0)
    }

    /// Whether PostgreSQL has a (local) schema `name`.
    fn local_schema_exists(&mut self, name: &str) -> Result<bool> {
        Ok(self
            .log
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                &[&name],
            )?
            .get::<_, i64>(0)
            > 0)
    }

    fn create_external_schema(&mut self, s: &ExternalSchema) -> Result<()> {
        // Schema names are the database's, external or local ("Creates a new external schema
        // in the current database", EXT-SCHEMA). IF NOT EXISTS: "if the specified schema
        // already exists, the command should make no changes [...] rather than terminating
        // with an error".
        if self.external_schema_exists(&s.name)? || self.local_schema_exists(&s.name)? {
            if s.if_not_exists {
                return Ok(());
            }
            bail!("schema \"{}\" already exists", s.name);
        }
        let sys = self.sys();
        self.log.execute(
            &format!(
                "INSERT INTO {sys}.standin_external_schemas (schemaname, databasename, iam_role) VALUES ($1, $2, $3)"
            ),
            &[&s.name, &s.database, &s.iam_role],
        )?;
        Ok(())
    }

    fn create_external_table(&mut self, tb: &ExternalTable) -> Result<()> {
        // "All external tables must be created in an external schema"; "If the database or
        // schema specified doesn't exist, the table isn't created, and the statement returns
        // an error" (EXT-TABLE).
        if !self.external_schema_exists(&tb.schema)? {
            if self.local_schema_exists(&tb.schema)? {
                bail!(
                    "schema \"{}\" is not an external schema: all external tables must be created in an external schema",
                    tb.schema
                );
            }
            bail!("schema \"{}\" does not exist", tb.schema);
        }
        let mut names = std::collections::HashSet::new();
        for (c, _) in tb.columns.iter().chain(&tb.partition_columns) {
            // "You can't specify column names "$path" or "$size"" (EXT-TABLE).
            if c == "$path" || c == "$size" {
                bail!("column name {c:?} is reserved for the pseudocolumn");
            }
            // "If you use a value for col_name that is the same as a table column, you get an
            // error" (EXT-TABLE, PARTITIONED BY; PARTS: "The partition key can't be the name
            // of a table column").
            if !names.insert(c.clone()) {
                bail!("column \"{c}\" specified more than once (a partition column can't be the name of a table column)");
            }
        }
        let sys = self.sys();
        let cols = serde_json::to_string(&tb.columns)?;
        let parts = serde_json::to_string(&tb.partition_columns)?;
        // "The table name must be a unique name for the specified schema" (EXT-TABLE).
        let n = self.log.execute(
            &format!(
                "INSERT INTO {sys}.standin_external_tables (schemaname, tablename, columns, partition_columns, location) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
            ),
            &[&tb.schema, &tb.name, &cols, &parts, &tb.location],
        )?;
        if n == 0 {
            bail!("relation \"{}\" already exists", tb.name);
        }
        Ok(())
    }

    fn add_partitions(&mut self, a: &AddPartitions) -> Result<()> {
        let sys = self.sys();
        let row = self.log.query_opt(
            &format!(
                "SELECT partition_columns FROM {sys}.standin_external_tables WHERE schemaname = $1 AND tablename = $2"
            ),
            &[&a.schema, &a.table],
        )?;
        let Some(row) = row else {
            let local = self
                .log
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!(
                        "{}.{}",
                        quote_ident(&a.schema),
                        quote_ident(&a.table)
                    )],
                )
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false);
            if local {
                // "The following options apply only to external tables" (ALTER).
                bail!(
                    "\"{}\".\"{}\" is not an external table: ADD PARTITION applies only to external tables",
                    a.schema,
                    a.table
                );
            }
            bail!("relation \"{}.{}\" does not exist", a.schema, a.table);
        };
        let columns: Vec<(String, String)> = serde_json::from_str(&row.get::<_, String>(0))?;
        let keys: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        if keys.is_empty() {
            bail!("\"{}\".\"{}\" is not partitioned", a.schema, a.table);
        }
        if a.partitions.len() > MAX_PARTITIONS_PER_ALTER {
            bail!(
                "{} partitions in one ALTER TABLE: the AWS Glue catalog takes up to {MAX_PARTITIONS_PER_ALTER}",
                a.partitions.len()
            );
        }
        for (values, _) in &a.partitions {
            let named: Vec<&str> = values.iter().map(|(c, _)| c.as_str()).collect();
            if named != keys {
                bail!(
                    "PARTITION ({}) does not name the table's partition columns ({}) in their order",
                    named.join(", "),
                    keys.join(", ")
                );
            }
        }
        // All or nothing: one transaction on the catalog's connection.
        let mut tx = self.log.transaction()?;
        for (values, location) in &a.partitions {
            let vals: Vec<&str> = values.iter().map(|(_, v)| v.as_str()).collect();
            let json = serde_json::to_string(&vals)?;
            let n = tx.execute(
                &format!(
                    "INSERT INTO {sys}.standin_spectrum_partitions (schemaname, tablename, partition_values, location) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
                ),
                &[&a.schema, &a.table, &json, location],
            )?;
            // "The IF NOT EXISTS clause indicates that if the specified partition already
            // exists, the command should make no changes. It also indicates that the command
            // should return a message that the partition exists, rather than terminating with
            // an error" (ALTER): without it, an error.
            if n == 0 && !a.if_not_exists {
                bail!(
                    "partition {json} of \"{}\".\"{}\" already exists",
                    a.schema,
                    a.table
                );
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_statements_ddl_and_publish_write() {
        let t = parse(
            "CREATE EXTERNAL TABLE \"lake\".\"tweets\" (\n  \"id\" bigint,\n  \"location\" varchar(256),\n  \"_timestamp\" timestamp\n)\nPARTITIONED BY (dt char(10), hour int)\nSTORED AS PARQUET\nLOCATION 's3://b/lake/tweets/'",
        )
        .unwrap();
        let Spectrum::Table(t) = t else {
            panic!("not read as CREATE EXTERNAL TABLE")
        };
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("lake", "tweets"));
        assert_eq!(t.columns[1], ("location".into(), "varchar(256)".into()));
        assert_eq!(
            t.partition_columns,
            vec![
                ("dt".into(), "char(10)".into()),
                ("hour".into(), "integer".into())
            ]
        );
        let a = parse("ALTER TABLE \"lake\".\"tweets\" ADD IF NOT EXISTS PARTITION (dt='2026-11-27', hour=9) LOCATION 's3://b/lake/tweets/dt=2026-11-27/hour=09/'").unwrap();
        assert_eq!(
            a,
            Spectrum::AddPartitions(AddPartitions {
                schema: "lake".into(),
                table: "tweets".into(),
                if_not_exists: true,
                partitions: vec![(
                    vec![
                        ("dt".into(), "2026-11-27".into()),
                        ("hour".into(), "9".into())
                    ],
                    "s3://b/lake/tweets/dt=2026-11-27/hour=09/".into()
                )],
            })
        );
        assert!(is_spectrum(
            "alter table lake.t add partition (a=1) location 's3://b/x/'"
        ));
        assert!(!is_spectrum("ALTER TABLE s.t ADD COLUMN c int"));
        assert!(
            parse("CREATE EXTERNAL SCHEMA lake FROM HIVE METASTORE DATABASE 'x' URI 'h'").is_err()
        );
        assert!(parse("ALTER TABLE tweets ADD PARTITION (dt='x') LOCATION 's3://b/x/'").is_err());
        assert!(
            parse("ALTER TABLE lake.tweets ADD PARTITION (dt='x')").is_err(),
            "no LOCATION"
        );
    }
}
