//! New names that survive a power loss.
//!
//! A new file or directory is an entry in its parent directory, and fsyncing the file itself
//! does not make that entry durable (POSIX `fsync(2)`): after a power cut the file's data can
//! be on disk with no name pointing at it. So whoever creates a name that must survive (a node
//! key, the database, a fresh data directory) also syncs the directory holding it.
//!
//! ```text
//!   create_dir_all_synced(a/b/c)   a exists: mkdir a/b, mkdir a/b/c, fsync a, fsync a/b
//!   write file a/b/c/key           fsync key, then sync_dir(a/b/c)
//! ```

use std::fs;
use std::io;
use std::path::Path;

/// Fsyncs the directory `dir`, making the names created in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing ancestors like [`fs::create_dir_all`], then fsyncs the
/// parent of each directory it created (top down), so the whole path survives a power loss.
/// An existing directory is left as it is, unsynced.
pub(crate) fn create_dir_all_synced(dir: &Path) -> io::Result<()> {
    // Most ancestors a path can name; a limit on the walk up, far above any real path.
    const MAX_DEPTH: usize = 4_096;
    let mut created = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next {
        if d.as_os_str().is_empty() || d.exists() || created.len() >= MAX_DEPTH {
            break;
        }
        created.push(d);
        next = d.parent();
    }
    fs::create_dir_all(dir)?;
    for d in created.iter().rev() {
        sync_dir(parent_dir(d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_leaves_an_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all_synced(&deep).unwrap();
        assert!(deep.is_dir());
        // Again: nothing to create, not an error.
        create_dir_all_synced(&deep).unwrap();
        create_dir_all_synced(root.path()).unwrap();
        assert!(deep.is_dir());
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(create_dir_all_synced(&file.join("d")).is_err());
        assert!(create_dir_all_synced(&file).is_err());
    }

    #[test]
    fn parent_of_a_bare_name_is_the_current_directory() {
        assert_eq!(parent_dir(Path::new("d/node.key")), Path::new("d"));
        assert_eq!(parent_dir(Path::new("/node.key")), Path::new("/"));
        assert_eq!(parent_dir(Path::new("node.key")), Path::new("."));
    }
}
