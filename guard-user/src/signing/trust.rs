//! guardd's side of signing: the pinned trusted key, the last applied policy
//! serial, this instance's order nonce, and the checks a document must pass.
//!
//! The trusted key and the last serial are kept with guard's pins, in the
//! folder `signing` of the bpffs pin folder, as symlinks whose targets hold
//! the values (bpffs holds only pins, folders and symlinks). While guardd
//! protects itself the kernel lets nobody else create, rename or remove
//! anything there, so root cannot swap the key or reset the serial by editing
//! a file, and a restarted guardd that adopts the armed programs finds both.
//! The serial is also written to guardd's state folder, for the record and so
//! that it survives a disarm and re-arm with the same key.

use super::{fingerprint, new_nonce, DocumentError, OrderAction, Payload, SignedDocument};
use anyhow::{bail, Context, Result};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Folder of the signing state inside guard's pin folder.
pub const PIN_FOLDER: &str = "signing";
const KEY_LINK: &str = "trust-key";
const SERIAL_LINK: &str = "policy-serial";
/// File of the last serial in guardd's state folder.
const SERIAL_FILE: &str = "policy-serial.json";

/// The signing state kept with the pins.
#[derive(Debug, Clone)]
pub struct PinnedSigning {
    dir: PathBuf,
}

impl PinnedSigning {
    pub fn new(pin_root: &Path) -> PinnedSigning {
        PinnedSigning {
            dir: pin_root.join(PIN_FOLDER),
        }
    }

    /// The pinned trusted key, if there is one.
    pub fn key(&self) -> Result<Option<VerifyingKey>> {
        let path = self.dir.join(KEY_LINK);
        let Some(text) = read_value(&path)? else {
            return Ok(None);
        };
        crate::audit::checkpoint::parse_verifying_key(&text)
            .map(Some)
            .with_context(|| format!("the pinned trusted key {} is unreadable", path.display()))
    }

    pub fn pin_key(&self, key: &VerifyingKey) -> Result<()> {
        write_value(&self.dir, KEY_LINK, &hex::encode(key.as_bytes()))
    }

    /// The last applied serial (0 when none was).
    pub fn serial(&self) -> Result<u64> {
        let path = self.dir.join(SERIAL_LINK);
        match read_value(&path)? {
            None => Ok(0),
            Some(text) => text.parse().with_context(|| {
                format!("the pinned policy serial {} is unreadable", path.display())
            }),
        }
    }

    pub fn store_serial(&self, serial: u64) -> Result<()> {
        write_value(&self.dir, SERIAL_LINK, &serial.to_string())
    }
}

/// A symlink's target, or None when there is no such symlink.
fn read_value(path: &Path) -> Result<Option<String>> {
    match fs::read_link(path) {
        Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Makes `dir/name` a symlink to `value`: made under a temporary name, then
/// renamed over the old one, so a reader finds the old value or the new one.
fn write_value(dir: &Path, name: &str, value: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // bpffs refuses names with dots.
    let tmp = dir.join(format!("{name}_new"));
    let path = dir.join(name);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(value, &tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// The last serial as recorded in the state folder, with the key it is for.
#[derive(Debug, Serialize, Deserialize)]
struct SerialRecord {
    trust_key: String,
    serial: u64,
}

fn read_serial_record(path: &Path) -> Result<Option<SerialRecord>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_serial_record(path: &Path, record: &SerialRecord) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(record)?.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// guardd was given a trusted key other than the one pinned with the armed guard.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing --trust-key {given}: the armed guard has key {pinned} pinned, and only a \
     signed disarm order can change it (or start guardd without --trust-key to adopt the pinned key)"
)]
pub struct KeyMismatch {
    pub pinned: String,
    pub given: String,
}

/// Why guardd refused a document. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "unsigned {what} refused: policy signing is on, guardd accepts only documents \
         signed with key {trusted} (sign it off-host with `guardctl {how}`)"
    )]
    Unsigned {
        what: &'static str,
        trusted: String,
        how: &'static str,
    },
    #[error("{what} refused: {error}")]
    Document {
        what: &'static str,
        error: DocumentError,
    },
    #[error("{what} refused: the document is a signed {found}")]
    WrongKind { what: &'static str, found: String },
    #[error(
        "policy refused: its serial {serial} is not greater than the last applied serial \
         {last} (an older policy, or one applied before, cannot be applied again)"
    )]
    StaleSerial { serial: u64, last: u64 },
    #[error(
        "{action} order refused: it is for the guardd with nonce {found}, but this guardd's \
         nonce is {expected} (an order made for another guardd, or one already used; \
         get a fresh nonce with `guardctl order challenge`)"
    )]
    WrongNonce {
        action: OrderAction,
        found: String,
        expected: String,
    },
    #[error(
        "{what} refused: policy signing is off (guardd was armed without --trust-key), \
         so there is no key to check a signed order against"
    )]
    SigningOff { what: &'static str },
}

