//! Everything that talks to PostgreSQL.

pub mod catalog;
pub mod connect;
#[cfg(test)]
pub(crate) mod mutation;
pub mod pgoutput;
pub mod publication;
pub mod replication;
pub mod sqlstate;
