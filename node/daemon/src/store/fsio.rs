//! Durable file operations: directory fsync, atomic replacement, durable directory creation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use meshwork_protocol::storage::TEMP_FILE_SUFFIX;

use super::StoreError;

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    sync_dir_io(dir).map_err(|source| StoreError::sync(dir, source))
}

#[cfg(unix)]
fn sync_dir_io(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

// Windows cannot open a directory as a file; NTFS makes renames durable with the file.
#[cfg(not(unix))]
fn sync_dir_io(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates `dir` (and missing parents) if it is missing, and makes its entry durable.
pub(super) fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source: source.into() })?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Replaces `dir/name` atomically with what `write` produces: writes `name.tmp`, fsyncs it,
/// renames it over `name`, fsyncs `dir`. A crash leaves either the old file or the new one.
/// Makes two fsyncs.
pub(super) fn replace_durably(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), StoreError> {
    let path = dir.join(name);
    let temp_path = dir.join(format!("{name}{TEMP_FILE_SUFFIX}"));
    let result = write_temp(&temp_path, write)
        .and_then(|()| fs::rename(&temp_path, &path).map_err(|source| StoreError::write(&path, source)));
    if result.is_err() {
        // The temp file is useless now; a leftover one is removed at the next open anyway.
        let _ = fs::remove_file(&temp_path);
    }
    result?;
    sync_dir(dir)
}

fn write_temp(temp_path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp_path)
        .map_err(|source| StoreError::write(temp_path, source))?;
    let mut out = BufWriter::with_capacity(1024 * 1024, file);
    write(&mut out).and_then(|()| out.flush()).map_err(|source| StoreError::write(temp_path, source))?;
    out.get_ref().sync_all().map_err(|source| StoreError::sync(temp_path, source))
}
