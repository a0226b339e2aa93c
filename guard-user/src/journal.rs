//! Writing entries to the systemd journal with its native protocol.
//!
//! An entry is one datagram to journald's socket holding `KEY=value\n` per
//! field, or `KEY\n` + value length (u64, little endian) + value + `\n` for a
//! value containing a newline. An entry too large for a datagram goes in a
//! sealed memfd whose descriptor is passed instead (`SCM_RIGHTS`), as journald
//! expects. Each kind of entry guard writes carries a stable `MESSAGE_ID`
//! ([`message_id`]) so tools can select it, and guard's own fields have the
//! names in [`field`].

use std::fs::File;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
use rustix::net::{
    sendmsg_addr, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
};

/// journald's native protocol socket.
pub const SOCKET_PATH: &str = "/run/systemd/journal/socket";
/// `SYSLOG_IDENTIFIER` of entries that do not set one.
pub const DEFAULT_IDENTIFIER: &str = "guardd";
/// How long a send may wait while journald's queue is full before failing.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// journald refuses longer field names.
const MAX_FIELD_NAME: usize = 64;

/// `MESSAGE_ID`s of guard's entries: 128-bit ids generated once at random and
/// never to be changed, since alerting and log searches select on them.
pub mod message_id {
    /// The kernel denied an access.
    pub const DENIED: &str = "c882119fdfb7c4d73e4c91d405c5be09";
    /// An `audit` rule allowed an access and asked for it to be logged.
    pub const AUDITED: &str = "8e6b6e857821c63747ae714553aa064c";
    /// Audit mode: the access would have been denied, and was allowed.
    pub const WOULD_DENY: &str = "0e0d2cec9d60ce0b8a7e06fcc7172483";
    /// Decision events the kernel did not send because of its rate limit.
    pub const SUPPRESSED: &str = "c93217068f7819b1d1ede2ab5b1b735a";
    pub const POLICY_APPLIED: &str = "a3d89fc51cd232298d9dc55a8e6f5937";
    pub const POLICY_REFUSED: &str = "d7d159e35dfa81dffc4c425f107fbd80";
    pub const GUARDD_STARTED: &str = "8ab93b9ec3c1b104fd15631d8d812338";
    pub const GUARDD_STOPPED: &str = "3c066e680e617cd5d4af190a2fe29ef0";
    /// Someone asked guardd to stop (`guardctl stop`); names who.
    pub const GUARDD_STOP_REQUESTED: &str = "e4cd3771c22e4162adc7c23b066f1672";
    pub const VOLUME_UNLOCKED: &str = "2d76e0d2a983f93d2803fd41eb32225e";
    pub const VOLUME_LOCKED: &str = "c29fbef211aca7c4ee3621c2c1ebf772";
    pub const VOLUME_UNLOCK_FAILED: &str = "e6a8b9074ef8dd47424b633bb58fc459";
    pub const KEY_ROTATED: &str = "9130d91c4d492b093d7a1c022595478a";
    pub const KEY_REVOKED: &str = "62d90f4cb780a55ee6c0f97ced3d52db";
    /// A remote log collector stopped answering.
    pub const COLLECTOR_DOWN: &str = "b21c22f012ac632b425c6bd59f208142";
    pub const COLLECTOR_UP: &str = "c8deaeb37d724122636be1598753132d";
    /// The local spool of log records for collectors is nearly full.
    pub const SPOOL_NEAR_FULL: &str = "9e97608261f26a333f08fdb1e5bd6d34";
    /// Policy signing refused a policy or an order (unsigned, another key,
    /// altered, an older serial, a used or foreign nonce); nothing changed.
    pub const SIGNING_REFUSED: &str = "a175415865f1ebece66958754de80174";
    /// A signed disarm order lifted enforcement; names the signing key.
    pub const GUARD_DISARMED: &str = "74e8e3004447a72727794c68d60dbcef";
    /// guardd refused to start with a trusted key other than the pinned one.
    pub const TRUST_KEY_REFUSED: &str = "5ab3b0ecd8e8fb66f6a886e4713b24dc";

    /// Every message ID with the event kind it stands for.
    pub const KINDS: [(&str, &str); 19] = [
        (DENIED, "denied"),
        (AUDITED, "audited"),
        (WOULD_DENY, "would-deny"),
        (SUPPRESSED, "suppressed"),
        (POLICY_APPLIED, "policy_applied"),
        (POLICY_REFUSED, "policy_refused"),
        (GUARDD_STARTED, "guardd_started"),
        (GUARDD_STOPPED, "guardd_stopped"),
        (VOLUME_UNLOCKED, "volume_unlocked"),
        (VOLUME_LOCKED, "volume_locked"),
        (VOLUME_UNLOCK_FAILED, "volume_unlock_failed"),
        (KEY_ROTATED, "key_rotated"),
        (KEY_REVOKED, "key_revoked"),
        (COLLECTOR_DOWN, "collector_down"),
        (COLLECTOR_UP, "collector_up"),
        (SPOOL_NEAR_FULL, "spool_near_full"),
        (SIGNING_REFUSED, "signing_refused"),
        (GUARD_DISARMED, "guard_disarmed"),
        (TRUST_KEY_REFUSED, "trust_key_refused"),
    ];

