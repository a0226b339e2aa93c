//! Checking a policy document's shape, reporting every problem at once.
//!
//! The text is first read into a JSON tree (refusing duplicate keys, which
//! would otherwise silently override each other), then walked field by
//! field. Each problem is recorded with its JSON pointer and the walk goes on,
//! so one run shows the author everything to fix.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use guard_common::access as access_bits;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use super::{
    Access, Binary, Effect, Mode, Place, Policy, PolicyError, PolicyErrors, Protected, Rule,
    Sha256Digest, StartedBy,
};

/// The largest uid/gid a rule may name: `u32::MAX` is the kernel's wildcard.
const MAX_ID: u64 = (guard_common::ANY_ID - 1) as u64;

/// Parses and checks a policy document. On failure, lists every problem found.
pub fn parse(text: &str) -> Result<Policy, PolicyErrors> {
    let document = read_json(text).map_err(|e| PolicyErrors(vec![e]))?;
    let mut parser = Parser::default();
    let policy = parser.policy(&document);
    match policy {
        Some(policy) if parser.errors.is_empty() => Ok(policy),
        _ => Err(PolicyErrors(parser.errors)),
    }
}

fn read_json(text: &str) -> Result<Json<'_>, PolicyError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let syntax_error = |e: serde_json::Error| {
        // serde_json appends " at line L column C"; the location says it already.
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        PolicyError {
            location: format!("line {}, column {}", e.line(), e.column()),
            message: format!("invalid JSON: {message}"),
        }
    };
    let value = Json::deserialize(&mut deserializer).map_err(syntax_error)?;
    deserializer.end().map_err(syntax_error)?;
    Ok(value)
}

