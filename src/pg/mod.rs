//! Everything that talks to PostgreSQL.

pub mod catalog;
pub mod connect;
pub mod pgoutput;
pub mod publication;
pub mod replication;
