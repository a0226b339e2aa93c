//! verify-encryption and recover: the raw blocks of a loop-mounted ext4
//! image are decrypted in userspace (HKDF-SHA512 per-file keys, AES-256-XTS
//! contents, AES-256-CTS names) and must equal what the kernel shows; plaintext
//! markers must be absent from the raw bytes. Host tests, run as root.

mod keys_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use guard::keyring::SecretKey;
use guard::recovery::{self, RecoverArgs, VerifyEncryptionArgs};
use guard::volume::{self, KeysOptions};
use keys_support::*;

const MARKER: &str = "GUARD-PLAINTEXT-MARKER-raw-91d4e";

/// Writes a varied tree under `dir` and returns path -> contents of its files.
fn populate(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut put = |rel: &str, data: Vec<u8>| {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &data).unwrap();
        files.insert(PathBuf::from(rel), data);
    };
    put("small.txt", format!("patient 1: {MARKER}\n").into_bytes());
    put("empty", Vec::new());
    let mut big = Vec::new();
    for i in 0..300_000u32 {
        big.extend_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
    }
    big.extend_from_slice(MARKER.as_bytes());
    put("data/ibdata1", big);
    put(
        "data/a-name-that-is-longer-than-thirty-two-bytes.frm",
        MARKER.repeat(100).into_bytes(),
    );
    put("data/nested/deeper/one-block-exactly", vec![0x5a; 4096]);
    // A sparse file: a hole between two written blocks.
    let sparse = dir.join("data/sparse");
    let file = fs::File::create(&sparse).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(MARKER.as_bytes(), 0).unwrap();
    file.write_all_at(MARKER.as_bytes(), 10 * 4096 + 7).unwrap();
    drop(file);
    files.insert(PathBuf::from("data/sparse"), fs::read(&sparse).unwrap());
    std::os::unix::fs::symlink("data/ibdata1", dir.join("link")).unwrap();
    fs::set_permissions(dir.join("small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    files
}

struct Fixture {
    image: Ext4Image,
    kms: KmsServer,
    store: Store,
    dir: PathBuf,
    files: BTreeMap<PathBuf, Vec<u8>>,
}

fn fixture() -> Fixture {
    let image = Ext4Image::new(64, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("var/lib/mysql");
    fs::create_dir_all(&dir).unwrap();
    volume::init_fscrypt(&store.store, kms.client().as_ref(), "mysql", &dir).unwrap();
    let files = populate(&dir);
    Fixture {
        image,
        kms,
        store,
        dir,
        files,
    }
}

fn master_key(f: &Fixture) -> SecretKey {
    let record = f.store.store.load("mysql").unwrap();
    volume::fetch_volume_key(f.kms.client().as_ref(), &record).unwrap()
}

#[test]
fn raw_blocks_decrypt_to_the_kernels_view_and_hold_no_plaintext() {
    let f = fixture();
    let master = master_key(&f);
    let report =
        recovery::verify_encryption(&f.image.image, &master, &f.dir, &[MARKER.to_string()])
            .unwrap();
    assert!(
        report.ok(),
        "mismatches {:?}, markers {:?}",
        report.mismatches,
        report.markers_found
    );
    assert_eq!(report.files, f.files.len() as u64);
    assert_eq!(report.symlinks, 1);
    assert_eq!(report.dirs, 3); // data, data/nested, data/nested/deeper
    assert_eq!(report.root_in_image, PathBuf::from("/var/lib/mysql"));
    assert!(report.decrypted_bytes >= 1_200_000);
    assert_eq!(report.image_bytes_scanned, 64 << 20);

    // The scanner does find plaintext where there is some: a file outside the volume.
    fs::write(f.image.path("plain.txt"), "control CONTROL-MARKER-0042").unwrap();
    let report = recovery::verify_encryption(
        &f.image.image,
        &master,
        &f.dir,
        &["CONTROL-MARKER-0042".into()],
    )
    .unwrap();
    assert_eq!(
        report.markers_found.len(),
        1,
        "the control marker must be found in the raw image"
    );
    assert!(!report.ok());
}

#[test]
fn a_wrong_key_finds_no_volume() {
    let f = fixture();
    let wrong = SecretKey::random(64).unwrap();
    let err = recovery::verify_encryption(&f.image.image, &wrong, &f.dir, &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("no directory in the image is encrypted with key"),
        "{err:#}"
    );
}

#[test]
fn recover_reads_files_out_of_an_unmounted_image() {
    let mut f = fixture();
    volume::lock(&f.store.store, "mysql").unwrap();
    f.image.unmount();
    let out = f.image.dir.path().join("recovered");
    let master = master_key(&f);
    let report = recovery::recover(&f.image.image, &master, &out).unwrap();
    assert_eq!(report.files, f.files.len() as u64);
    for (rel, data) in &f.files {
        assert_eq!(&fs::read(out.join(rel)).unwrap(), data, "{}", rel.display());
    }
    assert_eq!(
        fs::read_link(out.join("link")).unwrap(),
        PathBuf::from("data/ibdata1")
    );
    let mode = fs::metadata(out.join("small.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    // A second recover into the same (now non-empty) directory is refused.
    let err = recovery::recover(&f.image.image, &master, &out).unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
}

#[test]
fn cli_verify_and_recover_through_the_kms_config() {
    let mut f = fixture();
    let config = f.store.dir.path().join("kms.json");
    f.kms.write_config(&config);
    let options = KeysOptions {
        volume_dir: f.store.dir.path().to_path_buf(),
        kms_config: config,
    };
    // No --image: the loop device under the mount is found and read.
    let args = VerifyEncryptionArgs {
        volume: "mysql".into(),
        image: None,
        markers: vec![MARKER.into()],
    };
    recovery::run_verify_encryption(args, &options).unwrap();

    volume::lock(&f.store.store, "mysql").unwrap();
    f.image.unmount();
    let out = f.image.dir.path().join("out");
    let args = RecoverArgs {
        volume: "mysql".into(),
        image: f.image.image.clone(),
        out: out.clone(),
    };
    recovery::run_recover(args, &options).unwrap();
    assert_eq!(
        fs::read(out.join("small.txt")).unwrap(),
        f.files[Path::new("small.txt")]
    );
}

#[test]
fn image_without_the_encrypt_feature_is_refused() {
    let mut image = Ext4Image::new(16, false);
    image.unmount();
    let key = SecretKey::random(64).unwrap();
    let err = recovery::recover(&image.image, &key, &image.dir.path().join("o")).unwrap_err();
    assert!(format!("{err:#}").contains("no encrypt feature"), "{err:#}");
    assert!(!image.dir.path().join("o").exists());
}
