//! Files and directories that hold secrets or the node's data: created with their final
//! modes (0600 files, 0700 directories; never a window with the umask's mode), and never
//! through a symbolic link (a link planted at the path is refused, not followed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Why a private file or directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("{0}: is a symbolic link; refusing to follow it")]
    Symlink(String),
    #[error("{0}: exists and is not a directory")]
    NotADirectory(String),
    #[error("{0}: exists; refusing to overwrite it")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateFileError + '_ {
    move |source| PrivateFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn refuse_symlink(path: &Path) -> Result<Option<std::fs::Metadata>, PrivateFileError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            Err(PrivateFileError::Symlink(path.display().to_string()))
        }
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Creates `dir` (and missing parents) with mode 0700; an existing directory is left as
/// it is (it may be shared, as /etc is).
pub fn create_dir(dir: &Path) -> Result<(), PrivateFileError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io(dir))
}

/// Creates the node's own directory (the data directory) with mode 0700; an existing one
/// is narrowed to 0700 where we may (it holds a key and the database); a symlink is refused.
pub fn ensure_dir(dir: &Path) -> Result<(), PrivateFileError> {
    match refuse_symlink(dir)? {
        Some(m) if !m.is_dir() => Err(PrivateFileError::NotADirectory(dir.display().to_string())),
        Some(_m) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if _m.permissions().mode() & 0o077 != 0 {
                    // A volume mounted for us may belong to another owner (Kubernetes'
                    // fsGroup): then it stays as the operator set it up.
                    if let Err(e) =
                        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    {
                        tracing::warn!(
                            dir = %dir.display(),
                            "could not narrow the data directory to mode 0700: {e}"
                        );
                    }
                }
            }
            Ok(())
        }
        None => create_dir(dir),
    }
}

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    o
}

/// Opens `path` for reading and writing, creating it with mode 0600; a symlink at `path`
/// is refused. An existing file readable by others is narrowed to 0600.
pub fn open_rw(path: &Path) -> Result<File, PrivateFileError> {
    refuse_symlink(path)?;
    let f = options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| symlink_or_io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = f.metadata().map_err(io(path))?;
        if m.permissions().mode() & 0o077 != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io(path))?;
        }
    }
    Ok(f)
}

/// O_NOFOLLOW reports a link planted between the check and the open as ELOOP.
fn symlink_or_io(path: &Path, e: std::io::Error) -> PrivateFileError {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return PrivateFileError::Symlink(path.display().to_string());
    }
    io(path)(e)
}

/// Writes a new file with mode 0600 (never an existing one, never through a link), synced.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    refuse_symlink(path)?;
    let mut f = options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PrivateFileError::Exists(path.display().to_string())
            } else {
                symlink_or_io(path, e)
            }
        })?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Replaces `path` atomically with `bytes` (a new 0600 file beside it, synced, renamed
/// over it: a link at `path` is replaced, not followed).
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_are_final_and_links_refused() {
        let root = std::env::temp_dir().join(format!("p2psip-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let d = root.join("a/b");
        ensure_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        let f = d.join("secret");
        write_new(&f, b"x").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert!(matches!(
            write_new(&f, b"y"),
            Err(PrivateFileError::Exists(_))
        ));
        replace(&f, b"z").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"z");
        assert_eq!(mode(&f), 0o600);
        let target = root.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(open_rw(&link), Err(PrivateFileError::Symlink(_))));
        assert!(matches!(
            write_new(&link, b"no"),
            Err(PrivateFileError::Symlink(_))
        ));
        assert!(matches!(
            ensure_dir(&link),
            Err(PrivateFileError::Symlink(_))
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let open = d.join("db");
        std::fs::write(&open, b"").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_rw(&open).unwrap();
        assert_eq!(mode(&open), 0o600, "an existing file is narrowed");
        let _ = std::fs::remove_dir_all(&root);
    }
}