    /// The event kind of a message ID ("unknown" for none of guard's).
    pub fn name(id: &str) -> &'static str {
        KINDS
            .iter()
            .find(|(i, _)| *i == id)
            .map_or("unknown", |(_, kind)| kind)
    }
}

/// Field names of guard's entries.
pub mod field {
    // Standard journal fields.
    pub const MESSAGE: &str = "MESSAGE";
    pub const MESSAGE_ID: &str = "MESSAGE_ID";
    pub const PRIORITY: &str = "PRIORITY";
    pub const SYSLOG_IDENTIFIER: &str = "SYSLOG_IDENTIFIER";

    // Decision entries (DENIED, AUDITED, WOULD_DENY, SUPPRESSED).
    /// The object's path (protected directory + names from the event).
    pub const PATH: &str = "GUARD_PATH";
    pub const INODE: &str = "GUARD_INODE";
    /// Kernel `dev_t` of the object's filesystem, as `major:minor`.
    pub const DEVICE: &str = "GUARD_DEVICE";
    pub const PID: &str = "GUARD_PID";
    pub const UID: &str = "GUARD_UID";
    pub const GID: &str = "GUARD_GID";
    pub const COMM: &str = "GUARD_COMM";
    /// The acting process's binary.
    pub const EXE: &str = "GUARD_EXE";
    /// Access names as in the policy, comma separated (`read,write`).
    pub const ACCESS: &str = "GUARD_ACCESS";
    /// One of the [`super::verdict`] names.
    pub const VERDICT: &str = "GUARD_VERDICT";
    /// The deciding rule's label, or `default-deny`.
    pub const RULE: &str = "GUARD_RULE";
    /// The LSM hook (`guard_common::hook::name`).
    pub const HOOK: &str = "GUARD_HOOK";
    /// SUPPRESSED entries: how many events were not sent.
    pub const SUPPRESSED: &str = "GUARD_SUPPRESSED";
    /// SUPPRESSED entries: how many events the ring buffer had no room for.
    pub const DROPPED: &str = "GUARD_DROPPED";
    /// POLICY_APPLIED and GUARDD_STARTED: what the operator should know
    /// ("; "-separated), such as a kernel unloaded from kexec.
    pub const WARNINGS: &str = "GUARD_WARNINGS";

    // Policy signing (SIGNING_REFUSED, GUARD_DISARMED, TRUST_KEY_REFUSED, and
    // POLICY_APPLIED / GUARDD_STARTED / GUARDD_STOP_REQUESTED when signing is on).
    /// `on` or `off`.
    pub const POLICY_SIGNING: &str = "GUARD_POLICY_SIGNING";
    /// Fingerprint of the pinned trusted key.
    pub const TRUST_KEY: &str = "GUARD_TRUST_KEY";
    /// Fingerprint of the key a document names as its signer.
    pub const SIGNER: &str = "GUARD_SIGNER";
    /// What was refused: `policy`, `disarm order`, `stop order`, `trust key`.
    pub const DOCUMENT: &str = "GUARD_DOCUMENT";
    /// Why, in one word (`signing::Refusal::code`): `unsigned`, `wrong-key`,
    /// `bad-signature`, `stale-serial`, `wrong-nonce`, ...
    pub const REFUSAL: &str = "GUARD_REFUSAL";
    /// Why, in a sentence.
    pub const REASON: &str = "GUARD_REASON";
    /// A signed policy's serial, and the last applied one.
    pub const SERIAL: &str = "GUARD_SERIAL";
    pub const LAST_SERIAL: &str = "GUARD_LAST_SERIAL";
}

/// Values of [`field::VERDICT`].
pub mod verdict {
    pub const DENIED: &str = "denied";
    pub const AUDITED: &str = "audited";
    pub const WOULD_DENY: &str = "would-deny";
    pub const SUPPRESSED: &str = "suppressed";
}

/// syslog priorities for the `PRIORITY` field.
pub mod priority {
    pub const ERR: &str = "3";
    pub const WARNING: &str = "4";
    pub const NOTICE: &str = "5";
    pub const INFO: &str = "6";
}

/// A writer of journal entries.
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
    identifier: String,
}

impl Journal {
    /// Connects to the system journal; fails if journald is not listening.
    pub fn connect() -> io::Result<Journal> {
        Journal::connect_to(SOCKET_PATH)
    }