/// A JSON value read with duplicate object keys refused. Strings without
/// escapes borrow from the text, and objects keep their fields in a list: a
/// policy of thousands of rules is read without a copy of every string and
/// a sorted map per rule.
#[derive(Debug)]
enum Json<'t> {
    Null,
    /// No field takes a boolean: which one it is never matters.
    Bool,
    Number(Number),
    String(Cow<'t, str>),
    Array(Vec<Json<'t>>),
    Object(Object<'t>),
}

/// An object's fields in document order; no key twice.
#[derive(Debug, Default)]
struct Object<'t>(Vec<(Cow<'t, str>, Json<'t>)>);

impl<'t> Object<'t> {
    fn get(&self, key: &str) -> Option<&Json<'t>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }
}

impl Json<'_> {
    fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        /// Up to this many fields a duplicate is looked for in the list;
        /// beyond, in a set, so a huge object costs no quadratic time.
        const SCAN: usize = 16;
        let mut fields: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let duplicate = if fields.len() < SCAN {
                fields.iter().any(|(k, _)| *k == key)
            } else {
                if seen.is_empty() {
                    seen.extend(fields.iter().map(|(k, _)| k.clone()));
                }
                !seen.insert(key.clone())
            };
            if duplicate {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
            let value = map.next_value()?;
            fields.push((key, value));
        }
        Ok(Json::Object(Object(fields)))
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// What a JSON value is, for "expected X, found Y" messages.
fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// Walks a document, collecting errors. Each method returns `None` when the
/// part it checks is wrong (and has recorded why).
#[derive(Default)]
struct Parser {
    errors: Vec<PolicyError>,
}

/// An object's field: absent, present and valid, or present and invalid.
type Field<T> = Result<Option<T>, ()>;

impl Parser {
    fn error(&mut self, at: &Place, message: impl Into<String>) {
        self.errors.push(at.error(message));
    }

    fn wrong_type(&mut self, at: &Place, expected: &str, found: &Json) {
        self.error(at, format!("expected {expected}, found {}", kind(found)));
    }

    /// Checks `value` is an object with only `allowed` fields and all `required` ones.
    fn object<'v, 't>(
        &mut self,
        value: &'v Json<'t>,
        at: &Place,
        what: &str,
        allowed: &[&str],
        required: &[&str],
    ) -> Option<&'v Object<'t>> {
        let Json::Object(object) = value else {
            self.wrong_type(at, what, value);
            return None;
        };
        // Reported in key order, whatever the document's.
        let mut unknown: Vec<&str> = object.keys().filter(|k| !allowed.contains(k)).collect();
        unknown.sort_unstable();
        for key in unknown {
            let expected = allowed
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            self.error(
                &at.key(key),
                format!("unknown field `{key}`; expected one of {expected}"),
            );
        }
        for key in required {
            if !object.contains_key(key) {
                self.error(at, format!("missing field `{key}`"));
            }
        }
        Some(object)
    }

    /// A field that may be absent.
    fn optional<T>(
        &mut self,
        object: &Object,
        at: &Place,
        key: &str,
        check: impl FnOnce(&mut Self, &Json, &Place) -> Option<T>,
    ) -> Field<T> {
        match object.get(key) {
            None => Ok(None),
            Some(value) => check(self, value, &at.key(key)).map(Some).ok_or(()),
        }
    }

    /// A field that must be present; its absence was reported by [`Parser::object`].
    fn required<T>(
        &mut self,
        object: &Object,
        at: &Place,
        key: &str,
        check: impl FnOnce(&mut Self, &Json, &Place) -> Option<T>,
    ) -> Option<T> {
        self.optional(object, at, key, check).ok().flatten()
    }

    /// A list, checked item by item (every item is checked even if one fails).
    fn list<T>(
        &mut self,
        value: &Json,
        at: &Place,
        non_empty: bool,
        mut item: impl FnMut(&mut Self, &Json, &Place) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Json::Array(values) = value else {
            self.wrong_type(at, "a list", value);
            return None;
        };
        if non_empty && values.is_empty() {
            self.error(at, "must not be empty");
            return None;
        }
        let items: Vec<Option<T>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| item(self, v, &at.index(i)))
            .collect();
        items.into_iter().collect()
    }

    fn string<'v>(&mut self, value: &'v Json, at: &Place) -> Option<&'v str> {
        match value {
            Json::String(s) => Some(s),
            other => {
                self.wrong_type(at, "a string", other);
                None
            }
        }
    }

    fn policy(&mut self, value: &Json) -> Option<Policy> {
        let at = Place::Root;
        let object = self.object(
            value,
            &at,
            "a policy object",
            &["$schema", "mode", "protected", "libraries", "immutable"],
            &["mode", "protected"],
        )?;
        // `$schema` lets editors find the schema; it does not change the policy.
        let schema = self.optional(object, &at, "$schema", |p, v, at| p.string(v, at).map(drop));
        let mode = self.required(object, &at, "mode", Self::mode);
        let protected = self.required(object, &at, "protected", |p, v, at| {
            p.list(v, at, true, Self::protected)
        });
        // An empty list is meaningful: the binaries may map only themselves.
        let libraries = self.optional(object, &at, "libraries", |p, v, at| {
            p.list(v, at, false, Self::absolute_path)
        });
        let immutable = self.optional(object, &at, "immutable", |p, v, at| {
            p.list(v, at, false, Self::absolute_path)
        });
        schema.ok()?;
        Some(Policy {
            mode: mode?,
            protected: protected?,
            libraries: libraries.ok()?,
            immutable: immutable.ok()?,
        })
    }

    fn mode(&mut self, value: &Json, at: &Place) -> Option<Mode> {
        match self.string(value, at)? {
            "enforce" => Some(Mode::Enforce),
            "audit" => Some(Mode::Audit),
            other => {
                self.error(
                    at,
                    format!("unknown mode `{other}`; expected `enforce` or `audit`"),
                );
                None
            }
        }
    }

    fn protected(&mut self, value: &Json, at: &Place) -> Option<Protected> {
        let object = self.object(
            value,
            at,
            "a protected directory object",
            &["path", "rules"],
            &["path", "rules"],
        )?;
        let path = self.required(object, at, "path", Self::absolute_path);
        // An empty list is meaningful: nobody may touch the directory.
        let rules = self.required(object, at, "rules", |p, v, at| {
            p.list(v, at, false, Self::rule)
        });
        Some(Protected {
            path: path?,
            rules: rules?,
        })
    }

    fn rule(&mut self, value: &Json, at: &Place) -> Option<Rule> {
        let object = self.object(
            value,
            at,
            "a rule object",
            &[
                "name",
                "binaries",
                "uid",
                "gid",
                "access",
                "effect",
                "started_by",
            ],
            &["binaries", "access", "effect"],
        )?;
        let name = self.optional(object, at, "name", Self::rule_name);
        let binaries = self.required(object, at, "binaries", |p, v, at| {
            p.list(v, at, true, Self::binary)
        });
        let uid = self.optional(object, at, "uid", |p, v, at| p.id(v, at, "user"));
        let gid = self.optional(object, at, "gid", |p, v, at| p.id(v, at, "group"));
        let access = self.required(object, at, "access", Self::access);
        let effect = self.required(object, at, "effect", Self::effect);
        let started_by = self.optional(object, at, "started_by", Self::started_by);
        Some(Rule {
            name: name.ok()?,
            binaries: binaries?,
            uid: uid.ok()?,
            gid: gid.ok()?,
            access: access?,
            effect: effect?,
            started_by: started_by.ok()?,
        })
    }

    fn started_by(&mut self, value: &Json, at: &Place) -> Option<StartedBy> {
        let object = self.object(
            value,
            at,
            "an object with `supervisor` and optional `through`, `arguments` and `environment`",
            &["supervisor", "through", "arguments", "environment"],
            &["supervisor"],
        )?;
        let supervisor = self.required(object, at, "supervisor", Self::binary);
        let through = self.optional(object, at, "through", |p, v, at| {
            p.list(v, at, false, Self::binary)
        });
        let arguments = self.optional(object, at, "arguments", Self::arguments);
        let environment = self.optional(object, at, "environment", Self::environment);
        Some(StartedBy {
            supervisor: supervisor?,
            through: through.ok()?.unwrap_or_default(),
            arguments: arguments.ok()?,
            environment: environment.ok()?,
        })
    }

    /// An argument list as the kernel compares it: NUL-terminated strings
    /// of at most `MAX_ARGUMENT_BYTES` together.
    fn arguments(&mut self, value: &Json, at: &Place) -> Option<Vec<String>> {
        let arguments = self.list(value, at, true, |p, v, at| {
            let argument = p.string(v, at)?;
            if argument.contains('\0') {
                p.error(at, "must not contain a NUL character");
                return None;
            }
            Some(argument.to_string())
        })?;
        let bytes: usize = arguments.iter().map(|a| a.len() + 1).sum();
        if bytes > guard_common::MAX_ARGUMENT_BYTES {
            self.error(
                at,
                format!(
                    "takes {bytes} bytes with their terminating NULs; at most {} can be pinned",
                    guard_common::MAX_ARGUMENT_BYTES
                ),
            );
            return None;
        }
        Some(arguments)
    }

    /// The variables a binary may run with, each listed once. An empty list
    /// is meaningful: the binary must run with an empty environment.
    fn environment(&mut self, value: &Json, at: &Place) -> Option<Vec<String>> {
        let mut seen = HashSet::new();
        self.list(value, at, false, |p, v, at| {
            let entry = p.environment_entry(v, at)?;
            if !seen.insert(entry.clone()) {
                p.error(at, format!("{entry:?} is listed twice"));
                return None;
            }
            Some(entry)
        })
    }

    /// `NAME` or `NAME=VALUE`, as the kernel compares it: a NUL-terminated
    /// string that fits its key (`NAME=` for a name with any value).
    fn environment_entry(&mut self, value: &Json, at: &Place) -> Option<String> {
        let entry = self.string(value, at)?;
        if entry.contains('\0') {
            self.error(at, "must not contain a NUL character");
            return None;
        }
        // A value may contain `=`; the name ends at the first one.
        let (name, exact) = match entry.split_once('=') {
            Some((name, _)) => (name, true),
            None => (entry, false),
        };
        if name.is_empty() {
            self.error(
                at,
                "the variable name must not be empty (expected `NAME` or `NAME=VALUE`)",
            );
            return None;
        }
        // The kernel reads at most MAX_ENV_ENTRY_BYTES of an entry; one that
        // fills them may have been cut short, so it never matches exactly.
        let (bytes, limit, what) = if exact {
            (
                entry.len() + 1,
                guard_common::MAX_ENV_ENTRY_BYTES - 1,
                "with its terminating NUL",
            )
        } else {
            (
                name.len() + 2,
                guard_common::MAX_ENV_NAME_BYTES,
                "with `=` and a terminating NUL",
            )
        };
        if bytes > limit {
            self.error(
                at,
                format!("takes {bytes} bytes {what}; at most {limit} can be pinned"),
            );
            return None;
        }
        Some(entry.to_string())
    }

    fn rule_name(&mut self, value: &Json, at: &Place) -> Option<String> {
        let name = self.string(value, at)?;
        if name.is_empty() {
            self.error(at, "must not be empty");
            return None;
        }
        // Names appear in log lines; a control character could forge one.
        if name.chars().any(char::is_control) {
            self.error(at, "must not contain control characters");
            return None;
        }
        Some(name.to_string())
    }

    fn absolute_path(&mut self, value: &Json, at: &Place) -> Option<PathBuf> {
        let path = self.string(value, at)?;
        if !path.starts_with('/') {
            self.error(at, format!("`{path}` is not an absolute path"));
            return None;
        }
        if path.contains('\0') {
            self.error(at, "a path cannot contain a NUL character");
            return None;
        }
        Some(PathBuf::from(path))
    }

    fn binary(&mut self, value: &Json, at: &Place) -> Option<Binary> {
        if let Json::String(_) = value {
            let path = self.absolute_path(value, at)?;
            return Some(Binary { path, sha256: None });
        }
        if !value.is_object() {
            self.wrong_type(at, "a path or an object with `path` and `sha256`", value);
            return None;
        }
        let object = self.object(value, at, "an object", &["path", "sha256"], &["path"])?;
        let path = self.required(object, at, "path", Self::absolute_path);
        let sha256 = self.optional(object, at, "sha256", Self::sha256);
        Some(Binary {
            path: path?,
            sha256: sha256.ok()?,
        })
    }

    fn sha256(&mut self, value: &Json, at: &Place) -> Option<Sha256Digest> {
        let text = self.string(value, at)?;
        let digest = Sha256Digest::from_hex(text);
        if digest.is_none() {
            self.error(
                at,
                format!("`{text}` is not a SHA-256 digest (64 hex digits)"),
            );
        }
        digest
    }

    fn id(&mut self, value: &Json, at: &Place, what: &str) -> Option<u32> {
        // 0.0 counts as an integer, as in JSON Schema.
        let number = value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_ID as f64)
                .map(|f| f as u64)
        });
        match number {
            Some(id) if id <= MAX_ID => Some(id as u32),
            _ => {
                self.error(
                    at,
                    format!(
                        "expected a {what} id (an integer from 0 to {MAX_ID}), found {}",
                        describe(value)
                    ),
                );
                None
            }
        }
    }

    fn access(&mut self, value: &Json, at: &Place) -> Option<Access> {
        // Checked item by item here (not with `list`) so a duplicate is
        // reported even when another name in the list is unknown.
        let Json::Array(values) = value else {
            self.wrong_type(at, "a list", value);
            return None;
        };
        if values.is_empty() {
            self.error(at, "must not be empty");
            return None;
        }
        let mut bits = 0;
        let mut valid = true;
        for (i, value) in values.iter().enumerate() {
            let at = at.index(i);
            let Some(name) = self.string(value, &at) else {
                valid = false;
                continue;
            };
            match access_bits::from_name(name) {
                None => {
                    let known = access_bits::NAMES.map(|(n, _)| n).join(", ");
                    self.error(
                        &at,
                        format!("unknown access `{name}`; expected one of {known}"),
                    );
                    valid = false;
                }
                Some(bit) if bits & bit != 0 => {
                    self.error(&at, format!("`{name}` is listed twice"));
                    valid = false;
                }
                Some(bit) => bits |= bit,
            }
        }
        valid.then_some(Access(bits))
    }

    fn effect(&mut self, value: &Json, at: &Place) -> Option<Effect> {
        match self.string(value, at)? {
            "allow" => Some(Effect::Allow),
            "audit" => Some(Effect::Audit),
            other => {
                self.error(
                    at,
                    format!(
                        "unknown effect `{other}`; expected `allow` or `audit` \
                         (whatever no rule allows is denied)"
                    ),
                );
                None
            }
        }
    }
}

