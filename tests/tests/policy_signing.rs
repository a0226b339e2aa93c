//! Policy signing, end to end on a real kernel: with a trusted key pinned,
//! guardd applies only policies signed off-host with that key and newer than
//! the last, disarms or stops only on an order signed for this very guardd,
//! and journals every refusal. A restarted guardd keeps the pinned key.
//!
//! Run inside the QEMU guests by `cargo xtask vm-test` (both kernels).

use guard::journal::{field, message_id};
use guard_tests::guest::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PINS: &str = "/sys/fs/bpf/guard";
const JOURNAL_WAIT: Duration = Duration::from_secs(20);

/// A policy that would open the data to everyone: audit mode denies nothing.
fn weaker(sb: &Sandbox) -> Value {
    sb.policy("audit")
}

/// Root is refused, the allowed binary reads: the enforced policy holds.
#[track_caller]
fn still_enforced(sb: &Sandbox, hash: &Value) {
    assert_open_eperm(&sb.file("secret.txt"));
    let out = sb.allowed_run("cat", &[sb.file("secret.txt").to_str().unwrap()]);
    assert_ok(&out, "the allowed binary reading");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "patient record 4711\n"
    );
    let status = status();
    assert_eq!(status["state"], "enforcing", "{status}");
    assert_eq!(&status["policy_hash"], hash, "the policy changed: {status}");
}

/// Asserts guardctl failed and said `why`, and that nothing else was said to succeed.
#[track_caller]
fn assert_refused(out: &Output, why: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success() && err.contains(why) && err.contains("nothing changed"),
        "expected a refusal naming {why:?}, got {} stderr={err:?}",
        out.status
    );
}

