//! Edits of wire bytes for the property tests of the decoders (`pg::pgoutput`,
//! `snapshot::copy`): a valid message or stream, built with [`Wire`] and mutated, must
//! fail cleanly.

use proptest::prelude::*;
use proptest::sample::Index;

/// One edit of a message's bytes.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Truncate(Index),
    FlipBit(Index, u8),
    Replace(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

/// Any one edit.
pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<Index>().prop_map(Mutation::Delete),
    ]
}

/// Applies `mutation` to `bytes`.
pub(crate) fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if let Mutation::Insert(at, b) = mutation {
        bytes.insert(at.index(bytes.len() + 1), *b);
        return;
    }
    // The other edits need a byte to act on.
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Mutation::FlipBit(at, bit) => {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::Replace(at, b) => {
            let at = at.index(bytes.len());
            bytes[at] = *b;
        }
        Mutation::Delete(at) => {
            bytes.remove(at.index(bytes.len()));
        }
        Mutation::Insert(..) => {}
    }
}

/// A count or length field of an encoded message or stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizeField {
    /// Offset of its first byte.
    pub(crate) at: usize,
    /// 2 (Int16) or 4 (Int32) bytes.
    pub(crate) width: usize,
}

/// Wire bytes being built by a test encoder, with where their count and length fields
/// are, so that a test can inflate one.
#[derive(Default)]
pub(crate) struct Wire {
    pub(crate) bytes: Vec<u8>,
    pub(crate) sizes: Vec<SizeField>,
}

impl Wire {
    /// Appends bytes.
    pub(crate) fn put(&mut self, v: &[u8]) {
        self.bytes.extend_from_slice(v);
    }

    /// Appends one byte.
    pub(crate) fn byte(&mut self, v: u8) {
        self.bytes.push(v);
    }

    /// Appends a count or length field (its big-endian bytes) and records where it is.
    pub(crate) fn size(&mut self, v: &[u8]) {
        self.sizes.push(SizeField {
            at: self.bytes.len(),
            width: v.len(),
        });
        self.put(v);
    }

    /// A copy of the bytes with the field `which` picks set to `huge`'s big-endian bytes
    /// (its low-order end for a 2-byte field); `None` when there is no such field.
    pub(crate) fn inflated(&self, which: Index, huge: u32) -> Option<(Vec<u8>, SizeField)> {
        if self.sizes.is_empty() {
            return None;
        }
        let field = self.sizes[which.index(self.sizes.len())];
        let mut bytes = self.bytes.clone();
        let value = huge.to_be_bytes();
        bytes[field.at..field.at + field.width].copy_from_slice(&value[..field.width]);
        Some((bytes, field))
    }
}
