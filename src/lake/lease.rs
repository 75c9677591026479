//! The maintenance lease of a table: at most one compactor (of `pg2lake run` or of a
//! `pg2lake maintain` job) works on a table at a time.
//!
//! The lease is a sequence of objects in the table's folder, each written with a
//! create-only put, which the object store grants to exactly one writer:
//!
//! ```text
//!  _pg2lake_maintenance/lease-00000000000000000007.json  {holder: A, expires: t}
//!  acquire: read the newest; held by another and not expired ─► busy, skip the table
//!           else create the next number ─► it is ours (the put that loses: busy)
//!  renew:   create the next number again, with a later expiry (lost if someone else did)
//!  release: create the next number, expired at once
//! ```
//!
//! No object is ever overwritten, so two takers of an expired lease cannot both win.
//! The lease saves work; it is not what keeps the table correct: a compaction's commit
//! checks that the files it replaces are still in the table (`table::commit`), so a
//! holder whose clock drifted past its expiry can waste its rewrite but never duplicate
//! rows. The folder starts with `_`, which Delta readers and VACUUM leave alone.

use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// The folder of the lease objects, inside the table's folder.
pub const LEASE_FOLDER: &str = "_pg2lake_maintenance";
/// How many superseded lease objects stay behind the newest one.
const KEEP_SUPERSEDED: u64 = 2;

/// One lease object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    holder: String,
    /// Unix milliseconds after which the lease is free; 0 once released.
    expires_at_ms: i64,
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    store: std::sync::Arc<dyn ObjectStore>,
    holder: String,
    number: u64,
    duration: Duration,
}

/// What [`Lease::acquire`] found.
#[derive(Debug)]
pub enum Acquired {
    /// The lease is ours.
    Held(Lease),
    /// Another holder has it until its expiry.
    Busy {
        /// The other holder.
        holder: String,
    },
}

impl Lease {
    /// Takes the lease of the table whose folder `store` is rooted at, for `duration`,
    /// as `holder` (a name unique to this process).
    pub async fn acquire(
        store: std::sync::Arc<dyn ObjectStore>,
        holder: &str,
        duration: Duration,
    ) -> Result<Acquired, object_store::Error> {
        let newest = newest(store.as_ref()).await?;
        if let Some((_, record)) = &newest
            && record.holder != holder
            && record.expires_at_ms > now_ms()
        {
            return Ok(Acquired::Busy {
                holder: record.holder.clone(),
            });
        }
        let number = newest.map_or(0, |(number, _)| number + 1);
        let lease = Lease {
            store,
            holder: holder.to_owned(),
            number,
            duration,
        };
        if !lease.put(number, now_ms() + millis(duration)).await? {
            let holder = newest_holder(lease.store.as_ref()).await?;
            return Ok(Acquired::Busy { holder });
        }
        lease.forget_superseded().await;
        Ok(Acquired::Held(lease))
    }

    /// Extends the lease by its duration from now. `false` when another holder took it
    /// (this one had expired): the caller must stop.
    pub async fn renew(&mut self) -> Result<bool, object_store::Error> {
        let next = self.number + 1;
        if !self.put(next, now_ms() + millis(self.duration)).await? {
            return Ok(false);
        }
        self.number = next;
        self.forget_superseded().await;
        Ok(true)
    }

    /// Gives the lease up (best effort: an unreleased lease frees itself at its expiry).
    pub async fn release(self) {
        if let Err(err) = self.put(self.number + 1, 0).await {
            tracing::debug!(error = %err, "could not release the maintenance lease; it expires on its own");
        }
    }

