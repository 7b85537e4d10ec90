//! A batch view's tables and their build records: the names of the tables a view goes through
//! beside the live `<view>` (its build `__new`, the kept versions `__prev`, `__prev2`, ..., a
//! refused build `__rejected`, the rollback's stopover `__swap`), and what each build was (its
//! time, rows and gates), kept as the built table's comment, written by `aggregate` and read
//! by `status`.

use super::{quote_literal, Names, SqlSession};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One gate's outcome, kept with the build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateResult {
    pub name: String,
    pub new: Option<i64>,
    pub old: Option<i64>,
    pub passed: bool,
}

/// What a build was, stored as the built table's comment (`COMMENT ON TABLE`): it moves with
/// the table through the renames, so the view, `__prev` and `__rejected` each carry their own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildRecord {
    pub built_at: DateTime<Utc>,
    pub rows: i64,
    pub gates: Vec<GateResult>,
    /// Swapped in with --force although a gate failed.
    #[serde(default)]
    pub forced: bool,
    /// The completeness gate's time and what the data was complete through, when checked.
    #[serde(default)]
    pub required_complete_through: Option<DateTime<Utc>>,
    #[serde(default)]
    pub complete_through: Option<DateTime<Utc>>,
}

/// The build record of a table (None when it has none: built before batchlayer kept them).
pub fn read_build(
    sql: &mut dyn SqlSession,
    names: &Names,
    table: &str,
) -> Result<Option<BuildRecord>> {
    let q = format!(
        r#"SELECT "d"."description" FROM "pg_description" "d" JOIN "pg_class" "c" ON "c"."oid" = "d"."objoid" JOIN "pg_namespace" "n" ON "n"."oid" = "c"."relnamespace" WHERE "n"."nspname" = {} AND "c"."relname" = {} AND "d"."objsubid" = 0"#,
        quote_literal(&names.schema),
        quote_literal(table)
    );
    let (_, rows) = sql.query_text(&q)?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .and_then(|d| serde_json::from_str(&d).ok()))
}

/// The statement that keeps a build's record on its table.
pub fn record_build(names: &Names, table: &str, rec: &BuildRecord) -> Result<String> {
    Ok(format!(
        "COMMENT ON TABLE {} IS {}",
        names.qualified(table),
        quote_literal(&serde_json::to_string(rec)?)
    ))
}

/// A table of a view other than the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewTable {
    /// The build in progress, swapped in when the gates pass.
    New,
    /// Previous version `n` (1 = the last one).
    Prev(u32),
    /// The last build a gate refused.
    Rejected,
    /// Where `--rollback` parks the live view while the previous one takes its name.
    Swap,
}

/// The name of `view`'s table `t` (unquoted).
pub fn version_name(view: &str, t: ViewTable) -> String {
    match t {
        ViewTable::New => format!("{view}__new"),
        ViewTable::Prev(1) => format!("{view}__prev"),
        ViewTable::Prev(n) => format!("{view}__prev{n}"),
        ViewTable::Rejected => format!("{view}__rejected"),
        ViewTable::Swap => format!("{view}__swap"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_table_of_a_view() {
        let names = [
            ViewTable::New,
            ViewTable::Prev(1),
            ViewTable::Prev(2),
            ViewTable::Rejected,
            ViewTable::Swap,
        ]
        .map(|t| version_name("v", t));
        assert_eq!(
            names,
            ["v__new", "v__prev", "v__prev2", "v__rejected", "v__swap"]
        );
    }
}
