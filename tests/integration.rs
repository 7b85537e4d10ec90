//! The one integration test binary: runs the real `batchlayer` against tansu, s3s-fs and
//! PostgreSQL started by tests/stack.sh.

#![allow(clippy::print_stderr, clippy::print_stdout)]

mod common;

mod aggregate;
mod audit;
mod chaos;
mod cli;
mod conformance;
mod copy;
mod e2e;
mod epochs;
mod examples;
mod failures;
mod formats;
mod holes;
mod ingest;
mod lake;
mod ops;
mod redshift;
mod registry;
mod replay;
mod status;
mod tls;
mod topics;
