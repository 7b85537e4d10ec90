//! One module per subcommand: plain logic over the source, store and warehouse traits.

pub mod aggregate;
pub mod copy;
pub mod ingest;
pub mod produce;
