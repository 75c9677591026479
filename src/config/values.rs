//! Value types of settings: byte sizes (`64MiB`) and secrets that never print.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count, read from `1000`, `100kB`, `10MB` (decimal), `64MiB`, `1 GiB` (binary).
/// Displays in binary units (`64MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` bytes.
    pub const fn b(n: u64) -> ByteSize {
        ByteSize(n)
    }
    /// `n` KiB.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }
    /// The number of bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

const BINARY_UNITS: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a size: {reason} (write e.g. 1000, 100kB, 10MB, 64MiB or 1GiB)")]
pub struct ByteSizeError {
    /// The text that did not parse.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<ByteSize, ByteSizeError> {
        let fail = |reason: String| ByteSizeError {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let multiplier: u128 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" | "ki" => 1 << 10,
            "mib" | "mi" => 1 << 20,
            "gib" | "gi" => 1 << 30,
            "tib" | "ti" => 1 << 40,
            other => {
                return Err(fail(format!(
                    "unknown unit {other:?} (units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
                )));
            }
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(fail("no number".to_owned()));
        }
        if fraction.contains('.') || fraction.len() > 9 || whole.len() > 20 {
            return Err(fail("not a number pg2lake can read".to_owned()));
        }
        // Exact integer arithmetic: "1.5GiB" is 1610612736 bytes, not a float near it.
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(9));
        let digits = |s: &str| {
            if s.is_empty() {
                Ok(0)
            } else {
                s.parse::<u128>()
            }
        };
        let (Ok(whole), Ok(fraction)) = (digits(whole), digits(fraction)) else {
            return Err(fail("not a number".to_owned()));
        };
        let Some(scaled) = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(fraction))
            .and_then(|v| v.checked_mul(multiplier))
        else {
            return Err(fail("too large".to_owned()));
        };
        if !scaled.is_multiple_of(scale) {
            return Err(fail("not a whole number of bytes".to_owned()));
        }
        u64::try_from(scaled / scale)
            .map(ByteSize)
            .map_err(|_| fail("too large".to_owned()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0B");
        }
        if let Some((unit, size)) = BINARY_UNITS
            .iter()
            .find(|(_, size)| n.is_multiple_of(*size))
        {
            return write!(f, "{}{unit}", n / size);
        }
        match BINARY_UNITS.iter().find(|(_, size)| n >= *size) {
            // Only for display: an approximation is clearer than 10000000B.
            Some((unit, size)) => write!(f, "{:.2}{unit}", n as f64 / *size as f64),
            None => write!(f, "{n}B"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Exact: the unit form when it is exact, else the plain byte count.
        if self.0.is_multiple_of(1024) {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 64MiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is not a size: it is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// A secret string that never prints itself: `Debug`, `Display` and `Serialize` all
/// show `***`. Read it with [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Secret {
        Secret(secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}
