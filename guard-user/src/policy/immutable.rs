//! The policy's `immutable`: files and folders nobody may change while the
//! policy is active, such as the database's configuration, the scripts that
//! start it, and the files it would read if they existed (created empty so
//! they can be listed). Without this, root could edit the configuration
//! (`skip-grant-tables`) and have the supervisor restart the database.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use guard_common::{immutable, ExeKey};
use serde::{Deserialize, Serialize};

use super::identity::{Follow, Identities};
use super::resolve::io_problem;
use super::{Pointer, PolicyError};

/// Symlinks followed in a row before the chain counts as a loop (as the kernel's ELOOP).
const MAX_SYMLINK_HOPS: usize = 40;

/// One file, symlink or folder nobody may change, as the kernel identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImmutable {
    /// The path it was found under.
    pub path: PathBuf,
    pub dev: u32,
    pub ino: u64,
    /// A folder: nothing may be created, removed or renamed in it either.
    pub folder: bool,
}

impl ResolvedImmutable {
    pub fn key(&self) -> ExeKey {
        ExeKey {
            dev: self.dev,
            _pad: 0,
            ino: self.ino,
        }
    }

    /// `GUARD_IMMUTABLE` bits.
    pub fn kind(&self) -> u32 {
        if self.folder {
            immutable::DIR
        } else {
            immutable::FILE
        }
    }
}

/// What `immutable` names, resolved: every file, symlink and folder (a folder
/// with everything below it; a symlink with the chain it leads through), and
/// the folders above them, on which nothing may be mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImmutables {
    pub entries: Vec<ResolvedImmutable>,
    /// (kernel `dev_t`, inode) of every folder above an entry, up to `/`.
    pub ancestors: Vec<(u32, u64)>,
}

/// Resolves the listed paths. Problems go to `errors` with the list item's location.
pub fn resolve_immutable(listed: &[PathBuf], errors: &mut Vec<PolicyError>) -> ResolvedImmutables {
    let mut walk = Walk::default();
    for (index, path) in listed.iter().enumerate() {
        let at = Pointer::root().key("immutable").index(index);
        if let Err(message) = walk.add(path, 0) {
            errors.push(at.error(message));
        }
    }
    let ancestors = match walk.ancestors() {
        Ok(ancestors) => ancestors,
        Err(message) => {
            errors.push(Pointer::root().key("immutable").error(message));
            Vec::new()
        }
    };
    let mut entries: Vec<ResolvedImmutable> = walk.found.into_values().collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    ResolvedImmutables { entries, ancestors }
}

#[derive(Default)]
struct Walk {
    found: BTreeMap<(u32, u64), ResolvedImmutable>,
    /// The folders holding entries, to find their ancestors once.
    parents: BTreeSet<PathBuf>,
    identities: Identities,
}