    /// Connects to a journald native socket at `path`.
    pub fn connect_to(path: impl AsRef<Path>) -> io::Result<Journal> {
        let path = path.as_ref().to_path_buf();
        // Probe now so a missing journald is reported at start-up. Entries are
        // then sent by address, not over this connection, so a journald
        // restart does not leave the writer talking to a dead socket.
        UnixDatagram::unbound()?
            .connect(&path)
            .map_err(|e| context(e, &path))?;
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Journal {
            socket,
            path,
            identifier: DEFAULT_IDENTIFIER.to_string(),
        })
    }

    /// Uses `identifier` as `SYSLOG_IDENTIFIER` of entries that do not set one.
    pub fn with_identifier(mut self, identifier: &str) -> Journal {
        self.identifier = identifier.to_string();
        self
    }

    /// Writes one entry. Field names must be uppercase letters, digits and
    /// underscores, not start with an underscore or a digit, and be at most
    /// 64 characters; values may hold anything, newlines included.
    pub fn send(&self, fields: &[(&str, &str)]) -> io::Result<()> {
        let entry = encode(fields, &self.identifier)?;
        match self.socket.send_to(&entry, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_in_memfd(&entry)
            }
            Err(e) => Err(context(e, &self.path)),
        }
    }

    /// Sends an entry too large for a datagram: journald reads it from a
    /// memfd sealed against change.
    fn send_in_memfd(&self, entry: &[u8]) -> io::Result<()> {
        let fd = memfd_create(
            "guard-journal-entry",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let mut file = File::from(fd);
        file.write_all(entry)?;
        fcntl_add_seals(
            &file,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )?;
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other(
                "control buffer too small for one descriptor",
            ));
        }
        let address = SocketAddrUnix::new(&self.path)?;
        sendmsg_addr(
            &self.socket,
            &address,
            &[],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| context(e.into(), &self.path))?;
        Ok(())
    }
}

fn context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("journald at {}: {error}", path.display()),
    )
}

/// The datagram of one entry, `SYSLOG_IDENTIFIER` added unless given.
fn encode(fields: &[(&str, &str)], identifier: &str) -> io::Result<Vec<u8>> {
    for (name, _) in fields {
        check_field_name(name)?;
    }
    let size = fields.iter().map(|(n, v)| n.len() + v.len() + 10).sum();
    let mut entry = Vec::with_capacity(size);
    for (name, value) in fields {
        append_field(&mut entry, name, value.as_bytes());
    }
    if !fields.iter().any(|(n, _)| *n == field::SYSLOG_IDENTIFIER) {
        append_field(&mut entry, field::SYSLOG_IDENTIFIER, identifier.as_bytes());
    }
    Ok(entry)
}

fn append_field(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

/// Checks a field name against journald's rules, which would otherwise drop
/// the field silently.
pub fn check_field_name(name: &str) -> io::Result<()> {
    let problem = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_FIELD_NAME {
        Some("it is longer than 64 characters")
    } else if name.starts_with('_') {
        Some("names starting with `_` are reserved for fields journald sets itself")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("it starts with a digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        Some("only uppercase letters A-Z, digits and `_` are allowed")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid journal field name `{name}`: {problem}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_simple_and_multiline_values() {
        let entry = encode(&[("MESSAGE", "hello"), ("DETAIL", "a\nb")], "guardd").unwrap();
        let mut expected = b"MESSAGE=hello\nDETAIL\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"a\nb\nSYSLOG_IDENTIFIER=guardd\n");
        assert_eq!(entry, expected);
    }

    #[test]
    fn keeps_a_given_identifier() {
        let entry = encode(&[("SYSLOG_IDENTIFIER", "guardctl")], "guardd").unwrap();
        assert_eq!(entry, b"SYSLOG_IDENTIFIER=guardctl\n");
    }

    #[test]
    fn empty_values_are_allowed() {
        assert_eq!(
            encode(&[("A", "")], "x").unwrap(),
            b"A=\nSYSLOG_IDENTIFIER=x\n"
        );
    }

    #[test]
    fn refuses_bad_field_names() {
        for (name, why) in [
            ("", "empty"),
            ("message", "uppercase"),
            ("GUARD-PATH", "uppercase"),
            ("_PID", "reserved"),
            ("1ST", "digit"),
            ("ÄRGER", "uppercase"),
        ] {
            let e = encode(&[("MESSAGE", "x"), (name, "v")], "guardd").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
            assert!(e.to_string().contains(why), "{name}: {e}");
        }
        let long = "A".repeat(65);
        assert!(check_field_name(&long).is_err());
        assert!(check_field_name(&long[..64]).is_ok());
        assert!(check_field_name("GUARD_PATH_2").is_ok());
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        use message_id::*;
        let ids = [
            DENIED,
            AUDITED,
            WOULD_DENY,
            SUPPRESSED,
            POLICY_APPLIED,
            POLICY_REFUSED,
            GUARDD_STARTED,
            GUARDD_STOPPED,
            VOLUME_UNLOCKED,
            VOLUME_LOCKED,
            VOLUME_UNLOCK_FAILED,
            KEY_ROTATED,
            KEY_REVOKED,
            COLLECTOR_DOWN,
            COLLECTOR_UP,
            SPOOL_NEAR_FULL,
            SIGNING_REFUSED,
            GUARD_DISARMED,
            TRUST_KEY_REFUSED,
        ];
        for id in ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn connect_fails_clearly_without_journald() {
        let dir = tempfile::tempdir().unwrap();
        let e = Journal::connect_to(dir.path().join("socket")).unwrap_err();
        assert!(e.to_string().contains("journald at"), "{e}");
    }
}
