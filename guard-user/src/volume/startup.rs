//! guardd's start-up unlock: every configured volume is unlocked with its key
//! from the KMS. A volume whose KMS is unreachable or refuses stays locked,
//! the reason is reported, and the attempt is repeated with exponential
//! backoff. There is no fallback: no key is ever stored locally.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use super::{fscrypt_key_status, unlock, VolumeKind, VolumeStore};
use crate::fscrypt::KeyStatus;
use crate::kms::Kms;

/// Exponential backoff between attempts for one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay after the `failures`-th consecutive failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// What happened to one volume; guardd turns these into journal entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockEvent {
    Unlocked {
        volume: String,
        elapsed: Duration,
    },
    AlreadyUnlocked {
        volume: String,
    },
    /// Stays locked for now; tried again after `retry_in`.
    Failed {
        volume: String,
        attempt: u32,
        reason: String,
        retry_in: Duration,
    },
    /// Will not be tried again (revoked key, broken record).
    GaveUp {
        volume: String,
        reason: String,
    },
}

/// Unlocks `volumes` (every volume in `store` if `None`), retrying failures
/// with `backoff`, and returns once each is unlocked or given up on. Run it
/// as a task; dropping the future stops the retries.
pub async fn unlock_configured(
    store: VolumeStore,
    kms: std::sync::Arc<dyn Kms>,
    volumes: Option<Vec<String>>,
    backoff: Backoff,
    mut on_event: impl FnMut(UnlockEvent) + Send,
) -> Result<()> {
    let names = match volumes {
        Some(names) => names,
        None => store
            .list()
            .context("listing configured volumes")?
            .into_iter()
            .map(|r| r.name)
            .collect(),
    };
    // volume -> (consecutive failures, when to try next)
    let mut pending: BTreeMap<String, (u32, Instant)> = names
        .into_iter()
        .map(|n| (n, (0, Instant::now())))
        .collect();
    while !pending.is_empty() {
        let now = Instant::now();
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for volume in due {
            let (store, kms, name) = (store.clone(), kms.clone(), volume.clone());
            let outcome = tokio::task::spawn_blocking(move || attempt(&store, kms.as_ref(), &name))
                .await
                .context("unlock task panicked")?;
            match outcome {
                Attempt::Done(event) => {
                    pending.remove(&volume);
                    on_event(event);
                }
                Attempt::Retry(reason) => {
                    let entry = pending.get_mut(&volume).expect("pending volume");
                    entry.0 += 1;
                    let retry_in = backoff.delay(entry.0);
                    entry.1 = Instant::now() + retry_in;
                    on_event(UnlockEvent::Failed {
                        volume: volume.clone(),
                        attempt: entry.0,
                        reason,
                        retry_in,
                    });
                }
            }
        }
        if let Some(next) = pending.values().map(|(_, at)| *at).min() {
            tokio::time::sleep_until(next).await;
        }
    }
    Ok(())
}

enum Attempt {
    Done(UnlockEvent),
    Retry(String),
}

fn attempt(store: &VolumeStore, kms: &dyn Kms, volume: &str) -> Attempt {
    let record = match store.load(volume) {
        Ok(record) => record,
        // A record that cannot be read will not fix itself by waiting; but
        // a missing file might be restored, so both are retried slowly by
        // the caller only if transient. Here: give up, the admin must act.
        Err(e) => {
            return Attempt::Done(UnlockEvent::GaveUp {
                volume: volume.into(),
                reason: format!("{e:#}"),
            })
        }
    };
    if record.revoked {
        return Attempt::Done(UnlockEvent::GaveUp {
            volume: volume.into(),
            reason: "its key was revoked (crypto-shredded)".into(),
        });
    }
    if matches!(record.kind, VolumeKind::Fscrypt { .. })
        && matches!(fscrypt_key_status(&record), Ok(KeyStatus::Present))
    {
        return Attempt::Done(UnlockEvent::AlreadyUnlocked {
            volume: volume.into(),
        });
    }
    match unlock(store, kms, volume) {
        Ok(report) => Attempt::Done(UnlockEvent::Unlocked {
            volume: volume.into(),
            elapsed: report.elapsed,
        }),
        // Refusals are retried too: a KMS operator may re-enable a key, and
        // staying locked is the safe state meanwhile.
        Err(e) => Attempt::Retry(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(500), Duration::from_secs(1));
    }
}
