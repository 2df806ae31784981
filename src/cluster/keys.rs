//! A node's NATS identity from a file, as NATS's decentralized accounts hand it out: a
//! credentials file (a user JWT and the NKey seed that signs for it) or an NKey seed alone.
//! The file is read at start, so that a bad one stops the node at once, and again at every
//! connection to NATS: a file replaced before its JWT expires is what the node reconnects
//! with when the server ends the old JWT's connection, with no restart.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_nats::{Auth, AuthError};
use nkeys::{KeyPair, KeyPairType};

use super::Error;

/// A credentials file is a JWT of a few hundred bytes and a seed; a path given by mistake
/// (a log, a device) is refused rather than read whole at every connection.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Which file, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFile {
    /// `--cluster-creds`: a user JWT and its seed, between NATS's `-----BEGIN ...` lines.
    Creds(PathBuf),
    /// `--cluster-nkey`: a user seed, bare or between such lines.
    Nkey(PathBuf),
}

impl KeyFile {
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Creds(_) => "--cluster-creds",
            Self::Nkey(_) => "--cluster-nkey",
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Creds(path) | Self::Nkey(path) => path,
        }
    }

    fn error(&self, cause: String) -> Error {
        Error::KeyFile {
            flag: self.flag(),
            path: self.path().to_owned(),
            cause,
        }
    }

    /// What the file holds, or why it cannot be used.
    fn read(&self) -> Result<Identity, String> {
        let mut text = String::new();
        std::fs::File::open(self.path())
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "larger than {} KiB: not a key file",
                MAX_FILE_BYTES / 1024
            ));
        }
        match self {
            Self::Creds(_) => {
                let jwt = armored(&text, "USER JWT")
                    .ok_or("no user JWT between '-----BEGIN NATS USER JWT-----' lines")?;
                if jwt.split('.').count() != 3 {
                    return Err("its user JWT is not three dot-separated parts".into());
                }
                let seed = armored(&text, "USER NKEY SEED")
                    .ok_or("no seed between '-----BEGIN USER NKEY SEED-----' lines")?;
                Ok(Identity {
                    jwt: Some(jwt.to_owned()),
                    key: user_key(seed)?,
                })
            }
            Self::Nkey(_) => {
                let seed = armored(&text, "NKEY SEED")
                    .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
                    .ok_or("the file is empty")?;
                Ok(Identity {
                    jwt: None,
                    key: user_key(seed)?,
                })
            }
        }
    }
}

/// The first non-empty line after the `-----BEGIN ...` line that names `what`.
fn armored<'a>(text: &'a str, what: &str) -> Option<&'a str> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| l.starts_with("---") && l.contains("BEGIN") && l.contains(what))?;
    lines
        .find(|l| !l.is_empty())
        .filter(|l| !l.starts_with("---"))
}

fn user_key(seed: &str) -> Result<KeyPair, String> {
    let key = KeyPair::from_seed(seed).map_err(|e| format!("its seed does not decode: {e}"))?;
    if key.key_pair_type() != KeyPairType::User {
        return Err("its seed is not a user's (user seeds start with SU)".into());
    }
    Ok(key)
}

struct Identity {
    jwt: Option<String>,
    key: KeyPair,
}

/// The node's identity: the last good reading of its file.
pub struct Keys {
    file: KeyFile,
    last: Mutex<Arc<Identity>>,
    /// The last failure to read the file again, logged once until it changes.
    failing: Mutex<Option<String>>,
}

impl Keys {
    /// Reads `file` for the first time: an error names what is wrong with it.
    pub fn load(file: KeyFile) -> Result<Self, Error> {
        let first = file.read().map_err(|cause| file.error(cause))?;
        Ok(Self {
            file,
            last: Mutex::new(Arc::new(first)),
            failing: Mutex::new(None),
        })
    }

    pub fn file(&self) -> &KeyFile {
        &self.file
    }

    /// The file as it is now; the last good reading if it cannot be used (a file replaced in
    /// place may be read half-written), which is logged once.
    fn current(&self) -> Arc<Identity> {
        match self.file.read() {
            Ok(identity) => {
                let identity = Arc::new(identity);
                *self.last.lock().expect("keys lock") = identity.clone();
                if self.failing.lock().expect("keys lock").take().is_some() {
                    tracing::info!(file = %self.file.path().display(), "NATS key file read again");
                }
                identity
            }
            Err(cause) => {
                let mut failing = self.failing.lock().expect("keys lock");
                if failing.as_deref() != Some(cause.as_str()) {
                    tracing::warn!(
                        file = %self.file.path().display(), %cause,
                        "cannot read the NATS key file again; connecting with its last good reading"
                    );
                    *failing = Some(cause);
                }
                self.last.lock().expect("keys lock").clone()
            }
        }
    }

