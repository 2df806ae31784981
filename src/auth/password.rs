//! MQTT passwords: stored as argon2 PHC strings, never in clear.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Hashes a password with argon2id (the crate's default parameters) and a random salt, as a PHC
/// string (`$argon2id$v=19$...`) for `mqtt_password_hash`.
pub fn hash_password(password: &str) -> String {
    let hash: PasswordHash = Argon2::default()
        .hash_password(password.as_bytes())
        // Only fails if the OS random source does, or with invalid built-in parameters.
        .expect("argon2 hashing with default parameters and an OS-random salt");
    hash.to_string()
}

/// A stored hash, checked at configuration time so that verification can only fail on the
/// password itself.
#[derive(Clone)]
pub(super) struct StoredHash(PasswordHash);

impl StoredHash {
    pub(super) fn parse(phc: &str) -> Result<Self, String> {
        let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string ({e})"))?;
        argon2::Algorithm::try_from(hash.algorithm.as_str())
            .map_err(|_| format!("algorithm {:?} is not argon2", hash.algorithm.as_str()))?;
        if hash.salt.is_none() || hash.hash.is_none() {
            return Err("PHC string lacks a salt or hash".into());
        }
        // Parameters (memory, iterations) are validated when used; try once now so a bad
        // parameter set fails at startup rather than on every CONNECT.
        argon2::Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters ({e})"))?;
        Ok(StoredHash(hash))
    }

    /// Slow by design (argon2): callers run it on a blocking thread.
    pub(super) fn verify(&self, password: &[u8]) -> bool {
        Argon2::default().verify_password(password, &self.0).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_password_verifies_and_others_do_not() {
        let phc = hash_password("correct horse");
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        let stored = StoredHash::parse(&phc).expect("own hash parses");
        assert!(stored.verify(b"correct horse"));
        assert!(!stored.verify(b"battery staple"));
        assert_ne!(hash_password("correct horse"), phc, "salt is random");
    }

    #[test]
    fn non_argon2_hashes_are_rejected() {
        for bad in [
            "plaintext",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
        ] {
            assert!(StoredHash::parse(bad).is_err(), "{bad}");
        }
    }
}