impl Walk {
    /// Records `path` itself (never following a final symlink for the
    /// record), then what it leads to: a symlink's target, a folder's entries.
    fn add(&mut self, path: &Path, hops: usize) -> Result<(), String> {
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        let metadata = fs::symlink_metadata(path).map_err(|e| io_problem(path, e))?;
        let kind = metadata.file_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(format!(
                "{} is neither a regular file, a symlink nor a folder",
                path.display()
            ));
        }
        let key = self.identities.of_path(path, Follow::NotTheLast)?;
        if self.found.contains_key(&key) {
            return Ok(()); // seen: a hard link, or a symlink back into the tree
        }
        self.found.insert(
            key,
            ResolvedImmutable {
                path: path.to_path_buf(),
                dev: key.0,
                ino: key.1,
                folder: metadata.is_dir(),
            },
        );
        if let Some(parent) = path.parent() {
            self.parents.insert(parent.to_path_buf());
        }
        if kind.is_symlink() {
            return self.follow(path, hops);
        }
        if kind.is_dir() {
            return self.add_folder(path);
        }
        Ok(())
    }

    /// Marks the chain a symlink leads through: each link, and what it ends at.
    fn follow(&mut self, link: &Path, hops: usize) -> Result<(), String> {
        if hops >= MAX_SYMLINK_HOPS {
            return Err(format!("{}: too many levels of symlinks", link.display()));
        }
        let target = fs::read_link(link).map_err(|e| io_problem(link, e))?;
        let target = match link.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
        self.add(&target, hops + 1)
            .map_err(|problem| format!("{} leads to a problem: {problem}", link.display()))
    }

    /// Every entry of a folder, at every depth. Sockets, pipes and device
    /// nodes in it are left out: they hold no configuration, and the folder's
    /// mark keeps them from being replaced.
    fn add_folder(&mut self, folder: &Path) -> Result<(), String> {
        let entries = fs::read_dir(folder).map_err(|e| io_problem(folder, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_problem(folder, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io_problem(&path, e))?;
            if kind.is_file() || kind.is_dir() || kind.is_symlink() {
                self.add(&path, 0)?;
            }
        }
        Ok(())
    }

    /// The folders above every entry, up to `/`, by their canonical paths.
    fn ancestors(&mut self) -> Result<Vec<(u32, u64)>, String> {
        let mut canonical: BTreeSet<PathBuf> = BTreeSet::new();
        for parent in &self.parents {
            let real = fs::canonicalize(parent).map_err(|e| io_problem(parent, e))?;
            canonical.extend(real.ancestors().map(Path::to_path_buf));
        }
        let mut identities = BTreeSet::new();
        for folder in canonical {
            identities.insert(self.identities.of_path(&folder, Follow::Symlinks)?);
        }
        Ok(identities.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::resolve::kernel_dev;
    use std::os::unix::fs::{symlink, MetadataExt};

    fn names(resolved: &ResolvedImmutables, root: &Path) -> Vec<(String, bool)> {
        resolved
            .entries
            .iter()
            .map(|e| {
                let name = e.path.strip_prefix(root).unwrap_or(&e.path);
                (name.display().to_string(), e.folder)
            })
            .collect()
    }

    #[test]
    fn a_folder_stands_for_everything_below_it_and_symlink_chains_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let conf = root.join("mysql");
        fs::create_dir_all(conf.join("conf.d")).unwrap();
        fs::write(conf.join("mariadb.cnf"), b"[mysqld]").unwrap();
        fs::write(conf.join("conf.d/50-server.cnf"), b"datadir=/srv").unwrap();
        // my.cnf -> alternatives/my.cnf -> mysql/mariadb.cnf, as Debian has it.
        fs::create_dir(root.join("alternatives")).unwrap();
        symlink(conf.join("mariadb.cnf"), root.join("alternatives/my.cnf")).unwrap();
        symlink("../alternatives/my.cnf", conf.join("my.cnf")).unwrap();
        fs::write(root.join("elsewhere.cnf"), b"").unwrap();

        let mut errors = Vec::new();
        let resolved = resolve_immutable(std::slice::from_ref(&conf), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let found = names(&resolved, root);
        for expected in [
            ("mysql", true),
            ("mysql/conf.d", true),
            ("mysql/conf.d/50-server.cnf", false),
            ("mysql/mariadb.cnf", false),
            ("mysql/my.cnf", false),
        ] {
            assert!(
                found.contains(&(expected.0.to_string(), expected.1)),
                "{expected:?} missing from {found:?}"
            );
        }
        // The link in the middle of the chain, outside the folder, is marked too.
        assert!(
            found
                .iter()
                .any(|(n, _)| n.ends_with("alternatives/my.cnf")),
            "{found:?}"
        );
        assert!(
            !found.iter().any(|(n, _)| n.contains("elsewhere")),
            "{found:?}"
        );
        let kinds: BTreeSet<u32> = resolved.entries.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, BTreeSet::from([immutable::FILE, immutable::DIR]));

        // Nothing may be mounted on the folders above the entries.
        let identity = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (kernel_dev(m.dev()), m.ino())
        };
        for folder in [root, &root.join("alternatives"), Path::new("/")] {
            assert!(
                resolved.ancestors.contains(&identity(folder)),
                "{} is not an ancestor",
                folder.display()
            );
        }
    }

    #[test]
    fn problems_name_the_list_item() {
        let dir = tempfile::tempdir().unwrap();
        symlink("nowhere", dir.path().join("dangling")).unwrap();
        let listed = vec![
            dir.path().join("missing.cnf"),
            "relative.cnf".into(),
            dir.path().join("dangling"),
            "/dev/null".into(),
        ];
        let mut errors = Vec::new();
        resolve_immutable(&listed, &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 4, "{text:?}");
        assert!(text[0].contains("/immutable/0") && text[0].contains("does not exist"));
        assert!(text[1].contains("/immutable/1") && text[1].contains("absolute"));
        assert!(text[2].contains("/immutable/2") && text[2].contains("leads to"));
        assert!(text[3].contains("/immutable/3") && text[3].contains("neither"));
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        symlink(dir.path().join("b"), dir.path().join("a")).unwrap();
        symlink(dir.path().join("a"), dir.path().join("b")).unwrap();
        let mut errors = Vec::new();
        let resolved = resolve_immutable(&[dir.path().join("a")], &mut errors);
        // a -> b -> a: the second visit of `a` is recognised as seen.
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(resolved.entries.len(), 2);
    }
}