    /// What the node answers the server's `nonce` with.
    pub fn auth(&self, nonce: &[u8]) -> Result<Auth, AuthError> {
        let identity = self.current();
        let mut auth = Auth::new();
        auth.signature = Some(identity.key.sign(nonce).map_err(AuthError::new)?);
        match &identity.jwt {
            Some(jwt) => auth.jwt = Some(jwt.clone()),
            None => auth.nkey = Some(identity.key.public_key()),
        }
        Ok(auth)
    }
}

/// Whether `file` can be used, for a check at start.
pub fn check(file: &KeyFile) -> Result<(), Error> {
    file.read().map(|_| ()).map_err(|cause| file.error(cause))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn creds(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }

    #[test]
    fn a_credentials_file_gives_its_jwt_and_signs_with_its_seed() {
        let user = KeyPair::new_user();
        let (_dir, path) = written(&creds("aGVhZA.Y2xhaW1z.c2ln", &user.seed().unwrap()));
        let keys = Keys::load(KeyFile::Creds(path)).unwrap();
        let auth = keys.auth(b"nonce").unwrap();
        assert_eq!(auth.jwt.as_deref(), Some("aGVhZA.Y2xhaW1z.c2ln"));
        assert_eq!(auth.nkey, None);
        user.verify(b"nonce", &auth.signature.unwrap()).unwrap();
    }

    #[test]
    fn a_seed_file_gives_its_public_key_bare_or_armored() {
        let user = KeyPair::new_user();
        let seed = user.seed().unwrap();
        for text in [
            format!("\n{seed}\n"),
            format!("-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"),
        ] {
            let (_dir, path) = written(&text);
            let auth = Keys::load(KeyFile::Nkey(path)).unwrap().auth(b"n").unwrap();
            assert_eq!(auth.nkey, Some(user.public_key()));
            assert_eq!(auth.jwt, None);
            user.verify(b"n", &auth.signature.unwrap()).unwrap();
        }
    }

    #[test]
    fn unusable_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let account = KeyPair::new_account().seed().unwrap();
        let user = KeyPair::new_user().seed().unwrap();
        for (file, says) in [
            (KeyFile::Creds(file("empty", "")), "no user JWT"),
            (KeyFile::Creds(file("two", &creds("a.b", &user))), "three"),
            (
                KeyFile::Creds(file("bad", &creds("a.b.c", "SUNOTASEED"))),
                "does not decode",
            ),
            (
                KeyFile::Creds(file("account", &creds("a.b.c", &account))),
                "not a user's",
            ),
            (KeyFile::Nkey(file("blank", "  \n")), "empty"),
            (KeyFile::Nkey(dir.path().join("nowhere.nk")), "No such file"),
            (
                KeyFile::Creds(file("large", &"x".repeat(64 * 1024 + 1))),
                "larger than 64 KiB",
            ),
            (
                KeyFile::Nkey(PathBuf::from("/dev/zero")),
                "larger than 64 KiB",
            ),
        ] {
            let cause = check(&file).unwrap_err().to_string();
            assert!(cause.contains(says), "{file:?}: {cause}");
        }
    }

    #[test]
    fn a_file_replaced_is_read_at_the_next_connection_and_a_broken_one_is_not_used() {
        let first = KeyPair::new_user();
        let second = KeyPair::new_user();
        let (_dir, path) = written(&format!("{}\n", first.seed().unwrap()));
        let keys = Keys::load(KeyFile::Nkey(path.clone())).unwrap();
        std::fs::write(&path, second.seed().unwrap()).unwrap();
        assert_eq!(keys.auth(b"n").unwrap().nkey, Some(second.public_key()));
        std::fs::write(&path, "SUHALFWRITTEN").unwrap();
        assert_eq!(keys.auth(b"n").unwrap().nkey, Some(second.public_key()));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(keys.auth(b"n").unwrap().nkey, Some(second.public_key()));
    }
}
