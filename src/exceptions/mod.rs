//! Time-boxed exceptions that CDAO approvers grant: the model and workflow rules (pure), and
//! the live index the policy consults on every request.

pub mod cli;
pub mod index;
pub mod model;
pub mod service;
pub mod store;

use std::sync::Arc;

/// The live index, shared by every gateway built from a configuration: swapped whole when
/// the store reports a change, read lock-free by each request.
pub type Live = Arc<arc_swap::ArcSwap<index::LiveIndex>>;

/// An empty live index: no exceptions in force.
pub fn no_exceptions() -> Live {
    Arc::new(arc_swap::ArcSwap::from_pointee(index::LiveIndex::default()))
}

/// The wall clock in the model's unit. Read once per request, at the edge.
pub fn now_ms() -> model::Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as model::Millis)
}