impl Refusal {
    /// A short stable name, for the journal's `GUARD_REFUSAL` field.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unsigned { .. } => "unsigned",
            Refusal::Document { error, .. } => error.code(),
            Refusal::WrongKind { .. } => "wrong-kind",
            Refusal::StaleSerial { .. } => "stale-serial",
            Refusal::WrongNonce { .. } => "wrong-nonce",
            Refusal::SigningOff { .. } => "signing-off",
        }
    }
}

/// A policy that passed the checks: its text, serial and signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPolicy {
    pub text: String,
    pub serial: u64,
    pub signer: String,
    pub signed_at: String,
}

/// An order that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedOrder {
    pub action: OrderAction,
    pub signer: String,
    pub signed_at: String,
}

/// guardd's trusted key and what it checks documents against.
#[derive(Debug)]
pub struct Trust {
    key: VerifyingKey,
    fingerprint: String,
    pinned: PinnedSigning,
    serial_file: PathBuf,
    last_serial: u64,
    nonce: String,
}

impl Trust {
    /// Settles which key guardd trusts: the one pinned with the armed guard,
    /// else `given` (then pinned now), else none (signing off). A `given`
    /// key other than the pinned one is a [`KeyMismatch`] error.
    pub fn establish(
        pin_root: &Path,
        state_dir: &Path,
        given: Option<&VerifyingKey>,
    ) -> Result<Option<Trust>> {
        let pinned = PinnedSigning::new(pin_root);
        let key = match (pinned.key()?, given) {
            (Some(p), Some(g)) if p != *g => {
                return Err(KeyMismatch {
                    pinned: fingerprint(&p),
                    given: fingerprint(g),
                }
                .into())
            }
            (Some(p), _) => p,
            (None, Some(g)) => {
                pinned
                    .pin_key(g)
                    .context("pinning the trusted key with the guard's pins")?;
                *g
            }
            (None, None) => return Ok(None),
        };
        let fingerprint = fingerprint(&key);
        let serial_file = state_dir.join(SERIAL_FILE);
        let recorded = read_serial_record(&serial_file)?
            .filter(|r| r.trust_key == fingerprint)
            .map_or(0, |r| r.serial);
        let last_serial = pinned.serial()?.max(recorded);
        Ok(Some(Trust {
            key,
            fingerprint,
            pinned,
            serial_file,
            last_serial,
            nonce: new_nonce()?,
        }))
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn last_serial(&self) -> u64 {
        self.last_serial
    }

    /// The nonce an order for this guardd must carry.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    fn verify(
        &self,
        text: &str,
        what: &'static str,
        how: &'static str,
    ) -> Result<Payload, Refusal> {
        if !SignedDocument::looks_signed(text) {
            return Err(Refusal::Unsigned {
                what,
                trusted: self.fingerprint.clone(),
                how,
            });
        }
        SignedDocument::from_json(text)
            .and_then(|d| d.verify(&self.key))
            .map_err(|error| Refusal::Document { what, error })
    }

    /// Checks a policy document: signed by the trusted key, with a serial
    /// greater than the last applied one.
    pub fn check_policy(&self, text: &str) -> Result<SignedPolicy, Refusal> {
        match self.verify(text, "policy", "policy sign")? {
            Payload::Policy {
                serial,
                signed_at,
                policy,
            } => {
                if serial <= self.last_serial {
                    return Err(Refusal::StaleSerial {
                        serial,
                        last: self.last_serial,
                    });
                }
                Ok(SignedPolicy {
                    text: policy,
                    serial,
                    signer: self.fingerprint.clone(),
                    signed_at,
                })
            }
            other => Err(Refusal::WrongKind {
                what: "policy",
                found: other.describe(),
            }),
        }
    }

