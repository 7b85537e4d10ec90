//! The lake (issue 27): the archive's records as a Parquet dataset that query engines read
//! (Spark, Trino or Athena, Redshift Spectrum, DuckDB), under Hive-style hour folders.
//!
//! Here so far: [`parquet`], the file writer (a layout's columns plus each record's Kafka
//! coordinates, typed, without arrow), and [`ddl`], the table each engine declares over a
//! topic's folder. What `publish` builds on them (which archive objects and hours, the lake's
//! catalog, `_SUCCESS`, the `ddl` command, `audit`) is designed in `docs/lake-design.md`.

pub mod catalog;
pub mod ddl;
pub mod parquet;

pub use self::parquet::{
    Cell, FileStats, ParquetCompression, ParquetOptions, ParquetSink, RowValues, EPOCH,
    META_COLUMNS, OFFSET, PARTITION, TIMESTAMP,
};