/// A short description of a value for error messages: numbers and strings
/// are shown, other values are named by kind.
fn describe(value: &Json) -> String {
    match value {
        Json::Number(n) => n.to_string(),
        Json::String(s) => format!("the string {s:?}"),
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::access::*;

    const EXAMPLE: &str = r#"{
      "mode": "enforce",
      "protected": [
        { "path": "/var/lib/mysql",
          "rules": [
            { "name": "mariadb server", "binaries": ["/usr/sbin/mariadbd"],
              "access": ["read","write","create","delete","rename","link","setattr"],
              "effect": "allow" },
            { "binaries": [{"path": "/usr/bin/mariabackup",
                            "sha256": "AB00000000000000000000000000000000000000000000000000000000000001"}],
              "uid": 0, "access": ["read"], "effect": "audit" }
          ] }
      ]
    }"#;

    fn errors(text: &str) -> PolicyErrors {
        parse(text).expect_err("the policy should be refused")
    }

    #[test]
    fn parses_the_example() {
        let policy = parse(EXAMPLE).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.protected.len(), 1);
        let point = &policy.protected[0];
        assert_eq!(point.path, PathBuf::from("/var/lib/mysql"));
        let server = &point.rules[0];
        assert_eq!(server.name.as_deref(), Some("mariadb server"));
        assert_eq!(
            server.binaries,
            vec![Binary {
                path: "/usr/sbin/mariadbd".into(),
                sha256: None
            }]
        );
        assert_eq!(
            server.access,
            Access(READ | WRITE | CREATE | DELETE | RENAME | LINK | SETATTR)
        );
        assert_eq!(server.effect, Effect::Allow);
        assert_eq!((server.uid, server.gid), (None, None));
        let backup = &point.rules[1];
        assert_eq!(backup.uid, Some(0));
        assert_eq!(backup.access, Access(READ));
        assert_eq!(backup.effect, Effect::Audit);
        let digest = backup.binaries[0].sha256.unwrap();
        assert_eq!(digest.0[0], 0xab);
        assert_eq!(digest.0[31], 0x01);
        assert_eq!(policy.rule_label(0, 0), "mariadb server");
        assert_eq!(policy.rule_label(0, 1), "protected[0].rules[1]");
    }

    #[test]
    fn audit_mode_and_empty_rules_are_accepted() {
        let policy = parse(r#"{"mode":"audit","protected":[{"path":"/srv","rules":[]}]}"#).unwrap();
        assert_eq!(policy.mode, Mode::Audit);
        assert!(policy.protected[0].rules.is_empty());
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let e = errors("{\n  \"mode\": \"enforce\",\n  \"protected\": [,]\n}");
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].location, "line 3, column 17");
        assert!(e.0[0].message.starts_with("invalid JSON: "), "{e}");
        assert!(!e.0[0].message.contains(" at line "), "{e}");
    }

    #[test]
    fn pinned_arguments_are_checked_where_they_are_written() {
        let policy = |arguments: &str| {
            format!(
                r#"{{"mode":"enforce","protected":[{{"path":"/srv","rules":[
                {{"binaries":["/usr/sbin/mariadbd"],"access":["read"],"effect":"allow",
                  "started_by":{{"supervisor":"/usr/lib/systemd/systemd","arguments":{arguments}}}}}]}}]}}"#
            )
        };
        let ok = parse(&policy(r#"["/usr/sbin/mariadbd","--user=mysql"]"#)).unwrap();
        let started_by = ok.protected[0].rules[0].started_by.as_ref().unwrap();
        assert_eq!(
            started_by.arguments.as_deref(),
            Some(&["/usr/sbin/mariadbd".to_string(), "--user=mysql".to_string()][..])
        );
        let at = "/protected/0/rules/0/started_by/arguments";
        let e = errors(&policy("[]"));
        assert_eq!(
            (e.0[0].location.as_str(), e.0[0].message.as_str()),
            (at, "must not be empty")
        );
        let e = errors(&policy(r#"["a\u0000b"]"#));
        assert_eq!(e.0[0].location, format!("{at}/0"));
        assert!(e.0[0].message.contains("must not contain a NUL"), "{e}");
        let long = format!(r#"["{}"]"#, "x".repeat(guard_common::MAX_ARGUMENT_BYTES));
        let e = errors(&policy(&long));
        assert_eq!(e.0[0].location, at);
        assert!(e.0[0].message.contains("513 bytes"), "{e}");
        let e = errors(&policy(r#""--user=mysql""#));
        assert_eq!(e.0[0].location, at);
    }

    #[test]
    fn pinned_environment_is_checked_where_it_is_written() {
        let policy = |environment: &str| {
            format!(
                r#"{{"mode":"enforce","protected":[{{"path":"/srv","rules":[
                {{"binaries":["/usr/sbin/mariadbd"],"access":["read"],"effect":"allow",
                  "started_by":{{"supervisor":"/usr/lib/systemd/systemd","environment":{environment}}}}}]}}]}}"#
            )
        };
        let pinned = |text: &str| {
            let policy = parse(&policy(text)).unwrap();
            let started_by = policy.protected[0].rules[0].started_by.clone().unwrap();
            started_by.environment.unwrap()
        };
        assert_eq!(
            pinned(r#"["LANG=C","LANG=C.UTF-8","TZ","OPTS=a=b","EMPTY="]"#),
            ["LANG=C", "LANG=C.UTF-8", "TZ", "OPTS=a=b", "EMPTY="]
        );
        assert!(pinned("[]").is_empty(), "an empty environment only");
        let longest_name = "N".repeat(guard_common::MAX_ENV_NAME_BYTES - 2);
        let longest_entry = format!("V={}", "v".repeat(guard_common::MAX_ENV_ENTRY_BYTES - 4));
        assert_eq!(
            pinned(&format!(r#"["{longest_name}","{longest_entry}"]"#)),
            [longest_name.clone(), longest_entry.clone()]
        );

        let at = "/protected/0/rules/0/started_by/environment";
        let refused: &[(&str, &str, &str)] = &[
            (r#"["TZ",""]"#, "/1", "name must not be empty"),
            (r#"["=C"]"#, "/0", "name must not be empty"),
            (r#"["LA\u0000NG"]"#, "/0", "must not contain a NUL"),
            (r#"["LANG=C\u0000"]"#, "/0", "must not contain a NUL"),
            (r#"["TZ",7]"#, "/1", "expected a string, found a number"),
            (r#"["TZ","LANG=C","TZ"]"#, "/2", "\"TZ\" is listed twice"),
            (r#""LANG=C""#, "", "expected a list, found a string"),
        ];
        for (list, item, message) in refused {
            let e = errors(&policy(list));
            assert_eq!(e.0.len(), 1, "{list}: {e}");
            assert!(e.contains(&format!("{at}{item}"), message), "{list}: {e}");
        }
        let e = errors(&policy(&format!(r#"["{longest_name}N"]"#)));
        assert!(e.contains(&format!("{at}/0"), "takes 65 bytes"), "{e}");
        let e = errors(&policy(&format!(r#"["TZ","{longest_entry}v"]"#)));
        assert!(e.contains(&format!("{at}/1"), "takes 256 bytes"), "{e}");
    }

    #[test]
    fn trailing_garbage_and_duplicate_keys_are_invalid_json() {
        let e = errors(r#"{"mode":"enforce","protected":[]} x"#);
        assert!(e.0[0].message.starts_with("invalid JSON"), "{e}");
        let e = errors(r#"{"mode":"enforce","mode":"audit","protected":[]}"#);
        assert!(e.0[0].message.contains("duplicate field `mode`"), "{e}");
        assert_eq!(e.0[0].location, "line 1, column 24");
    }

    #[test]
    fn duplicate_keys_are_found_however_many_and_however_written() {
        // Spelled with an escape, the key is still `mode`.
        let e = errors(r#"{"mode":"enforce","m\u006fde":"audit","protected":[]}"#);
        assert!(e.0[0].message.contains("duplicate field `mode`"), "{e}");
        // Past the fields compared one by one.
        let many: String = (0..40).map(|i| format!(r#""k{i}":{i},"#)).collect();
        let e = errors(&format!(r#"{{{many}"k3":0}}"#));
        assert!(e.0[0].message.contains("duplicate field `k3`"), "{e}");
        assert_eq!(e.0.len(), 1, "{e}");
        let e = errors(&format!(r#"{{{many}"k40":0}}"#));
        assert!(!e.to_string().contains("duplicate"), "{e}");
        assert!(e.contains("/k39", "unknown field `k39`"), "{e}");
    }

    #[test]
    fn unknown_fields_are_reported_in_key_order() {
        let e = errors(
            r#"{"zeta":1,"mode":"audit","protected":[{"path":"/d","rules":[]}],"a~b":2,"Beta":3}"#,
        );
        let locations: Vec<&str> = e.0.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(locations, ["/Beta", "/a~0b", "/zeta"], "{e}");
    }

    #[test]
    fn escaped_strings_are_read_like_plain_ones() {
        let policy = parse(
            r#"{"mode":"enf\u006frce","protected":[{"path":"/d\/\u00e9","rules":[
            {"name":"tab\\t","binaries":["/b"],"access":["read"],"effect":"allow"}]}]}"#,
        )
        .unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.protected[0].path, PathBuf::from("/d/\u{e9}"));
        assert_eq!(policy.protected[0].rules[0].name.as_deref(), Some("tab\\t"));
    }

    #[test]
    fn reports_every_problem_with_its_location() {
        let text = r#"{
          "mode": "enforcing",
          "colour": 1,
          "protected": [
            { "path": "relative/dir", "rules": [
                { "binaries": [], "access": ["read", "reed", "read"], "effect": "deny" },
                { "name": "", "binaries": [3, {"path": "/bin/x", "sha256": "xyz"}, {"sha256": 5}],
                  "uid": -1, "gid": 1.5, "access": [], "effect": "allow", "comment": "x" },
                { "binaries": "/bin/sh", "access": "read" }
            ] },
            { "rules": [] },
            "oops"
          ]
        }"#;
        let e = errors(text);
        let expected: &[(&str, &str)] = &[
            ("/colour", "unknown field `colour`"),
            ("/mode", "unknown mode `enforcing`"),
            (
                "/protected/0/path",
                "`relative/dir` is not an absolute path",
            ),
            ("/protected/0/rules/0/binaries", "must not be empty"),
            ("/protected/0/rules/0/access/1", "unknown access `reed`"),
            ("/protected/0/rules/0/access/2", "`read` is listed twice"),
            ("/protected/0/rules/0/effect", "unknown effect `deny`"),
            ("/protected/0/rules/1/comment", "unknown field `comment`"),
            ("/protected/0/rules/1/name", "must not be empty"),
            (
                "/protected/0/rules/1/binaries/0",
                "expected a path or an object",
            ),
            (
                "/protected/0/rules/1/binaries/1/sha256",
                "not a SHA-256 digest",
            ),
            ("/protected/0/rules/1/binaries/2", "missing field `path`"),
            (
                "/protected/0/rules/1/binaries/2/sha256",
                "expected a string, found a number",
            ),
            ("/protected/0/rules/1/uid", "found -1"),
            ("/protected/0/rules/1/gid", "found 1.5"),
            ("/protected/0/rules/1/access", "must not be empty"),
            ("/protected/0/rules/2", "missing field `effect`"),
            (
                "/protected/0/rules/2/binaries",
                "expected a list, found a string",
            ),
            (
                "/protected/0/rules/2/access",
                "expected a list, found a string",
            ),
            ("/protected/1", "missing field `path`"),
            (
                "/protected/2",
                "expected a protected directory object, found a string",
            ),
        ];
        for (location, text) in expected {
            assert!(
                e.contains(location, text),
                "missing `{location}: {text}` in:\n{e}"
            );
        }
        assert_eq!(e.0.len(), expected.len(), "unexpected extra errors:\n{e}");
    }

    #[test]
    fn missing_top_level_fields_and_wrong_root_type() {
        let e = errors("{}");
        assert!(e.contains("", "missing field `mode`"), "{e}");
        assert!(e.contains("", "missing field `protected`"), "{e}");
        assert!(e.to_string().starts_with("/: missing field"), "{e}");
        let e = errors("[]");
        assert!(
            e.contains("", "expected a policy object, found a list"),
            "{e}"
        );
        let e = errors(r#"{"mode":"audit","protected":[]}"#);
        assert!(e.contains("/protected", "must not be empty"), "{e}");
    }

    #[test]
    fn ids_must_fit_below_the_wildcard() {
        let rule = |uid: &str| {
            format!(
                r#"{{"mode":"enforce","protected":[{{"path":"/d","rules":[
                {{"binaries":["/b"],"uid":{uid},"access":["read"],"effect":"allow"}}]}}]}}"#
            )
        };
        assert_eq!(
            parse(&rule("4294967294")).unwrap().protected[0].rules[0].uid,
            Some(u32::MAX - 1)
        );
        assert_eq!(
            parse(&rule("7.0")).unwrap().protected[0].rules[0].uid,
            Some(7)
        );
        let e = errors(&rule("4294967295"));
        assert!(
            e.contains("/protected/0/rules/0/uid", "from 0 to 4294967294"),
            "{e}"
        );
        let e = errors(&rule("\"0\""));
        assert!(
            e.contains("/protected/0/rules/0/uid", "the string \"0\""),
            "{e}"
        );
    }

    #[test]
    fn keys_with_slashes_are_escaped_in_locations() {
        let e = errors(r#"{"mode":"audit","protected":[],"a/b~":1}"#);
        assert!(e.contains("/a~1b~0", "unknown field `a/b~`"), "{e}");
    }

    #[test]
    fn control_characters_in_names_are_refused() {
        let e = errors(
            r#"{"mode":"audit","protected":[{"path":"/d","rules":[
            {"name":"a\nb","binaries":["/b"],"access":["read"],"effect":"allow"}]}]}"#,
        );
        assert!(
            e.contains("/protected/0/rules/0/name", "control characters"),
            "{e}"
        );
    }

    #[test]
    fn a_large_policy_hashes_its_whole_canonical_form() {
        use sha2::{Digest, Sha256};
        let rules: Vec<String> = (0..500)
            .map(|i| {
                format!(r#"{{"name":"r{i}","binaries":["/usr/bin/p{i}"],"access":["read"],"effect":"allow"}}"#)
            })
            .collect();
        let text = format!(
            r#"{{"mode":"enforce","protected":[{{"path":"/d","rules":[{}]}}]}}"#,
            rules.join(",")
        );
        let policy = parse(&text).unwrap();
        let canonical = policy.canonical_json();
        assert!(canonical.len() > 40_000, "{}", canonical.len());
        assert_eq!(
            policy.hash(),
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn canonical_form_ignores_layout_and_spelling() {
        let a = parse(EXAMPLE).unwrap();
        let b = parse(
            r#"{"protected":[{"rules":[
              {"effect":"allow","access":["setattr","link","rename","delete","create","write","read"],
               "binaries":[{"path":"/usr/sbin/mariadbd"}],"name":"mariadb server"},
              {"effect":"audit","access":["read"],"uid":0.0,
               "binaries":[{"sha256":"ab00000000000000000000000000000000000000000000000000000000000001",
                            "path":"/usr/bin/mariabackup"}]}],
              "path":"/var/lib/mysql"}],
             "$schema":"policy.schema.json","mode":"enforce"}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical_json(), b.canonical_json());
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        use sha2::{Digest, Sha256};
        assert_eq!(
            a.hash(),
            hex::encode(Sha256::digest(a.canonical_json().as_bytes()))
        );
        let c = parse(&EXAMPLE.replace("\"enforce\"", "\"audit\"")).unwrap();
        assert_ne!(a.hash(), c.hash());
        assert!(a.canonical_json().starts_with(r#"{"mode":"enforce","protected":[{"path":"/var/lib/mysql","rules":[{"name":"mariadb server","binaries":[{"path":"/usr/sbin/mariadbd"}],"access":["read","write","create","delete","rename","link","setattr"],"effect":"allow"}"#),
            "{}", a.canonical_json());
    }
}
