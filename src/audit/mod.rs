//! The audit trail: the record model, secret scrubbing and the durable writer.
//!
//! The request path only formats a record into bytes and hands it to the writer task over a
//! bounded queue; the writer numbers the records (`seq`), writes them in batches and, where
//! the durability mode asks, fsyncs before acknowledging. Numbering in the writer keeps the
//! file order and the sequence identical, which the hash chain (a later stage) relies on.
//! Nothing here ever writes an `Authorization` header, a cookie or a signature.

pub mod chain;
pub mod digest;
pub mod index;
pub mod lineage;
pub mod query;
mod record;
pub mod segment;
pub mod verify;
mod writer;

pub use record::{
    config_event, scrub_path, scrub_query, timestamp, ClientInfo, CompletionRecord, CredentialInfo,
    DecisionRecord, RequestInfo, S3AssetInfo,
};
pub use writer::{AuditError, AuditSink, AuditWriterHandle};
