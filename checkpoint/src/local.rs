//! Direct file I/O for stores on local disk (a path or `file://` URL), behind the same keys as
//! the `LocalFileSystem` they are opened with.
//!
//! `LocalFileSystem::with_fsync` makes every put durable on its own: it fsyncs each directory
//! it creates before writing, then the file, then the parent directory after the rename. For a
//! checkpoint that is a chain of separate journal commits per segment. Segments only need to be
//! durable together, before the manifest is created, so the segment writer writes them here
//! (staging file, `fdatasync`, rename, the same `<key>#<n>` staging names object_store uses)
//! and fsyncs each changed directory once, when the writer finishes. Readers read a segment
//! with one `read` into uninitialised capacity instead of a zero-filled buffer.
//!
//! Everything else (manifests, epochs, pins, listings, deletes) still goes through the object
//! store. Stores built with [`CheckpointStore::from_object_store`](crate::CheckpointStore) (a
//! fault-injecting wrapper, say) never take this path.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use object_store::path::Path;

/// The root directory of a local store, canonicalised as `LocalFileSystem` does.
#[derive(Clone, Debug)]
pub(crate) struct LocalDisk {
    root: PathBuf,
    fsync: bool,
}

impl LocalDisk {
    pub(crate) fn new(root: PathBuf, fsync: bool) -> Self {
        Self { root, fsync }
    }

    /// Whether writes must be made durable.
    pub(crate) fn fsync(&self) -> bool {
        self.fsync
    }

    /// The file behind an object store path. Keys are built from validated tokens
    /// (`[A-Za-z0-9_-]`, digits and fixed extensions), which `LocalFileSystem` maps to files
    /// without any escaping, so both name the same file.
    pub(crate) fn file(&self, path: &Path) -> PathBuf {
        let mut p = self.root.clone();
        for part in path.parts() {
            p.push(part.as_ref());
        }
        p
    }
}

/// Wraps an IO error as the object store error `LocalFileSystem` would have returned, so that
/// callers map it like any other store error.
pub(crate) fn store_error(e: io::Error, file: &FsPath) -> object_store::Error {
    if e.kind() == io::ErrorKind::NotFound {
        return object_store::Error::NotFound {
            path: file.display().to_string(),
            source: Box::new(e),
        };
    }
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
    }
}

/// Writes a blob at `dest` from `parts`: a staging file beside it, `fdatasync` (when `fsync`),
/// then a rename, so that the key holds either nothing or the whole blob. The directory entries
/// are *not* synced here: returns every directory whose entries changed (the parent, and each
/// directory created for it up to and including the first that existed), which the caller must
/// fsync with [`sync_dirs`] before the blob counts as durable.
pub(crate) fn write_blob(dest: &FsPath, parts: &[Bytes], fsync: bool) -> io::Result<Vec<PathBuf>> {
    let parent = dest
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a blob needs a directory"))?;
    let mut dirty = vec![parent.to_path_buf()];
    if !parent.is_dir() {
        // Note which directories are new before creating them: those and the first existing
        // ancestor gain entries.
        let mut dir = parent;
        while let Some(up) = dir.parent() {
            dirty.push(up.to_path_buf());
            if up.is_dir() {
                break;
            }
            dir = up;
        }
        std::fs::create_dir_all(parent)?;
    }
    let (mut file, staging) = create_staging(dest)?;
    let written = parts
        .iter()
        .try_for_each(|p| file.write_all(p))
        .and_then(|()| if fsync { file.sync_data() } else { Ok(()) })
        .and_then(|()| std::fs::rename(&staging, dest));
    if let Err(e) = written {
        // Best effort: a leftover staging file is garbage that GC removes.
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(dirty)
}

/// Opens a fresh staging file `<dest>#<n>`, the names `LocalFileSystem` uses and skips when
/// listing.
fn create_staging(dest: &FsPath) -> io::Result<(File, PathBuf)> {
    for n in 1u32.. {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staging = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(f) => return Ok((f, staging)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free staging file name"))
}

/// Fsyncs directories so that the entries created in them are durable.
pub(crate) fn sync_dirs<'a>(dirs: impl IntoIterator<Item = &'a PathBuf>) -> io::Result<()> {
    for dir in dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &FsPath) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &FsPath) -> io::Result<()> {
    // Directories cannot be opened and synced portably elsewhere; LocalFileSystem skips it too.
    Ok(())
}

/// What [`list_files`] found under a directory.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Every regular file: its path relative to the listed directory (`/`-separated) and size.
    pub(crate) files: Vec<(String, u64)>,
    /// Every symbolic link met (relative paths): neither entered nor listed as files.
    pub(crate) links: Vec<String>,
}

