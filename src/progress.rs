//! Replication progress: what was received from Postgres and what may be confirmed.
//!
//! The one rule: an LSN is confirmed to Postgres (standby status `flush`) only when every
//! change at or before it is committed in the lake, or belongs to nothing pg2lake
//! replicates. Postgres then may recycle that WAL, so confirming early would lose data,
//! and confirming never would bloat the WAL. Both positions only move forward: a late or
//! reordered report must never move the slot back (Postgres ignores it anyway) nor make
//! pg2lake believe less is durable than is.

use crate::lsn::Lsn;

/// Received and confirmed positions of one replication session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    received: Lsn,
    confirmed: Lsn,
}

impl Progress {
    /// Starts from the slot's confirmed position.
    pub fn new(start: Lsn) -> Self {
        Progress {
            received: start,
            confirmed: start,
        }
    }

    /// The highest WAL end position seen in the stream.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// The highest position that is durable in the lake (or irrelevant to it).
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Records a position seen in the stream; never moves back.
    pub fn receive(&mut self, lsn: Lsn) {
        self.received = self.received.max(lsn);
    }

    /// Records a durable position; never moves back. Returns whether it moved.
    pub fn confirm(&mut self, lsn: Lsn) -> bool {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            self.received = self.received.max(lsn);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_move_forward() {
        let mut p = Progress::new(Lsn(100));
        p.receive(Lsn(50));
        assert_eq!(p.received(), Lsn(100));
        p.receive(Lsn(300));
        assert!(p.confirm(Lsn(200)));
        assert!(
            !p.confirm(Lsn(150)),
            "a stale confirm must not move the slot back"
        );
        assert_eq!(p.confirmed(), Lsn(200));
        assert_eq!(p.received(), Lsn(300));
    }

    #[test]
    fn confirming_past_received_raises_received() {
        let mut p = Progress::new(Lsn(0));
        p.confirm(Lsn(10));
        assert_eq!(p.received(), Lsn(10));
    }
}
