//! The off-host side of policy signing, as an administrator runs it:
//! `guardctl keygen`, `guardctl policy sign`, `guardctl order sign`.

use guard::audit::checkpoint::load_verifying_key;
use guard::signing::{fingerprint, OrderAction, Payload, SignedDocument};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn guardctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardctl"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn keygen(dir: &Path) -> (String, String) {
    let key = dir.join("admin.key");
    let out = guardctl(&["keygen", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    (
        key.to_str().unwrap().to_owned(),
        format!("{}.pub", key.display()),
    )
}

#[test]
fn keygen_writes_a_private_key_for_root_only_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let print = fingerprint(&load_verifying_key(Path::new(&public)).unwrap());
    let out = guardctl(&["keygen", &format!("{}/other.key", dir.path().display())]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&print));

    let before = std::fs::read(&key).unwrap();
    let out = guardctl(&["keygen", &key]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key was overwritten"
    );
}

#[test]
fn policy_sign_signs_the_exact_text_with_the_serial() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let policy = dir.path().join("policy.json");
    // Binaries need not exist where the policy is signed.
    let text = r#"{"mode": "enforce", "protected": [{"path": "/var/lib/mysql", "rules": [
        {"binaries": ["/usr/sbin/mariadbd"], "access": ["read"], "effect": "allow"}]}]}"#;
    std::fs::write(&policy, text).unwrap();
    let signed = dir.path().join("policy.signed.json");
    let out = guardctl(&[
        "policy",
        "sign",
        "--key",
        &key,
        "--serial",
        "42",
        "-o",
        signed.to_str().unwrap(),
        policy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let document = SignedDocument::from_json(&std::fs::read_to_string(&signed).unwrap()).unwrap();
    let trusted = load_verifying_key(Path::new(&public)).unwrap();
    match document.verify(&trusted).unwrap() {
        Payload::Policy { serial, policy, .. } => {
            assert_eq!(serial, 42);
            assert_eq!(policy, text);
        }
        other => panic!("signed {other:?}"),
    }
}

#[test]
fn policy_sign_refuses_an_invalid_policy_and_a_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path());
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"mode": "enforce", "protected": 3}"#).unwrap();
    let out = guardctl(&["policy", "sign", "--key", &key, policy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid policy"), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "something was signed");

    let valid = r#"{"mode": "enforce", "protected": [{"path": "/srv/data", "rules": []}]}"#;
    std::fs::write(&policy, valid).unwrap();
    let missing = dir.path().join("nope.key");
    let out = guardctl(&[
        "policy",
        "sign",
        "--key",
        missing.to_str().unwrap(),
        policy.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope.key"), "{}", stderr(&out));
}

#[test]
fn order_sign_binds_the_action_and_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let nonce = "0123456789abcdef0123456789abcdef";
    let out = guardctl(&["order", "sign", "--key", &key, "--nonce", nonce, "disarm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let document = SignedDocument::from_json(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let trusted = load_verifying_key(Path::new(&public)).unwrap();
    match document.verify(&trusted).unwrap() {
        Payload::Order {
            action, nonce: n, ..
        } => {
            assert_eq!(action, OrderAction::Disarm);
            assert_eq!(n, nonce);
        }
        other => panic!("signed {other:?}"),
    }
    let out = guardctl(&["order", "sign", "--key", &key, "--nonce", "xyz", "stop"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a guardd nonce"),
        "{}",
        stderr(&out)
    );
}
