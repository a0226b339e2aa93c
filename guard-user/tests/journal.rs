//! The journal writer against a real systemd-journald, read back with journalctl.

use std::time::Duration;

use guard::journal::{field, message_id, Journal};
use guard_tests::{ensure_journald, field_text, wait_for_journal_entries};

fn marker(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), rand_suffix())
}

/// Distinct per call within a process, so reruns never match old entries.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn entries_reach_the_journal_with_every_field() {
    let _journald = ensure_journald().unwrap();
    let journal = Journal::connect().unwrap();
    let marker = marker("fields");
    let multiline = "first line\nsecond line\n\nlast = line";
    // Larger than a datagram may be: goes through a sealed memfd.
    let large: String = (0..220 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();

    journal
        .send(&[
            (field::MESSAGE, "guard journal test"),
            (field::MESSAGE_ID, message_id::GUARDD_STARTED),
            (field::PRIORITY, "6"),
            ("GUARD_TEST_MARKER", &marker),
            (field::PATH, "/var/lib/mysql/ibdata1"),
            ("GUARD_TEST_MULTILINE", multiline),
            ("GUARD_TEST_EMPTY", ""),
        ])
        .unwrap();
    let large_marker = format!("{marker}-large");
    journal
        .send(&[
            (field::MESSAGE, "guard journal test, large entry"),
            ("GUARD_TEST_MARKER", &large_marker),
            ("GUARD_TEST_LARGE", &large),
        ])
        .unwrap();

    let matching = format!("GUARD_TEST_MARKER={marker}");
    let entries = wait_for_journal_entries(&[&matching], 1, Duration::from_secs(10)).unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    let get = |name| field_text(entry, name).unwrap_or_else(|| panic!("{name} missing: {entry}"));
    assert_eq!(get("MESSAGE"), "guard journal test");
    assert_eq!(get("MESSAGE_ID"), message_id::GUARDD_STARTED);
    assert_eq!(get("PRIORITY"), "6");
    assert_eq!(get("SYSLOG_IDENTIFIER"), "guardd");
    assert_eq!(get("GUARD_PATH"), "/var/lib/mysql/ibdata1");
    assert_eq!(get("GUARD_TEST_MULTILINE"), multiline);
    assert_eq!(get("GUARD_TEST_EMPTY"), "");
    assert_eq!(
        get("_PID"),
        std::process::id().to_string(),
        "journald saw our pid"
    );

    let matching = format!("GUARD_TEST_MARKER={large_marker}");
    let entries = wait_for_journal_entries(&[&matching], 1, Duration::from_secs(10)).unwrap();
    let entry = &entries[0];
    assert_eq!(
        field_text(entry, "MESSAGE").unwrap(),
        "guard journal test, large entry"
    );
    assert_eq!(field_text(entry, "GUARD_TEST_LARGE").unwrap(), large);
    assert_eq!(field_text(entry, "SYSLOG_IDENTIFIER").unwrap(), "guardd");
}

#[test]
fn the_identifier_can_be_changed() {
    let _journald = ensure_journald().unwrap();
    let journal = Journal::connect().unwrap().with_identifier("guardctl");
    let marker = marker("identifier");
    journal
        .send(&[
            (field::MESSAGE, "identifier test"),
            ("GUARD_TEST_MARKER", &marker),
        ])
        .unwrap();
    let matching = format!("GUARD_TEST_MARKER={marker}");
    let entries = wait_for_journal_entries(&[&matching], 1, Duration::from_secs(10)).unwrap();
    assert_eq!(
        field_text(&entries[0], "SYSLOG_IDENTIFIER").unwrap(),
        "guardctl"
    );
}

#[test]
fn a_bad_field_name_sends_nothing() {
    let _journald = ensure_journald().unwrap();
    let journal = Journal::connect().unwrap();
    let marker = marker("bad-name");
    let error = journal
        .send(&[("GUARD_TEST_MARKER", &marker), ("lowercase", "x")])
        .unwrap_err();
    assert!(error.to_string().contains("`lowercase`"), "{error}");
    // A later good entry arrives, the refused one never does.
    let good = format!("{marker}-good");
    journal
        .send(&[(field::MESSAGE, "after"), ("GUARD_TEST_MARKER", &good)])
        .unwrap();
    let matching = format!("GUARD_TEST_MARKER={good}");
    wait_for_journal_entries(&[&matching], 1, Duration::from_secs(10)).unwrap();
    let refused = format!("GUARD_TEST_MARKER={marker}");
    assert!(guard_tests::journal_entries(&[&refused])
        .unwrap()
        .is_empty());
}
