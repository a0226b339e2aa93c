//! Hard links made before a directory was protected.
//!
//! The kernel finds a protected file by walking up from the name it was
//! opened by. A file inside a protected directory that also has a name
//! outside (a hard link made before the policy) would be reached through that
//! name unguarded. Once a directory is protected, no new link to its files
//! can be made (the `inode_link` hook); so each directory is checked once,
//! when a policy first protects it, while it can still be read.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Pointer, PolicyErrors, ResolvedPoint, ResolvedPolicy};

/// A multiply linked file met in the walk.
struct Linked {
    /// Where it was first met, and under which point.
    path: PathBuf,
    point: usize,
    nlink: u64,
    /// Names found for it inside the directories walked.
    seen: u64,
}

/// Refuses a policy whose newly protected directories hold files with hard
/// links outside every directory walked. `already_protected` are the points
/// of the policy in force: checked when they were first protected, and no
/// longer readable to anyone but their allowed programs.
pub fn check_hard_links(
    policy: &ResolvedPolicy,
    already_protected: &[ResolvedPoint],
) -> Result<(), PolicyErrors> {
    let known: HashSet<(u32, u64)> = already_protected.iter().map(|p| (p.dev, p.ino)).collect();
    let mut linked: HashMap<(u64, u64), Linked> = HashMap::new();
    let mut errors = Vec::new();
    for (index, point) in policy.points.iter().enumerate() {
        if known.contains(&(point.dev, point.ino)) {
            continue;
        }
        if let Err(message) = walk(&point.path, index, &mut linked) {
            errors.push(Pointer::protected(index).key("path").error(message));
        }
    }
    let mut outside: Vec<&Linked> = linked.values().filter(|l| l.seen < l.nlink).collect();
    outside.sort_by(|a, b| a.path.cmp(&b.path));
    for file in outside {
        errors.push(Pointer::protected(file.point).key("path").error(format!(
            "{} has {} hard links but only {} inside protected directories; the \
             others would reach its data unguarded. Remove them first (find / -xdev \
             -samefile {})",
            file.path.display(),
            file.nlink,
            file.seen,
            file.path.display()
        )));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PolicyErrors(errors))
    }
}

/// Records every multiply linked non-directory under `dir`, on its own
/// filesystem (nothing can be mounted inside a protected directory).
fn walk(dir: &Path, point: usize, linked: &mut HashMap<(u64, u64), Linked>) -> Result<(), String> {
    let root_dev = fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .dev();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current)
            .map_err(|e| format!("cannot list {}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", current.display()))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if meta.dev() != root_dev {
                continue;
            }
            if meta.is_dir() {
                pending.push(path);
            } else if meta.nlink() > 1 {
                linked
                    .entry((meta.dev(), meta.ino()))
                    .or_insert(Linked {
                        path,
                        point,
                        nlink: meta.nlink(),
                        seen: 0,
                    })
                    .seen += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse, resolve};

    fn policy_for(dirs: &[&Path]) -> ResolvedPolicy {
        let protected: Vec<_> = dirs
            .iter()
            .map(|d| serde_json::json!({"path": d, "rules": []}))
            .collect();
        let text = serde_json::json!({"mode": "enforce", "protected": protected});
        resolve(&parse(&text.to_string()).unwrap()).unwrap()
    }

    #[test]
    fn a_link_outside_the_protected_directory_is_refused_with_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(data.join("sub")).unwrap();
        let record = data.join("sub/record");
        fs::write(&record, "patient").unwrap();
        fs::hard_link(&record, tmp.path().join("stolen")).unwrap();
        let errors = check_hard_links(&policy_for(&[&data]), &[]).unwrap_err();
        assert!(
            errors.contains("/protected/0/path", "has 2 hard links but only 1 inside"),
            "{errors}"
        );
        assert!(errors.to_string().contains("sub/record"), "{errors}");
    }

    #[test]
    fn links_inside_protected_directories_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), "x").unwrap();
        fs::hard_link(a.join("f"), a.join("g")).unwrap();
        fs::hard_link(a.join("f"), b.join("h")).unwrap();
        check_hard_links(&policy_for(&[&a, &b]), &[]).unwrap();
    }

    #[test]
    fn directories_already_protected_are_not_walked_again() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("f"), "x").unwrap();
        fs::hard_link(data.join("f"), tmp.path().join("outside")).unwrap();
        let policy = policy_for(&[&data]);
        check_hard_links(&policy, &policy.points).unwrap();
    }
}
