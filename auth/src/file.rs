//! Reading the files as UTF-8 with the line of any bad byte, and replacing
//! a file atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::AuthError;

/// Reads `path` whole; `action` says what in the error ("read ACL file").
pub(crate) fn read(path: &Path, action: &'static str) -> Result<Vec<u8>, AuthError> {
    fs::read(path).map_err(|source| AuthError::Io {
        action,
        path: path.to_owned(),
        source,
    })
}

/// `bytes` as text, or the number (from 1) of the first line that is not
/// UTF-8.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, usize> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        good.iter().filter(|&&b| b == b'\n').count() + 1
    })
}

/// The lines of `text` (split at `\n`), numbered from 1, each without its
/// line end and trailing white space.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_end()))
}

/// Whether a line (already trimmed at the end) is blank or a comment.
pub(crate) fn is_blank_or_comment(line: &str) -> bool {
    let line = line.trim_start();
    line.is_empty() || line.starts_with('#')
}

/// The file that writing to `path` should replace: the target of a
/// symbolic link, so that the link survives.
pub(crate) fn resolve(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Replaces the file `path` with `contents` atomically: a new file is
/// written in the same directory, synced, and renamed over `path`; then the
/// directory is synced. A new file gets mode 0600; an existing file's mode
/// is kept, and its owner and group too where the OS lets us.
pub(crate) fn replace(path: &Path, contents: &[u8]) -> Result<(), AuthError> {
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| AuthError::Io {
            action,
            path,
            source,
        }
    };
    let Some(name) = path.file_name() else {
        return Err(io_err("write", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        )));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let existing = fs::metadata(path).ok();
    let (tmp, mut file) = create_temp(dir, &name.to_string_lossy())?;
    let written = (|| {
        if let Some(meta) = &existing {
            file.set_permissions(meta.permissions())?;
            keep_owner(&file, meta);
        }
        file.write_all(contents)?;
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("replace", path)(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Creates a new file, mode 0600, next to the one it will replace.
fn create_temp(dir: &Path, name: &str) -> Result<(PathBuf, File), AuthError> {
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            // A leftover of an interrupted run: try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(source) => {
                return Err(AuthError::Io {
                    action: "create",
                    path: tmp,
                    source,
                })
            }
        }
    }
}

/// Gives `file` the owner and group of the file it replaces, as far as
/// permitted: root editing a file that the broker's user owns must not
/// leave it owned by root. A user who may not (not root, not in the group)
/// keeps the file as their own, as any editor would.
#[cfg(unix)]
fn keep_owner(file: &File, meta: &fs::Metadata) {
    use std::os::unix::fs::{fchown, MetadataExt};
    if fchown(file, Some(meta.uid()), Some(meta.gid())).is_err() {
        let _ = fchown(file, None, Some(meta.gid()));
    }
}

#[cfg(not(unix))]
fn keep_owner(_: &File, _: &fs::Metadata) {}