    /// Writes lease object `number`; `false` when it exists already.
    async fn put(&self, number: u64, expires_at_ms: i64) -> Result<bool, object_store::Error> {
        let record = Record {
            holder: self.holder.clone(),
            expires_at_ms,
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&lease_path(number), PutPayload::from(body), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Deletes lease objects older than the last few (best effort).
    async fn forget_superseded(&self) {
        let Some(below) = self.number.checked_sub(KEEP_SUPERSEDED) else {
            return;
        };
        for (number, path) in list(self.store.as_ref()).await.unwrap_or_default() {
            if number < below {
                let _ = self.store.delete(&path).await;
            }
        }
    }
}

/// Whether some holder has the lease of the table whose folder `store` is rooted at.
pub async fn is_held(store: &dyn ObjectStore) -> Result<bool, object_store::Error> {
    Ok(newest(store)
        .await?
        .is_some_and(|(_, record)| record.expires_at_ms > now_ms()))
}

async fn newest_holder(store: &dyn ObjectStore) -> Result<String, object_store::Error> {
    Ok(newest(store)
        .await?
        .map(|(_, record)| record.holder)
        .unwrap_or_default())
}

/// The newest lease object and its number.
async fn newest(store: &dyn ObjectStore) -> Result<Option<(u64, Record)>, object_store::Error> {
    let Some((number, path)) = list(store).await?.into_iter().max_by_key(|(n, _)| *n) else {
        return Ok(None);
    };
    let bytes = match store.get(&path).await {
        Ok(result) => result.bytes().await?,
        // Superseded and deleted between the listing and the read: a newer one exists.
        Err(object_store::Error::NotFound { .. }) => return Box::pin(newest(store)).await,
        Err(err) => return Err(err),
    };
    // An unreadable record (a torn write cannot happen with a single put; a foreign file
    // can) counts as expired.
    let record = serde_json::from_slice(&bytes).unwrap_or(Record {
        holder: String::new(),
        expires_at_ms: 0,
    });
    Ok(Some((number, record)))
}

/// The lease objects, by number.
async fn list(store: &dyn ObjectStore) -> Result<Vec<(u64, Path)>, object_store::Error> {
    let prefix = Path::from(LEASE_FOLDER);
    let mut listing = store.list(Some(&prefix));
    let mut found = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let number = meta
            .location
            .filename()
            .and_then(|name| name.strip_prefix("lease-"))
            .and_then(|name| name.strip_suffix(".json"))
            .and_then(|number| number.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, meta.location));
        }
    }
    Ok(found)
}

fn lease_path(number: u64) -> Path {
    Path::from(format!("{LEASE_FOLDER}/lease-{number:020}.json"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;

    fn store() -> Arc<dyn ObjectStore> {
        Arc::new(InMemory::new())
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_release() {
        let store = store();
        let minute = Duration::from_secs(60);
        let Acquired::Held(a) = Lease::acquire(store.clone(), "a", minute).await.unwrap() else {
            panic!("a free lease was not granted");
        };
        assert!(is_held(store.as_ref()).await.unwrap());
        match Lease::acquire(store.clone(), "b", minute).await.unwrap() {
            Acquired::Busy { holder } => assert_eq!(holder, "a"),
            Acquired::Held(_) => panic!("a held lease was granted twice"),
        }
        a.release().await;
        assert!(!is_held(store.as_ref()).await.unwrap());
        assert!(matches!(
            Lease::acquire(store.clone(), "b", minute).await.unwrap(),
            Acquired::Held(_)
        ));
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_holder_cannot_renew() {
        let store = store();
        let Acquired::Held(mut a) = Lease::acquire(store.clone(), "a", Duration::ZERO)
            .await
            .unwrap()
        else {
            panic!("a free lease was not granted");
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Acquired::Held(mut b) = Lease::acquire(store.clone(), "b", Duration::from_secs(60))
            .await
            .unwrap()
        else {
            panic!("an expired lease was not taken over");
        };
        assert!(
            !a.renew().await.unwrap(),
            "the old holder renewed a lease it lost"
        );
        assert!(b.renew().await.unwrap());
        assert!(b.renew().await.unwrap());
        // Superseded objects are deleted, the newest few kept.
        assert!(list(store.as_ref()).await.unwrap().len() <= 1 + KEEP_SUPERSEDED as usize);
    }

    #[tokio::test]
    async fn racing_takers_get_one_lease() {
        let store = store();
        let minute = Duration::from_secs(60);
        let takers = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { Lease::acquire(store, &format!("t{i}"), minute).await })
        });
        let mut held = 0;
        for taker in takers {
            if let Acquired::Held(_) = taker.await.unwrap().unwrap() {
                held += 1;
            }
        }
        assert_eq!(held, 1);
    }
}
