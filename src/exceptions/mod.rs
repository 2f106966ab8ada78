//! Time-boxed exceptions that CDAO approvers grant: the model and workflow rules (pure), and
//! the live index the policy consults on every request.

pub mod index;
pub mod model;
