//! Guest tests: XFS's handle ioctls.
//!
//! `XFS_IOC_ATTRMULTI_BY_HANDLE` (what xfsdump's restore uses) gets, sets
//! and removes any file's extended attributes and ACLs given its handle,
//! issued on any descriptor of the filesystem: the kernel calls no inode
//! hook for the file. On a filesystem holding protected directories guard
//! refuses it (and `XFS_IOC_ATTRLIST_BY_HANDLE`) to all but guardd.

use guard::journal::{field, message_id};
use guard_tests::guest::*;
use std::ffi::{c_char, c_void, CString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// `struct xfs_fsop_handlereq`.
#[repr(C)]
struct HandleRequest {
    fd: u32,
    path: *const c_char,
    oflags: u32,
    ihandle: *const c_void,
    ihandlen: u32,
    ohandle: *mut c_void,
    ohandlen: *mut u32,
}

/// `struct xfs_attr_multiop`.
#[repr(C)]
struct AttrMultiOp {
    am_opcode: u32,
    am_error: i32,
    am_attrname: *const c_char,
    am_attrvalue: *mut c_void,
    am_length: u32,
    am_flags: u32,
}

/// `struct xfs_fsop_attrmulti_handlereq`.
#[repr(C)]
struct AttrMultiRequest {
    hreq: HandleRequest,
    opcount: u32,
    ops: *mut AttrMultiOp,
}

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((b'X' as u64) << 8) | nr
}
const XFS_IOC_PATH_TO_HANDLE: u64 = ioc(3, 105, std::mem::size_of::<HandleRequest>());
const XFS_IOC_ATTRMULTI_BY_HANDLE: u64 = ioc(1, 123, std::mem::size_of::<AttrMultiRequest>());
const ATTR_OP_SET: u32 = 2;

/// The XFS handle of `path`, asked through a descriptor of its filesystem.
fn handle_of(fs: &File, path: &Path) -> Vec<u8> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut handle = vec![0u8; 64];
    let mut len = handle.len() as u32;
    let mut req = HandleRequest {
        fd: 0,
        path: path.as_ptr(),
        oflags: 0,
        ihandle: std::ptr::null(),
        ihandlen: 0,
        ohandle: handle.as_mut_ptr().cast(),
        ohandlen: &mut len,
    };
    // SAFETY: the request and its buffers outlive the call.
    let rc = unsafe { libc::ioctl(fs.as_raw_fd(), XFS_IOC_PATH_TO_HANDLE, &mut req) };
    assert_eq!(
        rc,
        0,
        "XFS_IOC_PATH_TO_HANDLE: {}",
        std::io::Error::last_os_error()
    );
    handle.truncate(len as usize);
    handle
}

/// Sets the `user.NAME` attribute of the file with `handle` to `value` by
/// handle; the ioctl's error, else the operation's.
fn set_attr_by_handle(fs: &File, handle: &[u8], name: &str, value: &[u8]) -> std::io::Result<()> {
    let name = CString::new(name).unwrap();
    let mut value = value.to_vec();
    let mut op = AttrMultiOp {
        am_opcode: ATTR_OP_SET,
        am_error: 0,
        am_attrname: name.as_ptr(),
        am_attrvalue: value.as_mut_ptr().cast(),
        am_length: value.len() as u32,
        am_flags: 0, // the user namespace
    };
    let mut req = AttrMultiRequest {
        hreq: HandleRequest {
            fd: 0,
            path: std::ptr::null(),
            oflags: 0,
            ihandle: handle.as_ptr().cast(),
            ihandlen: handle.len() as u32,
            ohandle: std::ptr::null_mut(),
            ohandlen: std::ptr::null_mut(),
        },
        opcount: 1,
        ops: &mut op,
    };
    // SAFETY: the request, the operation and its buffers outlive the call.
    let rc = unsafe { libc::ioctl(fs.as_raw_fd(), XFS_IOC_ATTRMULTI_BY_HANDLE, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if op.am_error != 0 {
        return Err(std::io::Error::from_raw_os_error(-op.am_error));
    }
    Ok(())
}

/// The value of extended attribute `name` of `path`, if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut value = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    (n >= 0).then(|| value[..n as usize].to_vec())
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn extended_attributes_of_protected_files_cannot_be_changed_by_xfs_handle() {
    disarm();
    let xfs = LoopFs::mount_as("xfs-handles", "xfs", "320M");
    let data = xfs.mountpoint.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let record = data.join("record.txt");
    std::fs::write(&record, "patient record on xfs\n").unwrap();
    let fs = File::open(&xfs.mountpoint).unwrap();
    let handle = handle_of(&fs, &record);

    // Without guard, root sets an attribute of the file by its handle.
    set_attr_by_handle(&fs, &handle, "guard-before", b"root").unwrap();
    assert_eq!(
        xattr(&record, "user.guard-before").as_deref(),
        Some(&b"root"[..])
    );

    let sb = Sandbox::new("xfs-handles-sandbox");
    let _guardd = Guardd::start();
    let mut policy = sb.policy("enforce");
    policy["protected"][0]["path"] = serde_json::json!(data);
    apply(&policy);
    assert_open_eperm(&record);

    let refused = set_attr_by_handle(&fs, &handle, "guard-armed", b"root");
    assert_eq!(
        refused.err().and_then(|e| e.raw_os_error()),
        Some(EPERM),
        "XFS_IOC_ATTRMULTI_BY_HANDLE on a filesystem holding a protected directory"
    );
    // Root still reads attributes (so the absence below is telling).
    assert_eq!(
        xattr(&record, "user.guard-before").as_deref(),
        Some(&b"root"[..])
    );
    assert_eq!(
        xattr(&record, "user.guard-armed"),
        None,
        "the attribute was set"
    );
    let entries = journal_entries(
        message_id::DENIED,
        field::HOOK,
        "file_ioctl",
        Duration::from_secs(15),
    );
    assert!(
        entries.iter().any(|e| e[field::PATH]
            .as_str()
            .is_some_and(|p| p.contains("XFS_IOC_ATTRMULTI_BY_HANDLE"))
            && e[field::ACCESS] == "setattr"),
        "no alert naming the handle ioctl: {entries:?}"
    );
    // The allowed binary still works there.
    let out = sb.allowed_run("cat", &[record.to_str().unwrap()]);
    assert_ok(&out, "the allowed binary reading on XFS");
}
