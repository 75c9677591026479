//! pg2lake
pub mod lake;
pub mod lsn;
