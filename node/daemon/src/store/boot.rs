//! The boot counter: a number per start of the node, never handed out twice.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use meshwork_protocol::storage::{BOOT_FILE_BYTES_MAX, BOOT_FILE_NAME, decode_boot, encode_boot};

use super::StoreError;
use super::fsio::{create_dir_durably, replace_durably};

/// Hands out the next boot number of the node whose home is `home`: reads `home/boot`,
/// adds one, and makes the new number durable before returning it, so not even a kill -9
/// right after can make a later call return it again. The first boot is 1.
///
/// A missing file is a home that never booted. A file that does not decode is an error
/// naming it, never a silent restart from 0: the caller derives the Automerge actor id from
/// the boot number, and reusing one would make two actors out of one.
pub(crate) fn next_boot(home: &Path) -> Result<u32, StoreError> {
    create_dir_durably(home)?;
    let path = home.join(BOOT_FILE_NAME);
    let previous = match read_bounded(&path) {
        Ok(bytes) => decode_boot(&bytes).map_err(|reason| StoreError::BootCorrupt { path: path.clone(), reason })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(source) => return Err(StoreError::read(&path, source)),
    };
    let boot = previous.checked_add(1).ok_or_else(|| StoreError::BootExhausted { path: path.clone() })?;
    replace_durably(home, BOOT_FILE_NAME, |out| out.write_all(encode_boot(boot).as_bytes()))?;
    Ok(boot)
}

/// Reads the file, but one byte more than a boot file can hold at most: enough to refuse a
/// longer one without reading all of it.
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(BOOT_FILE_BYTES_MAX + 1);
    File::open(path)?.take(BOOT_FILE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}
