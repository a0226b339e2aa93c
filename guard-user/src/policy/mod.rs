//! Policies: which binaries may do what inside protected directories.
//!
//! A policy is a JSON document (its JSON Schema is [`schema()`]):
//!
//! ```json
//! {
//!   "mode": "enforce",
//!   "protected": [
//!     { "path": "/var/lib/mysql",
//!       "rules": [
//!         { "name": "mariadb server", "binaries": ["/usr/sbin/mariadbd"],
//!           "started_by": { "supervisor": "/usr/lib/systemd/systemd" },
//!           "access": ["read", "write", "create", "delete", "rename", "link", "setattr"],
//!           "effect": "allow" },
//!         { "binaries": [{ "path": "/usr/bin/mariabackup", "sha256": "<64 hex digits>" }],
//!           "uid": 0, "access": ["read"], "effect": "audit" }
//!       ] }
//!   ],
//!   "libraries": ["/usr/lib/x86_64-linux-gnu", "/usr/lib/mysql/plugin"]
//! }
//! ```
//!
//! Inside a protected directory everything a rule does not allow is denied,
//! root included. The three stages:
//! - [`parse`] checks the document's shape and reports every problem with its
//!   JSON pointer;
//! - [`resolve`] checks it against the running system (directories, binaries,
//!   content hashes, overlapping directories) and records kernel identities;
//! - [`ResolvedPolicy::entries`] compiles it to the kernel's map entries.

mod compile;
mod devices;
mod identity;
mod immutable;
mod libraries;
mod links;
mod parse;
mod pin_start;
mod resolve;
mod schema;

use std::fmt;
use std::path::PathBuf;

use guard_common::access as access_bits;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use compile::PolicyEntries;
pub use devices::{filesystem_devices, swap_files, DeviceBelow, PROC_SWAPS};
pub use identity::kernel_identity;
pub use immutable::{ResolvedImmutable, ResolvedImmutables};
pub use libraries::ResolvedLibrary;
pub use links::check_hard_links;
pub use parse::parse;
pub use pin_start::pin_start;
pub use resolve::{
    kernel_dev, kernel_dev_parts, passthrough_bits, passthrough_nodes, resolve, sha256_file,
    ResolvedBinary, ResolvedPoint, ResolvedPolicy, RuleInfo,
};
pub use schema::schema;

/// A parsed policy, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub mode: Mode,
    pub protected: Vec<Protected>,
    /// When present, every binary the rules allow may map executable only
    /// itself and these files (a directory stands for the files directly in
    /// it): no LD_PRELOAD, plugin or memfd code from anywhere else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libraries: Option<Vec<PathBuf>>,
    /// Files and folders (with everything below them) nobody may change
    /// while the policy is active: the database's configuration, the
    /// scripts that start it. Symlinks are followed and their chain kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub immutable: Option<Vec<PathBuf>>,
}

/// What happens to an access no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny it and log it.
    Enforce,
    /// Log that it would have been denied, and allow it.
    Audit,
}

/// A protected directory and the rules that open it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Protected {
    pub path: PathBuf,
    pub rules: Vec<Rule>,
}

/// Who (binaries, optionally restricted to a uid and a gid) may do what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub binaries: Vec<Binary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    pub access: Access,
    pub effect: Effect,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartedBy>,
}

/// Who may start a rule's binaries: only a process running `supervisor`
/// (for a script, the script), directly or through the `through` programs
/// (such as `nohup`), may execute them while the policy is active. Anything
/// else that executes them (root's shell, the dynamic loader running them as
/// a library, a second copy with other options) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartedBy {
    pub supervisor: Binary,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub through: Vec<Binary>,
    /// The exact argument list (`argv`, from argv[0]) the binaries must run
    /// with; with any other the process is killed before it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Vec<String>>,
    /// The only environment variables the binaries may run with: `NAME`
    /// (any value) or `NAME=VALUE` (only that value); with any other the
    /// process is killed before it runs. An empty list allows none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<String>>,
}

/// A binary by path, optionally pinned to the SHA-256 of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binary {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Allow silently.
    Allow,
    /// Allow and log.
    Audit,
}

impl Mode {
    /// The `PolicyMeta::mode` value.
    pub fn kernel_value(self) -> u32 {
        match self {
            Mode::Enforce => guard_common::MODE_ENFORCE,
            Mode::Audit => guard_common::MODE_AUDIT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl Effect {
    pub fn name(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Audit => "audit",
        }
    }
}

/// A set of access bits (`guard_common::access`). Written as a list of names
/// in bit order, e.g. `["read", "write"]`; displayed as `read,write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(pub u32);

impl Access {
    /// The names of the bits set, in bit order. Unknown bits are ignored.
    pub fn names(self) -> Vec<&'static str> {
        access_bits::NAMES
            .iter()
            .filter(|(_, bit)| self.0 & bit != 0)
            .map(|(name, _)| *name)
            .collect()
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for Access {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        let mut bits = 0;
        for name in &names {
            bits |= access_bits::from_name(name)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown access name `{name}`")))?;
        }
        Ok(Access(bits))
    }
}

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Sha256Digest> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(Sha256Digest(digest))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Sha256Digest::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

impl Policy {
    /// The policy in canonical form: compact JSON, fields in a fixed order,
    /// every binary as an object, access names in bit order, digests in
    /// lowercase. Two documents that mean the same policy give the same text
    /// whatever their layout.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a policy always serializes")
    }

    /// Hex SHA-256 of [`Policy::canonical_json`]: names the policy in logs and status.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        use std::io::Write;
        // Written through a buffer straight into the hasher: the canonical
        // text of a large policy is never built whole.
        let mut hasher = Sha256::new();
        let mut writer = std::io::BufWriter::with_capacity(16 * 1024, &mut hasher);
        serde_json::to_writer(&mut writer, self).expect("a policy always serializes");
        writer.flush().expect("hashing cannot fail");
        drop(writer);
        hex::encode(hasher.finalize())
    }

