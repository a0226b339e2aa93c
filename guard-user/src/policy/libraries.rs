//! The policy's `libraries`: the files its binaries may map executable.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use guard_common::ExeKey;
use serde::{Deserialize, Serialize};

use super::identity::{Follow, Identities};
use super::resolve::io_problem;
use super::{Pointer, PolicyError};

/// A file the policy's binaries may map executable, as the kernel identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedLibrary {
    /// The path it was found under (a directory entry may be a symlink to it).
    pub path: PathBuf,
    pub dev: u32,
    pub ino: u64,
}

impl ResolvedLibrary {
    pub fn key(&self) -> ExeKey {
        ExeKey {
            dev: self.dev,
            _pad: 0,
            ino: self.ino,
        }
    }
}

/// The files `listed` names: a file itself, a directory the regular files
/// directly in it (symlinks followed, so `libfoo.so.1` and its target count
/// once). Each file once, in path order. Problems go to `errors` with the
/// list item's location.
pub fn resolve_libraries(
    listed: &[PathBuf],
    errors: &mut Vec<PolicyError>,
) -> Vec<ResolvedLibrary> {
    let mut found = Found::default();
    for (index, path) in listed.iter().enumerate() {
        let at = Pointer::root().key("libraries").index(index);
        if let Err(message) = found.add_listed(path) {
            errors.push(at.error(message));
        }
    }
    let mut libraries: Vec<ResolvedLibrary> = found
        .files
        .into_iter()
        .map(|((dev, ino), path)| ResolvedLibrary { path, dev, ino })
        .collect();
    libraries.sort_by(|a, b| a.path.cmp(&b.path));
    libraries
}

/// The files found so far, each once, by the identity the kernel sees.
#[derive(Default)]
struct Found {
    files: BTreeMap<(u32, u64), PathBuf>,
    identities: Identities,
}

impl Found {
    fn add_listed(&mut self, path: &Path) -> Result<(), String> {
        let metadata = fs::metadata(path).map_err(|e| io_problem(path, e))?;
        if metadata.is_file() {
            return self.add_file(path);
        }
        if !metadata.is_dir() {
            return Err(format!(
                "{} is neither a regular file nor a directory",
                path.display()
            ));
        }
        let entries = fs::read_dir(path).map_err(|e| io_problem(path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_problem(path, e))?;
            let file = entry.path();
            // A dangling symlink or a subdirectory is not a library.
            if fs::metadata(&file).is_ok_and(|m| m.is_file()) {
                self.add_file(&file)?;
            }
        }
        Ok(())
    }

    fn add_file(&mut self, path: &Path) -> Result<(), String> {
        let key = self.identities.of_path(path, Follow::Symlinks)?;
        self.files.entry(key).or_insert_with(|| path.to_path_buf());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_stands_for_its_files_each_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("libfoo.so.1.2"), b"x").unwrap();
        std::os::unix::fs::symlink("libfoo.so.1.2", root.join("libfoo.so.1")).unwrap();
        std::os::unix::fs::symlink("missing", root.join("dangling.so")).unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/inner.so"), b"y").unwrap();
        fs::write(root.join("other.so"), b"z").unwrap();
        let mut errors = Vec::new();
        let listed = vec![root.to_path_buf(), root.join("sub/inner.so")];
        let libraries = resolve_libraries(&listed, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<String> = libraries
            .iter()
            .map(|l| l.path.strip_prefix(root).unwrap().display().to_string())
            .collect();
        // libfoo.so.1 and libfoo.so.1.2 are one file; sub/ itself is not listed.
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"other.so".to_string()));
        assert!(names.contains(&"sub/inner.so".to_string()));
        assert!(names.iter().any(|n| n.starts_with("libfoo.so.1")));
    }

    #[test]
    fn problems_name_the_list_item() {
        let dir = tempfile::tempdir().unwrap();
        let listed = vec![
            dir.path().to_path_buf(),
            dir.path().join("missing.so"),
            "/dev/null".into(),
        ];
        let mut errors = Vec::new();
        resolve_libraries(&listed, &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].contains("/libraries/1") && text[0].contains("does not exist"),
            "{text:?}"
        );
        assert!(
            text[1].contains("/libraries/2") && text[1].contains("neither"),
            "{text:?}"
        );
    }
}