/// The journal's SIGNING_REFUSED entry for `refusal` of a `document` while
/// `trusted` is the pinned key.
#[track_caller]
fn refusal_entry(refusal: &str, document: &str, trusted: &str) -> Value {
    let matches = [
        format!("MESSAGE_ID={}", message_id::SIGNING_REFUSED),
        format!("{}={refusal}", field::REFUSAL),
        format!("{}={document}", field::DOCUMENT),
        format!("{}={trusted}", field::TRUST_KEY),
    ];
    let matches: Vec<&str> = matches.iter().map(String::as_str).collect();
    let entries = guard_tests::wait_for_journal_entries(&matches, 1, JOURNAL_WAIT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let entry = entries.last().unwrap().clone();
    assert_eq!(entry[field::UID], "0", "{entry}");
    assert_eq!(entry["PRIORITY"], "4", "{entry}");
    let reason = entry[field::REASON].as_str().unwrap_or_default();
    assert!(reason.contains("refused"), "{entry}");
    entry
}

/// Re-encodes a signed document's payload with `edit` applied (the signature stays).
fn tamper(signed: &Path, edit: impl FnOnce(&mut Value)) -> std::path::PathBuf {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut document: Value = serde_json::from_slice(&std::fs::read(signed).unwrap()).unwrap();
    let mut payload: Value =
        serde_json::from_slice(&b64.decode(document["payload"].as_str().unwrap()).unwrap())
            .unwrap();
    edit(&mut payload);
    document["payload"] = b64.encode(payload.to_string()).into();
    let out = signed.with_extension("tampered.json");
    std::fs::write(&out, document.to_string()).unwrap();
    out
}

/// The 64 hex digits of a public key file.
fn hex_of(public: &Path) -> String {
    std::fs::read_to_string(public).unwrap().trim().to_string()
}

/// Root can read the file again (the programs detach as the pins go).
fn readable_by_root(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::fs::read(path).is_ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs guardd expecting it to refuse to start; its output.
fn guardd_refusing(args: &[&str]) -> Output {
    let mut child = Command::new(bin("guardd"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "guardd {args:?} is still running: it should have refused to start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn policy_signing_applies_only_signed_newer_policies_and_disarms_on_order() {
    let sb = Sandbox::new("signing-apply");
    let admin = SigningKeys::new("admin");
    let intruder = SigningKeys::new("intruder");
    let mut guardd = SignedGuardd::start(&admin, &[]);
    let fp = admin.fingerprint.as_str();

    let first = status();
    assert_eq!(first["policy_signing"], "on", "{first}");
    assert_eq!(first["trust_key"], fp, "{first}");
    assert_eq!(first["self_protection"], true, "{first}");
    let started = journal_entries(
        message_id::GUARDD_STARTED,
        field::TRUST_KEY,
        fp,
        JOURNAL_WAIT,
    );
    assert_eq!(started[0][field::POLICY_SIGNING], "on");

    // A policy signed with the pinned key applies and is enforced.
    let signed = admin.sign_policy(&sb.policy("enforce"), 10);
    let out = apply_file(&signed);
    assert_ok(&out, "applying a signed policy");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("signed by {fp} serial 10")));
    let hash = status()["policy_hash"].clone();
    still_enforced(&sb, &hash);
    let applied = journal_entries(message_id::POLICY_APPLIED, field::SIGNER, fp, JOURNAL_WAIT);
    assert!(
        applied.iter().any(|e| e[field::SERIAL] == "10"),
        "{applied:?}"
    );
    assert_eq!(show()["signed"]["serial"], 10);

    // Root cannot swap the pinned key or reset the serial kept with the pins.
    let signing = Path::new(PINS).join("signing");
    let (key_link, serial_link) = (signing.join("trust-key"), signing.join("policy-serial"));
    let forged = hex_of(&intruder.public);
    let tries = [
        (
            format!("ln -sfn {forged} {}", key_link.display()),
            "replacing the pinned key",
        ),
        (
            format!("rm -f {}", key_link.display()),
            "removing the pinned key",
        ),
        (
            format!("ln -sfn 0 {}", serial_link.display()),
            "resetting the serial",
        ),
        (
            format!("mv {} {}/moved", serial_link.display(), signing.display()),
            "moving the serial",
        ),
        (
            format!("ln -s {forged} {}/trust-key_new", signing.display()),
            "adding a link",
        ),
    ];
    for (command, what) in &tries {
        assert_eperm(&sh(command), what);
    }
    assert_eq!(
        std::fs::read_link(&key_link).unwrap().to_str(),
        Some(hex_of(&admin.public).as_str())
    );
    assert_eq!(
        std::fs::read_link(&serial_link).unwrap().to_str(),
        Some("10")
    );

    // Unsigned.
    let out = apply_raw(&weaker(&sb).to_string());
    assert_refused(&out, "unsigned policy refused");
    still_enforced(&sb, &hash);
    refusal_entry("unsigned", "policy", fp);

    // Signed with another key.
    let out = apply_file(&intruder.sign_policy(&weaker(&sb), 20));
    assert_refused(&out, &format!("signed by key {}", intruder.fingerprint));
    still_enforced(&sb, &hash);
    let entry = refusal_entry("wrong-key", "policy", fp);
    assert_eq!(entry[field::SIGNER], intruder.fingerprint.as_str());

    // Signed with the right key, then changed: a weaker policy, a higher serial.
    let tampered = tamper(&admin.sign_policy(&sb.policy("enforce"), 21), |p| {
        p["policy"] = weaker(&sb).to_string().into();
        p["serial"] = 22.into();
    });
    let out = apply_file(&tampered);
    assert_refused(&out, "the signature does not verify");
    still_enforced(&sb, &hash);
    refusal_entry("bad-signature", "policy", fp);

    // Garbage where the signature goes.
    let mut garbled: Value =
        serde_json::from_slice(&std::fs::read(admin.sign_policy(&weaker(&sb), 23)).unwrap())
            .unwrap();
    let payload = garbled["payload"].as_str().unwrap().to_string();
    garbled["payload"] = payload[..payload.len() - 2].into();
    let out = apply_raw(&garbled.to_string());
    assert_refused(&out, "field `payload` is not valid base64");
    still_enforced(&sb, &hash);
    refusal_entry("bad-base64", "policy", fp);

    // Older than the applied one, and the applied one again (a replay).
    let out = apply_file(&admin.sign_policy(&weaker(&sb), 5));
    assert_refused(
        &out,
        "serial 5 is not greater than the last applied serial 10",
    );
    still_enforced(&sb, &hash);
    let entry = refusal_entry("stale-serial", "policy", fp);
    assert_eq!(entry[field::SERIAL], "5");
    assert_eq!(entry[field::LAST_SERIAL], "10");
    let out = apply_file(&signed);
    assert_refused(&out, "serial 10 is not greater");
    still_enforced(&sb, &hash);

    // A newer signed policy does apply.
    let mut newer = sb.policy("enforce");
    newer["protected"][0]["rules"][0]["name"] = "allowed busybox, renewed".into();
    assert_ok(&apply_file(&admin.sign_policy(&newer, 11)), "serial 11");
    let hash = status()["policy_hash"].clone();
    still_enforced(&sb, &hash);
    assert_eq!(status()["policy_serial"], 11);

    // guardd cannot be stopped without a signed stop order.
    let out = guardctl(&["stop"]);
    assert_refused(&out, "unsigned stop order refused");
    refusal_entry("unsigned", "stop order", fp);
    assert!(status()["guardd_pid"].is_number(), "guardd went away");

    // Disarm orders: for another guardd, by another key, then the real one.
    let nonce = challenge();
    let foreign = admin.sign_order("disarm", &"0".repeat(32));
    assert_refused(
        &guardctl(&["disarm", foreign.to_str().unwrap()]),
        "for the guardd with nonce 00000000",
    );
    refusal_entry("wrong-nonce", "disarm order", fp);
    let forged = intruder.sign_order("disarm", &nonce);
    assert_refused(
        &guardctl(&["disarm", forged.to_str().unwrap()]),
        "but guard trusts only key",
    );
    refusal_entry("wrong-key", "disarm order", fp);
    still_enforced(&sb, &hash);

    let order = admin.sign_order("disarm", &nonce);
    let out = guardctl(&["disarm", order.to_str().unwrap()]);
    assert_ok(&out, "disarming with a signed order");
    guardd.exited();
    assert!(!Path::new(PINS).exists(), "the pins are still there");
    assert!(
        readable_by_root(&sb.file("secret.txt")),
        "root still cannot read after the disarm"
    );
    let disarmed = journal_entries(message_id::GUARD_DISARMED, field::SIGNER, fp, JOURNAL_WAIT);
    assert!(
        disarmed[0]["MESSAGE"]
            .as_str()
            .unwrap()
            .contains("enforcement is off"),
        "{disarmed:?}"
    );

    // The same order again, to a new guardd: refused, nothing changes.
    let _again = SignedGuardd::start(&admin, &[]);
    assert_ok(
        &apply_file(&admin.sign_policy(&sb.policy("enforce"), 30)),
        "re-arm",
    );
    let hash = status()["policy_hash"].clone();
    assert_refused(
        &guardctl(&["disarm", order.to_str().unwrap()]),
        "an order made for another guardd, or one already used",
    );
    still_enforced(&sb, &hash);
    // The key is pinned again (a symlink whose target is the key: not a path).
    let pinned = std::fs::read_link(Path::new(PINS).join("signing/trust-key")).unwrap();
    assert_eq!(pinned.to_str().unwrap(), hex_of(&admin.public));
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn policy_signing_survives_a_restart_and_refuses_another_key() {
    let sb = Sandbox::new("signing-restart");
    let admin = SigningKeys::new("admin-restart");
    let other = SigningKeys::new("other-restart");
    let mut first = SignedGuardd::start(&admin, &[]);
    assert_ok(
        &apply_file(&admin.sign_policy(&sb.policy("enforce"), 1)),
        "signed apply",
    );
    let hash = status()["policy_hash"].clone();

    // A signed stop: guardd exits, the kernel keeps enforcing.
    first.stop();
    assert_open_eperm(&sb.file("secret.txt"));
    let stops = journal_entries(
        message_id::GUARDD_STOP_REQUESTED,
        field::SIGNER,
        &admin.fingerprint,
        JOURNAL_WAIT,
    );
    assert!(!stops.is_empty());

    // Another key on the command line: refused, loudly.
    let out = guardd_refusing(&["--trust-key", other.public.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("refusing --trust-key {}", other.fingerprint))
            && err.contains(&admin.fingerprint),
        "{err}"
    );
    let refused = journal_entries(
        message_id::TRUST_KEY_REFUSED,
        field::SIGNER,
        &other.fingerprint,
        JOURNAL_WAIT,
    );
    assert_eq!(refused[0][field::TRUST_KEY], admin.fingerprint.as_str());
    assert_open_eperm(&sb.file("secret.txt"));

    // Without --trust-key guardd adopts the pinned key, and the serial with it.
    let _adopted = SignedGuardd::start_with(&admin, &[]);
    let status = status();
    assert_eq!(status["programs"], "adopted", "{status}");
    assert_eq!(status["policy_signing"], "on", "{status}");
    assert_eq!(status["trust_key"], admin.fingerprint.as_str(), "{status}");
    assert_eq!(status["policy_serial"], 1, "{status}");
    assert_refused(
        &apply_raw(&sb.policy("audit").to_string()),
        "unsigned policy refused",
    );
    assert_refused(
        &apply_file(&other.sign_policy(&sb.policy("audit"), 2)),
        "but guard trusts only key",
    );
    still_enforced(&sb, &hash);
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn policy_signing_is_off_without_a_trusted_key() {
    let sb = Sandbox::new("signing-off");
    let _guardd = Guardd::start();
    let status = status();
    assert_eq!(status["policy_signing"], "off", "{status}");
    assert!(status["trust_key"].is_null(), "{status}");
    let started = journal_entries(
        message_id::GUARDD_STARTED,
        field::POLICY_SIGNING,
        "off",
        JOURNAL_WAIT,
    );
    assert!(started.iter().any(|e| e["MESSAGE"]
        .as_str()
        .unwrap()
        .contains("policy signing: off")));
    apply(&sb.policy("enforce"));
    assert_open_eperm(&sb.file("secret.txt"));

    let out = guardctl(&["order", "challenge"]);
    assert!(!out.status.success() && stderr(&out).contains("policy signing is off"));
    let keys = SigningKeys::new("unused");
    let order = keys.sign_order("disarm", &"1".repeat(32));
    assert_refused(
        &guardctl(&["disarm", order.to_str().unwrap()]),
        "policy signing is off",
    );
    refusal_entry_without_key("signing-off", "disarm order");
    assert_open_eperm(&sb.file("secret.txt"));
}

/// A SIGNING_REFUSED entry when no key is trusted.
fn refusal_entry_without_key(refusal: &str, document: &str) {
    let entries = journal_entries(
        message_id::SIGNING_REFUSED,
        field::REFUSAL,
        refusal,
        JOURNAL_WAIT,
    );
    assert!(
        entries.iter().any(|e| e[field::DOCUMENT] == document),
        "{entries:?}"
    );
}
