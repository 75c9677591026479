//! Source writes that run beside pg2lake: a reproducible random generator and a loop of
//! transactions that goes on until the test says stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A deterministic xorshift generator: a load is reproducible from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs the SQL `transaction(n)` gives for n = 1, 2, … until `stop` is set, sleeping
/// `pause` after each; returns how many ran.
pub async fn write_until(
    client: tokio_postgres::Client,
    stop: Arc<AtomicBool>,
    pause: Duration,
    mut transaction: impl FnMut(u64) -> String,
) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        client
            .batch_execute(&transaction(n))
            .await
            .expect("source write");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    n
}
