//! The policy format as a JSON Schema, for editors and other tools.
//!
//! Written by hand: a binary is either a path or an object, and the schema
//! says so with `oneOf`, which derived schemas express poorly. The tests hold
//! it to the same verdicts as [`super::parse`].

use guard_common::access::NAMES;
use serde_json::{json, Value};

/// JSON Schema (draft 2020-12) of the policy format.
pub fn schema() -> Value {
    let access_names: Vec<&str> = NAMES.iter().map(|(name, _)| *name).collect();
    let max_id = guard_common::ANY_ID - 1;
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "guard policy",
        "description": "Which binaries may do what inside protected directories. \
                        Inside a protected directory, everything no rule allows is denied, root included.",
        "type": "object",
        "additionalProperties": false,
        "required": ["mode", "protected"],
        "properties": {
            "$schema": { "type": "string" },
            "mode": {
                "description": "enforce: deny and log what no rule allows; \
                                audit: log what would be denied, deny nothing.",
                "enum": ["enforce", "audit"]
            },
            "protected": {
                "type": "array",
                "minItems": 1,
                "items": { "$ref": "#/$defs/protected" }
            },
            "libraries": {
                "description": "When present, every binary the rules allow may map executable \
                                only itself and these files (a directory: the files directly in it), \
                                which become immutable while the policy is active.",
                "type": "array",
                "items": { "$ref": "#/$defs/absolutePath" }
            },
            "immutable": {
                "description": "Files and folders (with everything below them; symlinks followed) \
                                that nobody may write, replace, remove, rename, change the \
                                attributes of, create entries in or mount over while the policy \
                                is active: the database's configuration and start scripts.",
                "type": "array",
                "items": { "$ref": "#/$defs/absolutePath" }
            }
        },
        "$defs": {
            "absolutePath": {
                "type": "string",
                "pattern": "^/[^\\x00]*$"
            },
            "protected": {
                "description": "A protected directory (it must not overlap another) and the rules that open it up.",
                "type": "object",
                "additionalProperties": false,
                "required": ["path", "rules"],
                "properties": {
                    "path": { "$ref": "#/$defs/absolutePath" },
                    "rules": { "type": "array", "items": { "$ref": "#/$defs/rule" } }
                }
            },
            "rule": {
                "type": "object",
                "additionalProperties": false,
                "required": ["binaries", "access", "effect"],
                "properties": {
                    "name": {
                        "description": "Shown in logs instead of the rule's position.",
                        "type": "string",
                        "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
                    },
                    "binaries": {
                        "type": "array",
                        "minItems": 1,
                        "items": { "$ref": "#/$defs/binary" }
                    },
                    "uid": { "$ref": "#/$defs/id" },
                    "gid": { "$ref": "#/$defs/id" },
                    "access": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": true,
                        "items": { "enum": access_names }
                    },
                    "effect": {
                        "description": "allow: allow silently; audit: allow and log.",
                        "enum": ["allow", "audit"]
                    },
                    "started_by": {
                        "description": "Only a process running `supervisor` (for a script, the script), directly or through the `through` programs, may execute the rule's binaries.",
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["supervisor"],
                        "properties": {
                            "supervisor": { "$ref": "#/$defs/binary" },
                            "through": { "type": "array", "items": { "$ref": "#/$defs/binary" } },
                            "arguments": {
                                "description": "The exact argument list, from argv[0], the rule's binaries must run with (at most 512 bytes with a NUL after each); started with any other, the process is killed before it runs.",
                                "type": "array",
                                "minItems": 1,
                                "items": { "type": "string" }
                            },
                            "environment": {
                                "description": "The only environment variables the rule's binaries may run with, each `NAME` (any value; at most 62 bytes) or `NAME=VALUE` (only this value; list several for several values; at most 254 bytes). An empty list allows only an empty environment. Started with any other variable or value, the process is killed before it runs.",
                                "type": "array",
                                "uniqueItems": true,
                                "items": { "type": "string", "pattern": "^[^=\\x00]+(=[^\\x00]*)?$" }
                            }
                        }
                    }
                }
            },
            "binary": {
                "description": "A binary's path, or its path and the SHA-256 its content must have.",
                "oneOf": [
                    { "$ref": "#/$defs/absolutePath" },
                    {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["path"],
                        "properties": {
                            "path": { "$ref": "#/$defs/absolutePath" },
                            "sha256": { "type": "string", "pattern": "^[0-9a-fA-F]{64}$" }
                        }
                    }
                ]
            },
            "id": { "type": "integer", "minimum": 0, "maximum": max_id }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> jsonschema::Validator {
        jsonschema::draft202012::new(&schema()).expect("the schema itself is valid")
    }

    const VALID: &[&str] = &[
        r#"{"mode":"enforce","protected":[{"path":"/var/lib/mysql","rules":[
            {"name":"mariadb server","binaries":["/usr/sbin/mariadbd"],
             "access":["read","write","create","delete","rename","link","setattr"],"effect":"allow"},
            {"binaries":[{"path":"/usr/bin/mariabackup",
                          "sha256":"ab00000000000000000000000000000000000000000000000000000000000001"}],
             "uid":0,"access":["read"],"effect":"audit"}]}]}"#,
        r#"{"$schema":"x","mode":"audit","protected":[{"path":"/srv","rules":[]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":[{"path":"/b"}],"gid":4294967294,"access":["exec"],"effect":"allow"}]}]}"#,
        r#"{"mode":"enforce","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/usr/bin/mysqld_safe","through":["/usr/bin/nohup"]}}]}]}"#,
        r#"{"mode":"enforce","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/s","environment":["LANG=C","LANG=","TZ","O=a=b"]}},
            {"binaries":["/c"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/s","environment":[]}}]}]}"#,
        r#"{"mode":"enforce","protected":[{"path":"/srv","rules":[]}],
            "libraries":["/usr/lib/x86_64-linux-gnu","/usr/lib/mysql/plugin/ha_x.so"]}"#,
        r#"{"mode":"enforce","protected":[{"path":"/srv","rules":[]}],"libraries":[]}"#,
        r#"{"mode":"enforce","protected":[{"path":"/srv","rules":[]}],
            "immutable":["/etc/mysql","/etc/my.cnf"]}"#,
    ];

    const INVALID: &[&str] = &[
        r#"{"mode":"enforce"}"#,
        r#"{"mode":"block","protected":[{"path":"/srv","rules":[]}]}"#,
        r#"{"mode":"audit","protected":[]}"#,
        r#"{"mode":"audit","protected":[{"path":"srv","rules":[]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv"}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[]}],"extra":1}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[]}],"libraries":["lib"]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[]}],"libraries":"/lib"}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[]}],"immutable":["etc/my.cnf"]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":[],"access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":[],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["reed"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read","read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"deny"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":[{"path":"/b","sha256":"abc"}],"access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":[{"sha256":"ab00000000000000000000000000000000000000000000000000000000000001"}],
             "access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"uid":-1,"access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"uid":4294967295,"access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"name":"","binaries":["/b"],"access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"name":"a\nb","binaries":["/b"],"access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":[7],"access":["read"],"effect":"allow"}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow","started_by":{}}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/s","through":"/n"}}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"relative"}}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/s","environment":["=C"]}}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/s","environment":["TZ","TZ"]}}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/s","environment":["T\u0000Z"]}}]}]}"#,
        r#"{"mode":"audit","protected":[{"path":"/srv","rules":[
            {"binaries":["/b"],"access":["read"],"effect":"allow",
             "started_by":{"supervisor":"/s","environment":"TZ"}}]}]}"#,
    ];

    #[test]
    fn schema_accepts_valid_policies() {
        let validator = validator();
        for text in VALID {
            let document: Value = serde_json::from_str(text).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&document)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{text}\n{errors:?}");
        }
    }

    #[test]
    fn schema_refuses_invalid_policies() {
        let validator = validator();
        for text in INVALID {
            let document: Value = serde_json::from_str(text).unwrap();
            assert!(!validator.is_valid(&document), "schema accepted {text}");
        }
    }

    #[test]
    fn schema_and_parser_agree() {
        let validator = validator();
        for text in VALID {
            assert!(crate::policy::parse(text).is_ok(), "parser refused {text}");
        }
        for text in INVALID {
            let document: Value = serde_json::from_str(text).unwrap();
            assert!(!validator.is_valid(&document));
            assert!(
                crate::policy::parse(text).is_err(),
                "parser accepted {text}"
            );
        }
    }
}
