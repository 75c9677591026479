//! Edits of wire bytes for the property tests of the decoders (`pg::pgoutput`,
//! `snapshot::copy`): a valid message or stream, mutated, must fail cleanly.

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
