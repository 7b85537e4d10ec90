//! The lake (issue 27): the archive's records as a Parquet dataset that query engines read
//! (Spark, Trino or Athena, Redshift Spectrum, DuckDB), under Hive-style hour folders.
//!
//! [`parquet`] is the file writer (a layout's columns plus each record's Kafka coordinates,
//! typed, without arrow), [`catalog`] the lake's own records (intents, commit records, sealed
//! hours, the head), and [`ddl`] the table each engine declares over a topic's folder. The
//! commands on them are `publish`, `ddl` and `audit`'s lake checks; the design and where the
//! code departs from it are in `docs/lake-design.md`.

pub mod catalog;
pub mod ddl;
pub mod parquet;

pub use self::parquet::{
    Cell, Coordinates, FileStats, ParquetCompression, ParquetOptions, ParquetSink, RowChunk,
    RowValues, EPOCH, META_COLUMNS, OFFSET, PARTITION, TIMESTAMP,
};
