//! The names of the tables a batch view goes through beside the live `<view>`: its build
//! (`__new`), the kept versions (`__prev`, `__prev2`, ...), a refused build (`__rejected`) and
//! the rollback's stopover (`__swap`).

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
