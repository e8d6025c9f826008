//! Where the client finds the server: `--url`/`--token` (or `OTA_URL`/`OTA_TOKEN`), else the
//! file `ota login` wrote (`$XDG_CONFIG_HOME/ota/client.json`, `~/.config/ota/client.json`),
//! readable by its owner only.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{Class, CliError, CliResult};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub url: String,
    pub token: String,
}

/// The file `ota login` writes.
pub fn path() -> CliResult<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => {
                return Err(CliError::new(
                    Class::Usage,
                    "neither XDG_CONFIG_HOME nor HOME is set: give --url and --token (or OTA_URL and OTA_TOKEN)",
                ));
            }
        },
    };
    Ok(base.join("ota").join("client.json"))
}

pub fn load() -> CliResult<Option<Stored>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CliError::new(
                Class::Local,
                format!("{} is not what `ota login` writes ({e}); run `ota login` again", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::new(Class::Local, format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes the file with mode 0600 (created so, never widened for a moment).
pub fn save(stored: &Stored) -> CliResult<PathBuf> {
    let path = path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(stored).map_err(|e| CliError::new(Class::Local, e.to_string()))?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub fn remove() -> CliResult<Option<PathBuf>> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}
