//! Guest test: a file server in the kernel. nfsd (like ksmbd) opens and
//! reads the files it serves from kernel threads, which run no executable.
//! Loaded before guard armed (the guest loads it at boot, xtask/guest/init.sh,
//! as a server that also shares files would), it must not serve a protected
//! directory to the clients it lets in: root mounting the export over
//! loopback would read the files in the clear.

use guard::journal::{field, message_id};
use guard_tests::guest::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MOUNT: &str = "/tmp/guard-nfs";

/// The kernel's NFS server (version 4 only) exporting `dir` to loopback,
/// with the user-space daemons it needs; stopped when dropped.
struct NfsServer;

impl NfsServer {
    fn start(dir: &Path) -> NfsServer {
        if !Path::new("/proc/fs/nfsd/threads").exists() {
            assert_ok(&sh("mount -t nfsd nfsd /proc/fs/nfsd"), "mounting nfsd");
        }
        std::fs::create_dir_all("/var/lib/nfs/v4recovery").unwrap();
        std::fs::write(
            "/etc/exports",
            format!(
                "{} 127.0.0.1(rw,no_root_squash,no_subtree_check,fsid=0,insecure)\n",
                dir.display()
            ),
        )
        .unwrap();
        let server = NfsServer;
        assert_ok(&sh("exportfs -ra"), "exportfs");
        // rpcbind only spares rpc.nfsd and rpc.mountd its timeouts.
        assert_ok(&sh("rpcbind -w"), "rpcbind");
        assert_ok(&sh("rpc.mountd -N 3"), "rpc.mountd");
        assert_ok(&sh("rpc.nfsd -N 3 2"), "rpc.nfsd");
        server
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        let _ = sh("rpc.nfsd 0; exportfs -au; killall rpc.mountd rpcbind");
    }
}

/// The export mounted with the kernel's NFS client; unmounted when dropped.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    /// Mounts the export, retrying while nfsd starts listening.
    fn new() -> Mounted {
        std::fs::create_dir_all(MOUNT).unwrap();
        let command = format!("mount -t nfs4 -o vers=4.2,sec=sys 127.0.0.1:/ {MOUNT}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = sh(&command);
            if out.status.success() {
                return Mounted {
                    dir: PathBuf::from(MOUNT),
                };
            }
            assert!(
                Instant::now() < deadline,
                "mounting the NFS export: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -f {}", self.dir.display()));
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_in_kernel_file_server_cannot_serve_protected_files() {
    // Without guard to begin with (an earlier test binary may leave it
    // armed, and then the nfsd module would not load).
    disarm();
    let sb = Sandbox::new("fileserver");
    // The export holds the protected directory, so the client can mount it.
    let _server = NfsServer::start(&sb.root);
    // Without a policy the export serves the file.
    let share = Mounted::new();
    assert_eq!(
        std::fs::read_to_string(share.dir.join("data/secret.txt"))
            .expect("reading through the export"),
        "patient record 4711\n",
        "the export does not serve the file without guard: the test proves nothing"
    );
    // Unmounted, the client keeps nothing of the file to answer from.
    drop(share);

    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let share = Mounted::new();
    let read = std::fs::read(share.dir.join("data/secret.txt"));
    assert!(
        read.is_err(),
        "root read a protected file through nfsd: {read:?}"
    );
    let secret = sb.file("secret.txt");
    let entries = journal_entries(
        message_id::DENIED,
        field::PATH,
        secret.to_str().unwrap(),
        Duration::from_secs(15),
    );
    assert!(
        entries.iter().any(|e| e[field::EXE]
            .as_str()
            .is_some_and(|exe| exe.starts_with("kernel thread"))),
        "no denial of a kernel thread for {}: {entries:?}",
        secret.display()
    );
    assert_ok(
        &sb.allowed_run("cat", &[secret.to_str().unwrap()]),
        "the allowed program reading its file",
    );
}
