//! Guest tests: btrfs, where guard's kernel checks cannot tell files apart.
//!
//! guard's hooks know a file by its superblock's device and its inode
//! number. btrfs numbers inodes per subvolume (a snapshot repeats its
//! source's numbers) and `stat` reports a device per subvolume, not the
//! superblock's: a policy resolved from `stat` protected nothing there
//! (root read the files), and one from the superblock's device would name
//! every subvolume's file of that number. So protected directories and
//! allowed binaries on btrfs are refused, naming the path; a directory
//! above a protected one may be on btrfs and nothing can be mounted on it.

use guard::journal::message_id;
use guard_tests::guest::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// `guardctl policy apply` of `policy` fails, saying `expected`, and the
/// policy in force stays `hash`.
#[track_caller]
fn assert_refused(policy: &serde_json::Value, expected: &[&str], hash: &str) {
    let out = apply_raw(&policy.to_string());
    assert!(!out.status.success(), "applied: {policy}");
    let error = stderr(&out);
    for part in expected {
        assert!(error.contains(part), "the error lacks {part:?}: {error}");
    }
    assert_eq!(show()["hash"], hash, "the policy in force changed");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn protected_directories_and_binaries_on_btrfs_are_refused() {
    disarm();
    let fs = LoopFs::mount_as("btrfs-refused-fs", "btrfs", "200M");
    let data = fs.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("record.txt"), "patient record on btrfs\n").unwrap();
    assert_ok(
        &sh(&format!(
            "btrfs subvolume create {}",
            fs.path("sub").display()
        )),
        "creating a subvolume",
    );
    let binary = fs.path("sub/busybox");
    std::fs::copy("/bin/busybox", &binary).unwrap();

    let sb = Sandbox::new("btrfs-refused");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let hash = show()["hash"].as_str().unwrap().to_owned();

    let mut on_btrfs = sb.policy("enforce");
    on_btrfs["protected"][0]["path"] = json!(data);
    assert_refused(
        &on_btrfs,
        &[
            "/protected/0/path",
            &format!("{}: on btrfs", data.display()),
        ],
        &hash,
    );
    let mut allowed_on_btrfs = sb.policy("enforce");
    allowed_on_btrfs["protected"][0]["rules"][0]["binaries"] = json!([binary]);
    assert_refused(
        &allowed_on_btrfs,
        &[&format!("{}: on btrfs", binary.display())],
        &hash,
    );
    let refusals = entries_mentioning(message_id::POLICY_REFUSED, "GUARD_ERRORS", &binary);
    assert!(
        refusals.iter().any(|e| e["GUARD_ERRORS"]
            .as_str()
            .is_some_and(|errors| errors.contains("on btrfs"))),
        "no POLICY_REFUSED entry naming {binary:?}: {refusals:?}"
    );

    // The policy in force still holds.
    assert_open_eperm(&sb.file("secret.txt"));
}

/// Entries with MESSAGE_ID `id` whose `field` mentions `path`.
fn entries_mentioning(id: &str, field: &str, path: &Path) -> Vec<serde_json::Value> {
    let path = path.display().to_string();
    let id = format!("MESSAGE_ID={id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let entries: Vec<_> =
            guard_tests::wait_for_journal_entries(&[&id], 1, Duration::from_secs(15))
                .unwrap()
                .into_iter()
                .filter(|e| e[field].as_str().is_some_and(|v| v.contains(&path)))
                .collect();
        if !entries.is_empty() || std::time::Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn nothing_can_be_mounted_on_a_btrfs_directory_above_a_protected_one() {
    disarm();
    let fs = LoopFs::mount_as("btrfs-above-fs", "btrfs", "200M");
    // The protected directory is on a tmpfs mounted inside the btrfs: its
    // ancestors up/ and the btrfs root are btrfs directories.
    let up = fs.path("up");
    let inner = up.join("t");
    std::fs::create_dir_all(&inner).unwrap();
    assert_ok(
        &sh(&format!("mount -t tmpfs guard-inner {}", inner.display())),
        "mounting the inner tmpfs",
    );
    let data = inner.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("record.txt"), "patient record under btrfs\n").unwrap();
    let sb = Sandbox::new("btrfs-above");
    let mut policy = sb.policy("enforce");
    policy["protected"][0]["path"] = json!(data);
    let _guardd = Guardd::start();
    apply(&policy);
    assert_open_eperm(&data.join("record.txt"));

    // A tmpfs over up/ would hide the protected directory from the
    // database, which would then write its new files into root's tmpfs.
    let error = mount_tmpfs("guard-over", &up).expect_err("root mounted over up/");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("guard-over"),
        "the tmpfs was mounted: {mounts}"
    );
    let alerts = entries_mentioning(message_id::DENIED, "GUARD_PATH", &up);
    assert!(!alerts.is_empty(), "no alert for the mount over {up:?}");
}

/// mount(2) of a tmpfs named `source` on `target`, by this process.
fn mount_tmpfs(source: &str, target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let source = CString::new(source).unwrap();
    let target = CString::new(target.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
