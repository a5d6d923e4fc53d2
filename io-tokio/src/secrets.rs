//! Cluster secrets on disk: the cluster key and the join secret.
//!
//! `portcullis cluster init` creates both in a directory; `portcullis token create` needs only
//! that directory. Files holding secrets are created with mode `0600` and are never overwritten.
//!
//! ```text
//!   DIR/cluster.key    32 secret bytes of the ed25519 cluster key   (0600)
//!   DIR/join.secret    32 secret bytes of the HMAC join secret      (0600)
//!   DIR/cluster.pin    hex SHA-256 of the cluster public key        (public)
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use portcullis_core::crypto::{JoinSecret, SecretKey, to_hex};
use portcullis_core::token::ClusterPin;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::dirsync;

/// File name of the cluster key.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";
/// File name of the join secret.
pub const JOIN_SECRET_FILE: &str = "join.secret";
/// File name of the public cluster pin.
pub const CLUSTER_PIN_FILE: &str = "cluster.pin";

/// What went wrong with the secrets directory. The operator is at fault in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `cluster init` would overwrite existing secrets.
    #[error("{0} already exists; refusing to overwrite cluster secrets")]
    AlreadyExists(PathBuf),
    /// A secret file is not 32 bytes.
    #[error("{path} is {len} bytes, expected 32")]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A secret file is readable by group or others.
    #[error("{path} has mode {mode:o}; secret files must not be readable by group or others")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The secrets an admitting node or the token tool holds.
#[derive(Debug)]
pub struct ClusterSecrets {
    /// The cluster signing key.
    pub cluster_key: SecretKey,
    /// The HMAC key for tokens.
    pub join_secret: JoinSecret,
}

impl ClusterSecrets {
    /// The pin of the cluster key, which every token carries.
    pub fn pin(&self) -> ClusterPin {
        ClusterPin::of(&self.cluster_key.public())
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file (never overwrites), `0600` when `secret`, and syncs it and its
/// directory (the new name is in the directory: without that sync a power loss can lose the
/// file, and with it a node's key).
///
/// The bytes go to a temporary name first, are synced, and only then is the real name linked
/// to them: a crash mid-write leaves at most a stray temporary file, never a short or empty
/// file under the real name, which every later start would refuse (`WrongLength`).
pub(crate) fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), SecretsError> {
    remove_stale_temps(path);
    let mut suffix = [0u8; 8];
    OsRng.fill_bytes(&mut suffix);
    let tmp = path.with_file_name(format!("{}{}", temp_prefix(path), to_hex(&suffix)));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    // `link` refuses an existing name, so a file already there is never replaced.
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    linked.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            SecretsError::AlreadyExists(path.to_path_buf())
        } else {
            SecretsError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let dir = dirsync::parent_dir(path);
    dirsync::sync_dir(dir).map_err(io_err(dir))
}

/// Temporary names of `path` begin with this.
fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    format!(".{}.tmp-", name.as_deref().unwrap_or("secret"))
}

/// Removes temporary copies of `path` that a crash left behind (they hold the secret too).
/// Best effort: one that survives is removed next time.
fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(dirsync::parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Refuses a file holding secrets that group or others may read (`TooOpen`).
pub(crate) fn check_private(path: &Path) -> Result<(), SecretsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(io_err(path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// Reads a 32-byte secret file, refusing one readable by group or others.
pub(crate) fn read_secret32(path: &Path) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    remove_stale_temps(path);
    check_private(path)?;
    let bytes = Zeroizing::new(fs::read(path).map_err(io_err(path))?);
    let array: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SecretsError::WrongLength {
            path: path.to_path_buf(),
            len: bytes.len(),
        })?;
    Ok(Zeroizing::new(array))
}

/// Creates fresh cluster secrets in `dir` (created if missing). Never overwrites.
pub fn init(dir: &Path) -> Result<ClusterSecrets, SecretsError> {
    dirsync::create_dir_all_synced(dir).map_err(io_err(dir))?;
    let cluster_key = SecretKey::generate(&mut OsRng);
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(secret.as_mut_slice());
    let join_secret = JoinSecret::from_bytes(*secret);
    write_new(
        &dir.join(CLUSTER_KEY_FILE),
        cluster_key.secret_bytes().as_slice(),
        true,
    )?;
    write_new(&dir.join(JOIN_SECRET_FILE), secret.as_slice(), true)?;
    let secrets = ClusterSecrets {
        cluster_key,
        join_secret,
    };
    let pin_hex = format!("{}\n", to_hex(&secrets.pin().0.0));
    write_new(&dir.join(CLUSTER_PIN_FILE), pin_hex.as_bytes(), false)?;
    Ok(secrets)
}

/// Loads the secrets `init` wrote.
pub fn load(dir: &Path) -> Result<ClusterSecrets, SecretsError> {
    let key = read_secret32(&dir.join(CLUSTER_KEY_FILE))?;
    let secret = read_secret32(&dir.join(JOIN_SECRET_FILE))?;
    Ok(ClusterSecrets {
        cluster_key: SecretKey::from_secret_bytes(&key),
        join_secret: JoinSecret::from_bytes(*secret),
    })
}

/// 16 random bytes from the OS for a token id.
pub fn random_token_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-secrets-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn init_then_load_round_trips_and_refuses_overwrite() {
        let dir = temp_dir("roundtrip");
        let made = init(&dir).unwrap();
        let loaded = load(&dir).unwrap();
        assert_eq!(made.pin(), loaded.pin());
        assert_eq!(made.join_secret.expose(), loaded.join_secret.expose());
        assert!(matches!(init(&dir), Err(SecretsError::AlreadyExists(_))));
        // Written through temporary names: none is left behind, even by the refused init.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [CLUSTER_KEY_FILE, CLUSTER_PIN_FILE, JOIN_SECRET_FILE]
        );
        // One left by a crash between write and link is swept when the file is next read.
        let stale_name = format!(
            "{}0011223344556677",
            temp_prefix(&dir.join(JOIN_SECRET_FILE))
        );
        let stale = dir.join(stale_name);
        fs::write(&stale, [0u8; 32]).unwrap();
        load(&dir).unwrap();
        assert!(!stale.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(JOIN_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("open");
        init(&dir).unwrap();
        let path = dir.join(JOIN_SECRET_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&dir), Err(SecretsError::TooOpen { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
