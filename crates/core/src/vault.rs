//! Secrets at rest: each value sealed with ChaCha20-Poly1305 under one vault key; values are
//! never shown again after saving (the API lists names only).
//!
//! The key lives in the OS keychain (Secret Service, macOS Keychain, Windows Credential
//! Manager), one entry per state directory. Where there is none (headless Linux without a
//! D-Bus session or keyring daemon) it is `keys/vault.key` (mode 0600), the encrypted-file
//! fallback; a key already in that file keeps being used. `Vault::backend()` says which one
//! is in use, and why, so the UI can label it. `PORTHOLE_KEYCHAIN=0` forces the file.

use crate::error::{CoreError, Result};
use crate::machine::Machines;
use crate::store::now_ms;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::Serialize;
use std::collections::BTreeMap;

pub struct Vault {
    cipher: ChaCha20Poly1305,
    store: crate::store::Store,
    backend: String,
}

const KEYCHAIN_SERVICE: &str = "porthole";

/// The vault key from the OS keychain (created there on first use), or why there is none.
fn keychain_key(state_root: &std::path::Path) -> std::result::Result<Vec<u8>, String> {
    if std::env::var("PORTHOLE_KEYCHAIN").as_deref() == Ok("0") {
        return Err("disabled by PORTHOLE_KEYCHAIN=0".into());
    }
    // Without a session bus, libdbus would try to autolaunch one: say so instead.
    if cfg!(target_os = "linux") && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        return Err("no D-Bus session, so no Secret Service".into());
    }
    let user = format!("vault-key:{}", state_root.display());
    let entry = keyring::Entry::new(KEYCHAIN_SERVICE, &user).map_err(|e| e.to_string())?;
    match entry.get_password() {
        Ok(h) if h.len() == 64 => (0..32)
            .map(|i| {
                u8::from_str_radix(&h[2 * i..2 * i + 2], 16)
                    .map_err(|_| "the keychain entry is not a key".to_string())
            })
            .collect(),
        Ok(_) => Err("the keychain entry is not a key".into()),
        Err(keyring::Error::NoEntry) => {
            let mut k = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut k);
            entry
                .set_password(&crate::machine::hex(&k))
                .map_err(|e| e.to_string())?;
            Ok(k)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A new vault key in `path`: written whole to a 0600 file of its own (no window in which
/// another user could open it), then linked into place, so a crash leaves no half key and an
/// existing key (another process making one at the same moment) is never replaced: that one is
/// used instead.
fn new_key_file(
    path: &std::path::Path,
    read_file: &dyn Fn(&std::path::Path) -> Result<Option<Vec<u8>>>,
) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut k = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut k);
    let tmp = path.with_extension(format!("key.new.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&k)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => Ok(k),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_file(path)?.ok_or_else(|| {
                CoreError::Invalid(format!("{} exists but cannot be read", path.display()))
            })
        }
        Err(e) => Err(CoreError::io("write the vault key")(e)),
    }
}

#[derive(Debug, Serialize)]
pub struct SecretInfo {
    pub name: String,
    /// "" for global, else the environment name it is scoped to.
    pub scope: String,
    pub updated_at: i64,
    /// Whether the current vault key opens it (false: sealed under another key).
    pub readable: bool,
}

pub fn valid_secret_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!("secret name '{name}': use capitals, digits and '_', starting with a capital (it becomes an environment variable)")))
    }
}