    /// Records `serial` as the last applied one: with the pins first (what a
    /// restarted guardd trusts), then in the state folder.
    pub fn commit_serial(&mut self, serial: u64) -> Result<()> {
        if serial <= self.last_serial {
            bail!("serial {serial} is not greater than {}", self.last_serial);
        }
        self.pinned
            .store_serial(serial)
            .context("recording the policy serial with the guard's pins")?;
        self.last_serial = serial;
        write_serial_record(
            &self.serial_file,
            &SerialRecord {
                trust_key: self.fingerprint.clone(),
                serial,
            },
        )
        .context("recording the policy serial in the state folder")
    }

    /// Checks an order: signed by the trusted key, for `action`, carrying
    /// this guardd's nonce. An accepted order uses the nonce up.
    pub fn accept_order(
        &mut self,
        text: &str,
        action: OrderAction,
    ) -> Result<SignedOrder, Refusal> {
        let what = match action {
            OrderAction::Disarm => "disarm order",
            OrderAction::Stop => "stop order",
        };
        match self.verify(text, what, "order sign")? {
            Payload::Order {
                action: signed,
                nonce,
                signed_at,
            } if signed == action => {
                if nonce != self.nonce {
                    return Err(Refusal::WrongNonce {
                        action,
                        found: nonce,
                        expected: self.nonce.clone(),
                    });
                }
                // A fresh nonce, so the same order cannot be used twice.
                self.nonce = new_nonce().unwrap_or_default();
                Ok(SignedOrder {
                    action,
                    signer: self.fingerprint.clone(),
                    signed_at,
                })
            }
            other => Err(Refusal::WrongKind {
                what,
                found: other.describe(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::generate_signing_key;
    use ed25519_dalek::SigningKey;

    const POLICY: &str = r#"{"mode":"enforce","protected":[]}"#;

    struct Dirs {
        _tmp: tempfile::TempDir,
        pins: PathBuf,
        state: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        Dirs {
            pins: tmp.path().join("pins"),
            state: tmp.path().join("state"),
            _tmp: tmp,
        }
    }

    fn signed(key: &SigningKey, payload: &Payload) -> String {
        SignedDocument::sign(key, payload).to_json()
    }

    #[test]
    fn without_a_key_signing_is_off() {
        let d = dirs();
        assert!(Trust::establish(&d.pins, &d.state, None).unwrap().is_none());
    }

    #[test]
    fn the_key_is_pinned_and_a_different_one_refused() {
        let d = dirs();
        let key = generate_signing_key().unwrap();
        let other = generate_signing_key().unwrap();
        let trust = Trust::establish(&d.pins, &d.state, Some(&key.verifying_key()))
            .unwrap()
            .unwrap();
        assert_eq!(trust.fingerprint(), fingerprint(&key.verifying_key()));
        // Adopted without --trust-key: the pinned key.
        let adopted = Trust::establish(&d.pins, &d.state, None).unwrap().unwrap();
        assert_eq!(adopted.fingerprint(), trust.fingerprint());
        let err = Trust::establish(&d.pins, &d.state, Some(&other.verifying_key())).unwrap_err();
        let mismatch = err.downcast_ref::<KeyMismatch>().expect("a KeyMismatch");
        assert_eq!(mismatch.pinned, trust.fingerprint());
        assert!(err
            .to_string()
            .contains(&fingerprint(&other.verifying_key())));
        // The pinned key is unchanged by the refused attempt.
        let again = Trust::establish(&d.pins, &d.state, None).unwrap().unwrap();
        assert_eq!(again.fingerprint(), trust.fingerprint());
    }

    #[test]
    fn a_garbled_pinned_key_stops_guardd() {
        let d = dirs();
        write_value(&d.pins.join(PIN_FOLDER), KEY_LINK, "zz").unwrap();
        let err = Trust::establish(&d.pins, &d.state, None).unwrap_err();
        assert!(format!("{err:#}").contains("pinned trusted key"), "{err:#}");
    }

    #[test]
    fn policies_must_be_signed_and_newer() {
        let d = dirs();
        let key = generate_signing_key().unwrap();
        let mut trust = Trust::establish(&d.pins, &d.state, Some(&key.verifying_key()))
            .unwrap()
            .unwrap();
        let err = trust.check_policy(POLICY).unwrap_err();
        assert_eq!(err.code(), "unsigned");
        assert!(err.to_string().contains(trust.fingerprint()), "{err}");

        let other = generate_signing_key().unwrap();
        let err = trust
            .check_policy(&signed(&other, &Payload::policy(POLICY, 5)))
            .unwrap_err();
        assert_eq!(err.code(), "wrong-key", "{err}");

        let accepted = trust
            .check_policy(&signed(&key, &Payload::policy(POLICY, 5)))
            .unwrap();
        assert_eq!((accepted.serial, accepted.text.as_str()), (5, POLICY));
        trust.commit_serial(5).unwrap();

        for serial in [5, 4] {
            let err = trust
                .check_policy(&signed(&key, &Payload::policy(POLICY, serial)))
                .unwrap_err();
            assert_eq!(err.code(), "stale-serial", "{err}");
            assert!(err.to_string().contains("last applied serial 5"), "{err}");
        }
        let order = signed(&key, &Payload::order(OrderAction::Disarm, trust.nonce()));
        let err = trust.check_policy(&order).unwrap_err();
        assert_eq!(err.code(), "wrong-kind", "{err}");
        assert!(err.to_string().contains("disarm order"), "{err}");
    }

    #[test]
    fn the_serial_survives_a_restart_from_the_pins_or_the_state_folder() {
        let d = dirs();
        let key = generate_signing_key().unwrap();
        let mut trust = Trust::establish(&d.pins, &d.state, Some(&key.verifying_key()))
            .unwrap()
            .unwrap();
        trust.commit_serial(9).unwrap();
        // The state folder wiped (root can do that): the pins still know.
        fs::remove_dir_all(&d.state).unwrap();
        let adopted = Trust::establish(&d.pins, &d.state, None).unwrap().unwrap();
        assert_eq!(adopted.last_serial(), 9);
        // Disarmed (pins gone) and armed again with the same key: the state folder knows.
        let mut adopted = adopted;
        adopted.commit_serial(10).unwrap();
        fs::remove_dir_all(&d.pins).unwrap();
        let rearmed = Trust::establish(&d.pins, &d.state, Some(&key.verifying_key()))
            .unwrap()
            .unwrap();
        assert_eq!(rearmed.last_serial(), 10);
        // A record for another key does not count.
        fs::remove_dir_all(&d.pins).unwrap();
        let other = generate_signing_key().unwrap();
        let fresh = Trust::establish(&d.pins, &d.state, Some(&other.verifying_key()))
            .unwrap()
            .unwrap();
        assert_eq!(fresh.last_serial(), 0);
    }

    #[test]
    fn an_order_is_good_once_for_this_guardd() {
        let d = dirs();
        let key = generate_signing_key().unwrap();
        let mut trust = Trust::establish(&d.pins, &d.state, Some(&key.verifying_key()))
            .unwrap()
            .unwrap();
        let foreign = signed(
            &key,
            &Payload::order(OrderAction::Disarm, &new_nonce().unwrap()),
        );
        let err = trust
            .accept_order(&foreign, OrderAction::Disarm)
            .unwrap_err();
        assert_eq!(err.code(), "wrong-nonce", "{err}");

        let order = signed(&key, &Payload::order(OrderAction::Disarm, trust.nonce()));
        let err = trust.accept_order(&order, OrderAction::Stop).unwrap_err();
        assert_eq!(err.code(), "wrong-kind", "{err}");
        let accepted = trust.accept_order(&order, OrderAction::Disarm).unwrap();
        assert_eq!(accepted.signer, trust.fingerprint());
        let err = trust.accept_order(&order, OrderAction::Disarm).unwrap_err();
        assert_eq!(err.code(), "wrong-nonce", "{err}");

        let err = trust.accept_order("{}", OrderAction::Stop).unwrap_err();
        assert_eq!(err.code(), "unsigned", "{err}");
        let err = trust
            .accept_order(r#"{"signature":"x"}"#, OrderAction::Stop)
            .unwrap_err();
        assert_eq!(err.code(), "malformed", "{err}");
    }
}
