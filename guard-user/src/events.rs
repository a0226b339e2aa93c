//! Decision events from the kernel ring buffer, rendered for the journal.

use guard_common::{access, flags, hook, verdict, Event, ExeKey, NO_RULE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Names the daemon knows for the numbers in an event (from the applied policy).
#[derive(Clone, Debug, Default)]
pub struct PolicyNames {
    /// Protected directory path by point index.
    pub points: Vec<PathBuf>,
    /// Rule label by rule id.
    pub rules: Vec<String>,
    /// Allowed binaries' paths by identity.
    pub binaries: HashMap<ExeKey, PathBuf>,
}

/// Reads an event out of a ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data; the record may be unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

/// An event rendered with names: what goes into the journal and the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: &'static str,
    pub path: String,
    pub point: String,
    pub inode: u64,
    pub device: String,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: String,
    pub access: String,
    pub rule: String,
    pub hook: &'static str,
    pub fail_closed: bool,
}

impl Decision {
    pub fn from_event(e: &Event, names: &PolicyNames) -> Self {
        let point = names.points.get(e.point as usize);
        Decision {
            verdict: verdict_name(e.verdict),
            path: object_path(point.map(PathBuf::as_path), e),
            point: point.map(|p| p.display().to_string()).unwrap_or_default(),
            inode: e.ino,
            device: kernel_dev_string(e.dev),
            pid: e.tgid,
            tid: e.pid,
            uid: e.uid,
            gid: e.gid,
            comm: c_string(&e.comm),
            exe: exe_path(e, names),
            access: access_names(e.access),
            rule: rule_label(e.rule, names),
            hook: hook::name(e.hook),
            fail_closed: e.flags & flags::FAIL_CLOSED != 0,
        }
    }

    /// The audit trail's record of this decision.
    pub fn audit_event(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["kind"] = self.verdict.into();
        v
    }

    /// One readable sentence.
    pub fn message(&self) -> String {
        let what = match self.verdict {
            "denied" => "denied",
            "audited" => "allowed (audited)",
            _ => "would deny (audit mode)",
        };
        format!(
            "guard {what} {} of {} to {} (pid {}, uid {}, rule: {})",
            self.access, self.path, self.exe, self.pid, self.uid, self.rule
        )
    }
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        verdict::DENIED => "denied",
        verdict::AUDITED => "audited",
        verdict::WOULD_DENY => "would-deny",
        _ => "unknown",
    }
}

/// Comma-separated policy names of the access bits.
pub fn access_names(bits: u32) -> String {
    access::NAMES
        .iter()
        .filter(|(_, bit)| bits & bit != 0)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

fn rule_label(rule: u32, names: &PolicyNames) -> String {
    if rule == NO_RULE {
        return "default-deny".into();
    }
    names
        .rules
        .get(rule as usize)
        .cloned()
        .unwrap_or_else(|| format!("rule #{rule}"))
}

/// The protected directory joined with the components the kernel collected.
fn object_path(point: Option<&Path>, e: &Event) -> String {
    let mut path = point
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<unknown>".into());
    if e.flags & flags::PATH_TRUNCATED != 0 {
        path.push_str("/...");
    }
    path + &join_components(&e.path)
}

/// The caller's executable: an allowed binary's policy path, else the path the
/// kernel collected under the mount point of its filesystem, else /proc.
fn exe_path(e: &Event, names: &PolicyNames) -> String {
    let key = ExeKey {
        dev: e.exe_dev,
        _pad: 0,
        ino: e.exe_ino,
    };
    if let Some(p) = names.binaries.get(&key) {
        return p.display().to_string();
    }
    let components = join_components(&e.exe_path);
    if !components.is_empty() {
        if let Some(mount) = mount_point(e.exe_dev) {
            let dots = if e.flags & flags::EXE_TRUNCATED != 0 {
                "/..."
            } else {
                ""
            };
            return format!("{}{dots}{components}", mount.trim_end_matches('/'));
        }
    }
    std::fs::read_link(format!("/proc/{}/exe", e.tgid))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| {
            format!(
                "<unknown> dev {} ino {}{components}",
                kernel_dev_string(e.exe_dev),
                e.exe_ino
            )
        })
}