impl Vault {
    pub async fn open(ms: &Machines) -> Result<Self> {
        let dir = ms.state.create_keys()?;
        let path = dir.join("vault.key");
        let read_file = |path: &std::path::Path| -> Result<Option<Vec<u8>>> {
            match std::fs::read(path) {
                Ok(k) if k.len() == 32 => Ok(Some(k)),
                Ok(_) => Err(CoreError::Invalid(format!(
                    "{} is corrupt (expected 32 bytes)",
                    path.display()
                ))),
                Err(_) => Ok(None),
            }
        };
        let (key, backend) = match read_file(&path)? {
            Some(k) => (k, "encrypted file (keys/vault.key)".to_string()),
            None => {
                let root = ms.state.root().to_path_buf();
                // Secret Service calls block on D-Bus.
                let from_keychain = tokio::task::spawn_blocking(move || keychain_key(&root))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                // Which one holds the key is remembered: a process without keychain access (a
                // CLI over ssh) must not start a second, file-based key beside it.
                let marker = dir.join("vault.keychain");
                match from_keychain {
                    Ok(k) => {
                        let _ = std::fs::write(&marker, "the vault key is in the OS keychain\n");
                        (k, "OS keychain".to_string())
                    }
                    Err(why) if marker.exists() => {
                        return Err(CoreError::Invalid(format!(
                            "the vault key is in the OS keychain, which is not reachable here ({why}): use Porthole where that keychain is unlocked"
                        )))
                    }
                    Err(why) => {
                        let k = new_key_file(&path, &read_file)?;
                        (k, format!("encrypted file (no OS keychain: {why})"))
                    }
                }
            }
        };
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            store: ms.store.clone(),
            backend,
        })
    }

    /// Where the key is: "OS keychain" or "encrypted file (...why...)".
    pub fn backend(&self) -> &str {
        &self.backend
    }

    pub async fn set(&self, name: &str, scope: &str, value: &str) -> Result<()> {
        valid_secret_name(name)?;
        if value.is_empty() {
            return Err(CoreError::Invalid(format!(
                "secret {name}: the value is empty"
            )));
        }
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce);
        // The name and scope are bound in as associated data: a row moved to another name fails.
        let aad = format!("{scope}\0{name}");
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                chacha20poly1305::aead::Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CoreError::Invalid("encryption failed".into()))?;
        sqlx::query(
            "INSERT INTO secrets (name, scope, nonce, ciphertext, updated_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(name, scope) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(scope)
        .bind(&nonce[..])
        .bind(ct)
        .bind(now_ms())
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    pub async fn delete(&self, name: &str, scope: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM secrets WHERE name = ? AND scope = ?")
            .bind(name)
            .bind(scope)
            .execute(&self.store.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn list(&self) -> Result<Vec<SecretInfo>> {
        let rows: Vec<(String, String, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT name, scope, updated_at, nonce, ciphertext FROM secrets ORDER BY scope, name",
        )
        .fetch_all(&self.store.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, scope, updated_at, nonce, ct)| {
                // Opened (never shown) so a key mix-up is visible before a machine needs it.
                let readable = self.unseal(&name, &scope, &nonce, &ct).is_some();
                SecretInfo {
                    name,
                    scope,
                    updated_at,
                    readable,
                }
            })
            .collect())
    }

    /// A sealed value, opened; `None` when this key did not seal it (name and scope are bound in).
    fn unseal(&self, name: &str, scope: &str, nonce: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
        // A damaged row (a nonce of the wrong length) is unreadable, not a panic.
        if nonce.len() != 12 {
            return None;
        }
        let aad = format!("{scope}\0{name}");
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                chacha20poly1305::aead::Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }

    /// Every value the vault holds that this key opens, by name: what the host redacts from a
    /// guest's events before it stores them, whichever machine or scope they were handed to.
    pub async fn all_values(&self) -> Result<Vec<(String, String)>> {
        let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT name, scope, nonce, ciphertext FROM secrets")
                .fetch_all(&self.store.pool)
                .await?;
        Ok(porthole_proto::redact::prepare(
            rows.into_iter().filter_map(|(name, scope, nonce, ct)| {
                let pt = self.unseal(&name, &scope, &nonce, &ct)?;
                Some((name, String::from_utf8_lossy(&pt).into_owned()))
            }),
        ))
    }

    /// One secret's value for a machine with this environment: the one scoped to it, else the
    /// global one; `None` when the vault holds neither.
    pub async fn get(&self, name: &str, env_name: Option<&str>) -> Result<Option<String>> {
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT scope, nonce, ciphertext FROM secrets WHERE name = ? AND (scope = '' OR scope = ?) ORDER BY scope DESC",
        )
        .bind(name)
        .bind(env_name.unwrap_or(""))
        .fetch_all(&self.store.pool)
        .await?;
        match rows.into_iter().next() {
            None => Ok(None),
            Some((scope, nonce, ct)) => {
                let pt = self.unseal(name, &scope, &nonce, &ct).ok_or_else(|| {
                    CoreError::Invalid(format!(
                        "secret {name} cannot be decrypted (vault key changed?)"
                    ))
                })?;
                Ok(Some(String::from_utf8_lossy(&pt).into_owned()))
            }
        }
    }

    /// The values of the secrets an environment declares (its `secrets` names), and only those:
    /// what a machine or run with that environment is handed. A declared name the vault does not
    /// hold is an error saying how to add it.
    pub async fn declared(
        &self,
        env_name: Option<&str>,
        names: &[String],
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for name in names {
            valid_secret_name(name)?;
            match self.get(name, env_name).await? {
                Some(v) => {
                    out.insert(name.clone(), v);
                }
                None => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            let scope = env_name
                .map(|e| format!(" (or --scope {e})"))
                .unwrap_or_default();
            return Err(CoreError::Invalid(format!(
                "the environment declares the secret(s) {}, which the vault does not hold: store each with `porthole secrets set NAME`{scope}",
                missing.join(", ")
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fresh_state_dir_keys_dir_and_vault_key_are_private() {
        use std::os::unix::fs::MetadataExt;
        std::env::set_var("PORTHOLE_KEYCHAIN", "0");
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("state");
        let ms = Machines::open(crate::paths::StateDir::at(&root))
            .await
            .unwrap();
        let v = Vault::open(&ms).await.unwrap();
        assert!(v.backend().starts_with("encrypted file"), "{}", v.backend());
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&root), 0o700, "state dir");
        assert_eq!(mode(&root.join("keys")), 0o700, "keys dir");
        let key = root.join("keys/vault.key");
        assert_eq!(mode(&key), 0o600, "vault key");
        let k1 = std::fs::read(&key).unwrap();
        assert_eq!(k1.len(), 32);
        // Opened again: the same key, never a second one beside or over it.
        v.set("K", "", "v").await.unwrap();
        let v2 = Vault::open(&ms).await.unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), k1);
        assert_eq!(v2.get("K", None).await.unwrap().unwrap(), "v");
        let names: Vec<_> = std::fs::read_dir(root.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["vault.key"], "temporary key files left behind");
        // A key another process linked in first wins over a new one.
        let other = root.join("keys/other.key");
        std::fs::write(&other, [7u8; 32]).unwrap();
        let read = |p: &std::path::Path| -> Result<Option<Vec<u8>>> { Ok(std::fs::read(p).ok()) };
        assert_eq!(new_key_file(&other, &read).unwrap(), vec![7u8; 32]);
    }

    /// A vault in a state dir of its own, never the developer's keychain (tests/e2e/
    /// keychain.test.mjs covers the keychain with a throwaway gnome-keyring).
    async fn fresh_vault() -> (tempfile::TempDir, Machines, Vault) {
        std::env::set_var("PORTHOLE_KEYCHAIN", "0");
        let dir = tempfile::tempdir().unwrap();
        let ms = Machines::open(crate::paths::StateDir::at(dir.path()))
            .await
            .unwrap();
        let v = Vault::open(&ms).await.unwrap();
        (dir, ms, v)
    }

    #[tokio::test]
    async fn a_damaged_row_is_unreadable_not_a_panic() {
        let (_dir, _ms, v) = fresh_vault().await;
        for nonce in [&[][..], &[1u8; 5][..], &[1u8; 24][..]] {
            assert_eq!(v.unseal("K", "", nonce, b"whatever"), None, "{nonce:?}");
        }
    }

    #[tokio::test]
    async fn values_are_sealed_scoped_and_never_stored_in_clear() {
        let (dir, ms, v) = fresh_vault().await;
        v.set("API_KEY", "", "sk-global-111").await.unwrap();
        v.set("API_KEY", "web", "sk-web-222").await.unwrap();
        assert!(v.set("bad name", "", "x").await.is_err());
        assert_eq!(
            v.get("API_KEY", None).await.unwrap().unwrap(),
            "sk-global-111"
        );
        assert_eq!(
            v.get("API_KEY", Some("web")).await.unwrap().unwrap(),
            "sk-web-222"
        );
        assert_eq!(
            v.get("API_KEY", Some("other")).await.unwrap().unwrap(),
            "sk-global-111"
        );
        assert_eq!(v.list().await.unwrap().len(), 2);
        // Checkpoint the WAL so the database file holds everything, then grep it.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&ms.store.pool)
            .await
            .unwrap();
        let raw = std::fs::read(dir.path().join("porthole.db")).unwrap();
        assert!(
            !raw.windows(11).any(|w| w == b"sk-global-1"),
            "secret stored in clear"
        );
        assert!(v.delete("API_KEY", "web").await.unwrap());
        assert_eq!(
            v.get("API_KEY", Some("web")).await.unwrap().unwrap(),
            "sk-global-111"
        );
    }
}
