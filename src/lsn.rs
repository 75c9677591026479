//! Log sequence numbers: positions in the PostgreSQL write-ahead log.
//!
//! Postgres prints an LSN as two hexadecimal halves, `16/B374D848`; on the wire it
//! is a big-endian `u64`. The newtype keeps the two from being confused with other
//! integers and gives both renderings one home.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log. Ordering is WAL order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {input:?}: expected two hexadecimal halves like 16/B374D848")]
pub struct ParseLsnError {
    input: String,
}

impl Lsn {
    /// The invalid LSN `0/0`; `START_REPLICATION` at it resumes from the slot.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN as the signed integer stored in `_lsn` and in Delta `txn` versions.
    ///
    /// WAL positions stay far below 2^63 (8 EiB of WAL), so the conversion is lossless.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// The LSN from a stored signed integer; negative values (never written) map to zero.
    pub fn from_i64(value: i64) -> Lsn {
        Lsn(u64::try_from(value).unwrap_or(0))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_form() {
        let lsn: Lsn = "16/B374D848".parse().expect("valid");
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "16", "/1", "1/", "G/1", "1/2/3", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn orders_by_wal_position() {
        let a: Lsn = "0/FFFFFFFF".parse().expect("valid");
        let b: Lsn = "1/0".parse().expect("valid");
        assert!(a < b);
    }
}
