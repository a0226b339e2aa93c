//! dm-crypt volumes, in the QEMU guest (the host kernel has no device-mapper):
//! the volume key reaches dm-crypt as a `logon` key referenced from the table
//! as `:64:logon:guard:NAME`, never as hex in the table. Needs root, dmsetup,
//! mkfs.ext4, losetup and the dm_crypt module; the KMS is an embedded
//! guard-kms on loopback (no cargo in the guest).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use guard::kms::server::start_embedded;
use guard::kms::Kms;
use guard::volume::{self, dmcrypt, VolumeStore};
use guard_tests::guest::disarm;
use tempfile::TempDir;

const MARKER: &str = "GUARD-PLAINTEXT-MARKER-dmcrypt-4be1";

fn sh(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a file; detached (and the mapping removed) on drop.
struct LoopDevice {
    device: PathBuf,
    volume: String,
    mnt: PathBuf,
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("dmsetup")
            .args(["remove", &dmcrypt::mapper_name(&self.volume)])
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// A guard-kms, a volume store and a loop device over a sparse file, all in
/// one temporary directory that outlives the loop device.
struct Scratch {
    // First, so that it is detached before the directory goes.
    loop_device: LoopDevice,
    kms: Arc<dyn Kms>,
    store: VolumeStore,
    backing: PathBuf,
    _tmp: TempDir,
}

impl Scratch {
    /// `size` bytes of loop device; `volume` is the name the mapping will have.
    fn new(volume: &str, size: u64) -> Scratch {
        // These tests map volumes themselves, as an administrator does
        // before arming guard: armed, guard refuses them (a test before
        // may have left it armed).
        drop(Disarm);
        let tmp = tempfile::tempdir().unwrap();
        let kms = start_embedded(&tmp.path().join("kms"))
            .unwrap()
            .connect()
            .unwrap();
        let store = VolumeStore::new(tmp.path().join("volumes"));
        let backing = tmp.path().join("disk.img");
        fs::File::create(&backing).unwrap().set_len(size).unwrap();
        let device =
            PathBuf::from(sh(Command::new("losetup").args(["-f", "--show"]).arg(&backing)).trim());
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Scratch {
            loop_device: LoopDevice {
                device,
                volume: volume.into(),
                mnt,
            },
            kms,
            store,
            backing,
            _tmp: tmp,
        }
    }
}

fn contains(path: &Path, needle: &[u8]) -> bool {
    let data = fs::read(path).unwrap();
    data.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn dm_crypt_volume_keyed_through_a_logon_key() {
    // Without guard: a test run earlier may have left it armed, and then
    // nobody but guardd may load a device-mapper table.
    disarm();
    let _ = Command::new("modprobe").arg("dm_crypt").status();
    let scratch = Scratch::new("dm", 64 << 20);
    let (kms, store, backing) = (&scratch.kms, &scratch.store, &scratch.backing);
    let (device, mnt) = (&scratch.loop_device.device, &scratch.loop_device.mnt);

    let record = dmcrypt::init(store, kms.as_ref(), "dm", device).unwrap();
    let mapper = dmcrypt::mapper_path("dm");
    assert!(mapper.exists());
    // The table names the logon key; no key material appears in it.
    let table =
        sh(Command::new("dmsetup").args(["table", "--showkeys", &dmcrypt::mapper_name("dm")]));
    assert!(table.contains(":64:logon:guard:dm"), "{table}");
    assert!(table.contains("aes-xts-plain64"), "{table}");
    // The keyring copy was removed once dm-crypt had the key.
    let keys = fs::read_to_string("/proc/keys").unwrap();
    assert!(!keys.contains("guard:dm"), "{keys}");

    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&mapper));
    sh(Command::new("mount").arg(&mapper).arg(mnt));
    fs::write(mnt.join("secret.txt"), MARKER.repeat(50)).unwrap();
    sh(Command::new("umount").arg(mnt));
    volume::lock(store, "dm").unwrap();
    assert!(!mapper.exists());
    assert!(
        !contains(backing, MARKER.as_bytes()),
        "plaintext reached the backing device"
    );

    let report = volume::unlock(store, kms.as_ref(), "dm").unwrap();
    assert_eq!(report.key_identifier, record.key_identifier);
    sh(Command::new("mount").arg(&mapper).arg(mnt));
    assert_eq!(
        fs::read_to_string(mnt.join("secret.txt")).unwrap(),
        MARKER.repeat(50)
    );
    let status = volume::status(store).unwrap();
    assert!(status[0].state.starts_with("unlocked"), "{status:?}");
    sh(Command::new("umount").arg(mnt));

    // Revocation: the mapping goes and the KMS refuses to bring it back.
    volume::revoke(store, kms.as_ref(), "dm").unwrap();
    assert!(!mapper.exists());
    let mut unflagged = store.load("dm").unwrap();
    unflagged.revoked = false;
    store.save(&unflagged).unwrap();
    let err = volume::unlock(store, kms.as_ref(), "dm").unwrap_err();
    assert!(format!("{err:#}").contains("Revoked"), "{err:#}");
    assert!(!mapper.exists());
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn dm_crypt_init_refuses_a_mounted_device() {
    disarm();
    let scratch = Scratch::new("m", 32 << 20);
    let (kms, store) = (&scratch.kms, &scratch.store);
    let (device, mnt) = (&scratch.loop_device.device, &scratch.loop_device.mnt);
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(device));
    sh(Command::new("mount").arg(device).arg(mnt));
    let err = dmcrypt::init(store, kms.as_ref(), "m", device).unwrap_err();
    assert!(format!("{err:#}").contains("is mounted"), "{err:#}");
    assert!(store.list().unwrap().is_empty());
}

/// Below a protected directory on a dm-crypt volume: its device (the loop
/// device here, a disk or partition on a server) holds only ciphertext, so
/// root may read it, but writing it would destroy the files beneath the
/// guard; the mapping itself shows them in the clear and stays closed, and
/// no new mapping (a linear one over the same blocks) can be made.
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn the_device_below_a_protected_dm_crypt_volume_cannot_be_written_or_mapped() {
    use guard::journal::{field, message_id};
    use guard_tests::guest::{apply, journal_entries, Guardd};
    use std::time::Duration;

    disarm();
    let _ = Command::new("modprobe").arg("dm_crypt").status();
    let scratch = Scratch::new("below", 64 << 20);
    let (device, mnt) = (&scratch.loop_device.device, &scratch.loop_device.mnt);
    dmcrypt::init(&scratch.store, scratch.kms.as_ref(), "below", device).unwrap();
    let mapper = dmcrypt::mapper_path("below");
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&mapper));
    sh(Command::new("mount").arg(&mapper).arg(mnt));
    let data = mnt.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("secret.txt"), MARKER.repeat(50)).unwrap();
    sh(&mut Command::new("sync"));

    // Dropped in reverse: guardd stops, the guard is disarmed (its pins
    // would keep the volume mounted), then the volume goes.
    let _disarm = Disarm;
    let guardd = Guardd::start();
    apply(&serde_json::json!({
        "mode": "enforce",
        "protected": [{"path": data, "rules": []}]
    }));
    let write = fs::OpenOptions::new().write(true).open(device).map(drop);
    assert_eq!(
        write.unwrap_err().raw_os_error(),
        Some(libc::EPERM),
        "root opened {} for writing",
        device.display()
    );
    assert!(
        !contains(device, MARKER.as_bytes()),
        "the device below dm-crypt shows plaintext"
    );
    let plaintext = fs::File::open(&mapper).map(drop);
    assert_eq!(
        plaintext.unwrap_err().raw_os_error(),
        Some(libc::EPERM),
        "root read {}",
        mapper.display()
    );
    // Nor can root map the device again, past the raw-device check: the
    // kernel opens what a table names itself.
    let sectors = sh(Command::new("blockdev").arg("--getsz").arg(device));
    let table = format!("0 {} linear {} 0", sectors.trim(), device.display());
    let out = Command::new("dmsetup")
        .args(["create", "guard-test-leak", "--table", &table])
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "dmsetup create over {}: {out:?}",
        device.display()
    );
    assert!(!Path::new("/dev/mapper/guard-test-leak").exists());
    let alerts = journal_entries(
        message_id::DENIED,
        field::ACCESS,
        "device-mapper",
        Duration::from_secs(15),
    );
    assert!(
        alerts.iter().any(|e| e[field::HOOK] == "file_ioctl"),
        "no alert for the table load: {alerts:?}"
    );

    let rdev = fs::metadata(device).unwrap().rdev();
    let named = format!("({}:{})", libc::major(rdev), libc::minor(rdev));
    let alerts = journal_entries(
        message_id::DENIED,
        field::HOOK,
        "file_open",
        Duration::from_secs(15),
    );
    assert!(
        alerts.iter().any(|e| e[field::ACCESS] == "write"
            && e[field::PATH].as_str().is_some_and(|p| p.ends_with(&named))),
        "no alert for writing {}: {alerts:?}",
        device.display()
    );
    drop(guardd);
}

/// Disarms the guard when dropped.
struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        let pins = guard::loader::Pins::new(guard::loader::DEFAULT_PIN_DIR);
        if let Err(e) = guard::loader::disarm(&pins) {
            eprintln!("disarming: {e:#}");
        }
    }
}