/// Lists the regular files under `dir`, recursively, without following a symbolic link: a
/// link (to a file or a directory) is reported in [`Listing::links`] and not entered, so a
/// link planted in a store can never make a caller delete what it points to. The components of
/// `below` (relative to `dir`, `/`-separated) must be real directories too: when one is a link
/// the listing holds that link alone. `dir` itself may be a link (where the operator chose to
/// put the store's data). A missing directory lists as empty; names that are not UTF-8 are not
/// cohort's and are left out.
pub(crate) fn list_files(dir: &FsPath, below: &str) -> io::Result<Listing> {
    let mut listing = Listing::default();
    let mut start = dir.to_path_buf();
    let mut prefix = String::new();
    for part in below.split('/').filter(|p| !p.is_empty()) {
        start.push(part);
        prefix.push_str(part);
        prefix.push('/');
        match std::fs::symlink_metadata(&start) {
            Ok(meta) if meta.file_type().is_symlink() => {
                listing.links.push(prefix.trim_end_matches('/').to_owned());
                return Ok(listing);
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(listing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(e),
        }
    }
    let mut pending = vec![(start, prefix)];
    while let Some((path, prefix)) = pending.pop() {
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            // Removed meanwhile (GC's automatic cleanup of an emptied directory, say).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let relative = format!("{prefix}{name}");
            // `DirEntry::file_type` and `metadata` describe the entry itself, never a link's
            // target.
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                listing.links.push(relative);
            } else if kind.is_dir() {
                pending.push((entry.path(), format!("{relative}/")));
            } else if kind.is_file() {
                listing.files.push((relative, entry.metadata()?.len()));
            }
        }
    }
    Ok(listing)
}

/// One segment read from local disk: its size, its bytes from the start up to the end of the
/// last wanted entry (or the file's end), and the crc of each wanted entry without its trailer,
/// when the entry lies within those bytes.
pub(crate) struct SegmentRead {
    pub(crate) size: u64,
    pub(crate) span: Bytes,
    pub(crate) crcs: Vec<Option<u32>>,
}

/// Reads the header and the `entries` of a segment with one sequential read into uninitialised
/// capacity (no zero-fill), and computes the entries' crcs here, on the blocking thread, so that
/// several segments are read and checked on several cores.
pub(crate) fn read_segment(
    file: &FsPath,
    header_len: u64,
    entries: &[Range<u64>],
) -> io::Result<SegmentRead> {
    let f = File::open(file)?;
    let size = f.metadata()?.len();
    let end = entries
        .iter()
        .map(|r| r.end)
        .fold(header_len, u64::max)
        .min(size);
    let mut buf = Vec::with_capacity(usize::try_from(end).unwrap_or(0));
    f.take(end).read_to_end(&mut buf)?;
    let span = Bytes::from(buf);
    let crcs = entries
        .iter()
        .map(|r| {
            let start = usize::try_from(r.start).ok()?;
            let body_end = usize::try_from(r.end.checked_sub(4)?).ok()?;
            (r.start >= header_len && start <= body_end)
                .then(|| span.get(start..body_end).map(crate::format::crc))
                .flatten()
        })
        .collect();
    Ok(SegmentRead { size, span, crcs })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn write_blob_reports_every_directory_it_changed() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let dest = root.join("segments/1/r/w-000000.seg");
        let parts = [Bytes::from_static(b"abc"), Bytes::from_static(b"def")];
        let dirty = write_blob(&dest, &parts, true).unwrap();
        assert_eq!(
            dirty,
            vec![
                root.join("segments/1/r"),
                root.join("segments/1"),
                root.join("segments"),
                root.clone(),
            ]
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"abcdef");
        // A second blob in the existing directory changes only that directory; no staging
        // file is left behind.
        let dest2 = root.join("segments/1/r/w-000001.seg");
        assert_eq!(
            write_blob(&dest2, &parts, true).unwrap(),
            vec![root.join("segments/1/r")]
        );
        let names: Vec<_> = std::fs::read_dir(root.join("segments/1/r"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        sync_dirs(&dirty).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn list_files_reports_links_without_entering_them() {
        use std::os::unix::fs::symlink;

        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), b"x").unwrap();
        let top = root.path().join("segments");
        std::fs::create_dir_all(top.join("1/r")).unwrap();
        std::fs::write(top.join("1/r/a.seg"), b"abc").unwrap();
        symlink(outside.path(), top.join("1/dirlink")).unwrap();
        symlink(outside.path().join("f"), top.join("1/r/filelink")).unwrap();

        let mut all = list_files(&top, "").unwrap();
        all.links.sort();
        assert_eq!(all.files, vec![("1/r/a.seg".to_owned(), 3)]);
        assert_eq!(all.links, vec!["1/dirlink", "1/r/filelink"]);

        let through = list_files(&top, "1/dirlink").unwrap();
        assert!(through.files.is_empty());
        assert_eq!(through.links, vec!["1/dirlink"]);
        let round = list_files(&top, "1/r").unwrap();
        assert_eq!(round.files, vec![("1/r/a.seg".to_owned(), 3)]);
        assert!(list_files(&top, "2/r").unwrap().files.is_empty());
    }

    #[test]
    fn write_blob_fails_cleanly_when_the_directory_is_a_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("segments"), b"x").unwrap();
        let dest = root.path().join("segments/1/r/w-000000.seg");
        assert!(write_blob(&dest, &[Bytes::from_static(b"a")], true).is_err());
    }
}