    /// Label of a rule in logs: its name, or its position.
    pub fn rule_label(&self, point: usize, rule: usize) -> String {
        match &self.protected[point].rules[rule].name {
            Some(name) => name.clone(),
            None => format!("protected[{point}].rules[{rule}]"),
        }
    }
}

/// One problem in a policy, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// A JSON pointer into the document (`/protected/0/rules/1/access/2`;
    /// empty for the whole document), or `line L, column C` for JSON syntax errors.
    pub location: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = if self.location.is_empty() {
            "/"
        } else {
            &self.location
        };
        write!(f, "{location}: {}", self.message)
    }
}

/// Every problem found in a policy, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct PolicyErrors(pub Vec<PolicyError>);

fn lines(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl PolicyErrors {
    /// True when some problem is at `location` and its message contains `text`.
    pub fn contains(&self, location: &str, text: &str) -> bool {
        self.0
            .iter()
            .any(|e| e.location == location && e.message.contains(text))
    }
}

/// A JSON pointer (RFC 6901) being built while walking a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Pointer(String);

impl Pointer {
    pub(crate) fn root() -> Pointer {
        Pointer(String::new())
    }

    // Built for every field of every rule, errors or not: plain pushes, not
    // `format!`, keep a large policy's parse cheap.
    pub(crate) fn key(&self, key: &str) -> Pointer {
        let mut pointer = String::with_capacity(self.0.len() + 1 + key.len());
        pointer.push_str(&self.0);
        pointer.push('/');
        for c in key.chars() {
            match c {
                '~' => pointer.push_str("~0"),
                '/' => pointer.push_str("~1"),
                c => pointer.push(c),
            }
        }
        Pointer(pointer)
    }

    pub(crate) fn index(&self, index: usize) -> Pointer {
        use std::fmt::Write;
        let mut pointer = String::with_capacity(self.0.len() + 8);
        pointer.push_str(&self.0);
        let _ = write!(pointer, "/{index}");
        Pointer(pointer)
    }

    pub(crate) fn protected(point: usize) -> Pointer {
        Pointer::root().key("protected").index(point)
    }

    #[cfg(test)]
    pub(crate) fn rule(point: usize, rule: usize) -> Pointer {
        Pointer::protected(point).key("rules").index(rule)
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> PolicyError {
        PolicyError {
            location: self.0.clone(),
            message: message.into(),
        }
    }
}

/// A place in a document, rendered to a [`Pointer`] only when a problem is
/// found there: walking a policy of thousands of rules then builds no
/// strings for the places that are fine.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place<'a> {
    Root,
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl<'a> Place<'a> {
    pub(crate) fn key<'b>(&'b self, key: &'b str) -> Place<'b> {
        Place::Key(self, key)
    }

    pub(crate) fn index(&self, index: usize) -> Place<'_> {
        Place::Index(self, index)
    }

    pub(crate) fn pointer(&self) -> Pointer {
        match self {
            Place::Root => Pointer::root(),
            Place::Key(parent, key) => parent.pointer().key(key),
            Place::Index(parent, index) => parent.pointer().index(*index),
        }
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> PolicyError {
        self.pointer().error(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escapes_tilde_and_slash() {
        let p = Pointer::root().key("a/b").key("c~d").index(3);
        assert_eq!(p.0, "/a~1b/c~0d/3");
    }

    #[test]
    fn places_render_as_the_pointers_they_stand_for() {
        let root = Place::Root;
        let all = root.key("protected");
        let point = all.index(2);
        let rules = point.key("rules");
        let rule = rules.index(1);
        let access = rule.key("a/b~");
        assert_eq!(
            access.index(3).pointer(),
            Pointer::rule(2, 1).key("a/b~").index(3)
        );
        assert_eq!(Place::Root.pointer(), Pointer::root());
        assert_eq!(rules.error("bad").to_string(), "/protected/2/rules: bad");
    }

    #[test]
    fn errors_display_one_per_line_with_location() {
        let errors = PolicyErrors(vec![
            Pointer::root().error("missing field `mode`"),
            Pointer::rule(0, 1).key("access").index(2).error("bad"),
        ]);
        assert_eq!(
            errors.to_string(),
            "/: missing field `mode`\n/protected/0/rules/1/access/2: bad"
        );
    }

    #[test]
    fn access_displays_and_round_trips_in_bit_order() {
        let access = Access(access_bits::WRITE | access_bits::READ | access_bits::SETATTR);
        assert_eq!(access.to_string(), "read,write,setattr");
        let json = serde_json::to_string(&access).unwrap();
        assert_eq!(json, r#"["read","write","setattr"]"#);
        assert_eq!(serde_json::from_str::<Access>(&json).unwrap(), access);
        assert!(serde_json::from_str::<Access>(r#"["reed"]"#).is_err());
    }

    #[test]
    fn digest_parses_either_case_and_prints_lowercase() {
        let upper = "AB".repeat(32);
        let digest = Sha256Digest::from_hex(&upper).unwrap();
        assert_eq!(digest.to_string(), "ab".repeat(32));
        assert!(Sha256Digest::from_hex("abc").is_none());
        assert!(Sha256Digest::from_hex(&"zz".repeat(32)).is_none());
    }
}