/// "/a/b/c" from components collected nearest first.
fn join_components<const N: usize>(names: &[[u8; N]]) -> String {
    let mut path = String::new();
    for name in names.iter().rev() {
        let name = c_string(name);
        if !name.is_empty() {
            path.push('/');
            path.push_str(&name);
        }
    }
    path
}

/// Where the filesystem with kernel device `dev` is mounted (its root, not a
/// bind mount of a subfolder), from /proc/self/mountinfo, cached.
fn mount_point(dev: u32) -> Option<String> {
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<u32, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = cache.lock().unwrap().get(&dev) {
        return Some(m.clone());
    }
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let found = table.lines().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let (major, minor) = f.get(2)?.split_once(':')?;
        let this = (major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?;
        (this == dev && *f.get(3)? == "/").then(|| f.get(4).map(|m| m.to_string()))?
    })?;
    cache.lock().unwrap().insert(dev, found.clone());
    Some(found)
}

/// "major:minor" of a kernel-encoded dev_t.
pub fn kernel_dev_string(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xfffff)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::{EXE_DEPTH, NAME_LEN, PATH_DEPTH};

    fn event() -> Event {
        let mut path = [[0u8; NAME_LEN]; PATH_DEPTH];
        path[0][..7].copy_from_slice(b"t1.ibd\0");
        path[1][..5].copy_from_slice(b"shop\0");
        Event {
            verdict: verdict::DENIED,
            access: access::READ | access::WRITE,
            hook: hook::FILE_OPEN,
            flags: 0,
            pid: 41,
            tgid: 40,
            uid: 0,
            gid: 0,
            point: 0,
            rule: NO_RULE,
            generation: 1,
            _pad: 0,
            dev: (8 << 20) | 1,
            exe_dev: (8 << 20) | 1,
            ino: 1234,
            exe_ino: 99,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
            path,
            exe_path: [[0; NAME_LEN]; EXE_DEPTH],
        }
    }

    #[test]
    fn renders_path_access_and_default_rule() {
        let names = PolicyNames {
            points: vec!["/var/lib/mysql".into()],
            binaries: [(
                ExeKey {
                    dev: (8 << 20) | 1,
                    _pad: 0,
                    ino: 99,
                },
                "/usr/bin/cat".into(),
            )]
            .into(),
            ..Default::default()
        };
        let d = Decision::from_event(&event(), &names);
        assert_eq!(d.path, "/var/lib/mysql/shop/t1.ibd");
        assert_eq!(d.access, "read,write");
        assert_eq!(d.rule, "default-deny");
        assert_eq!(d.exe, "/usr/bin/cat");
        assert_eq!(d.device, "8:1");
        assert_eq!(d.pid, 40);
        assert!(d
            .message()
            .contains("denied read,write of /var/lib/mysql/shop/t1.ibd"));
    }

    #[test]
    fn exe_of_an_exited_process_comes_from_the_kernel_path_and_mountinfo() {
        use std::os::unix::fs::MetadataExt;
        let root_dev = crate::policy::kernel_dev(std::fs::metadata("/").unwrap().dev());
        let mut e = event();
        e.tgid = u32::MAX; // no such process: /proc cannot answer
        e.exe_dev = root_dev;
        for (slot, name) in e.exe_path.iter_mut().zip(["cat", "bin", "usr"]) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        let d = Decision::from_event(&e, &PolicyNames::default());
        assert_eq!(d.exe, "/usr/bin/cat");
    }

    #[test]
    fn short_record_is_rejected() {
        assert!(decode(&[0u8; 16]).is_none());
    }
}
