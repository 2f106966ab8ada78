//! Gatehouse: a data-access gateway for Databricks workspaces.
//!
//! Every request is identified, classified, decided, recorded and only then forwarded.
//! See DESIGN.md for the pipeline; each stage is one module with plain data between them.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod classify;
pub mod config;
pub mod console;
pub mod demo;
pub mod dev;
pub mod exceptions;
pub mod explain;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod report;
pub mod route;
pub mod standin;
pub mod tls;

#[doc(hidden)]
pub mod testing;
