//! Sealing of secrets that must cross from the API to a worker (the administrator's password),
//! and keyed digests of request bodies. The key comes from `PROVISIONER_SEAL_KEY`, or, when the
//! operator sets none, is generated once and kept in the database.

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("PROVISIONER_SEAL_KEY must be the base64 encoding of exactly 32 bytes")]
    BadKey,
    #[error("sealed value is corrupt or was sealed with another key")]
    Corrupt,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    digest_key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn from_key(key: &[u8; 32]) -> Self {
        let digest_key: [u8; 32] = Sha256::new()
            .chain_update(b"provisioner:digest:")
            .chain_update(key)
            .finalize()
            .into();
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            digest_key,
        }
    }

    /// The operator's key when configured, else the instance key kept in the database (made on
    /// first use; every process of the cluster then agrees on it).
    pub async fn load(configured: Option<&SecretString>, pool: &PgPool) -> Result<Self, SealError> {
        let key: Vec<u8> = match configured {
            Some(b64) => STANDARD
                .decode(b64.expose_secret().trim())
                .map_err(|_| SealError::BadKey)?,
            None => {
                let mut fresh = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut fresh);
                crate::db::secrets::get_or_create(pool, "seal_key", &fresh).await?
            }
        };
        let key: [u8; 32] = key.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self::from_key(&key))
    }

    /// Encrypts `plaintext`, bound to `context` (a job id): the result opens only with both.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| SealError::Corrupt)
    }

    /// A keyed digest (HMAC-SHA256, hex): equal inputs give equal digests, and a digest says
    /// nothing about a low-entropy input such as a password without the key.
    pub fn digest(&self, data: &[u8]) -> String {
        let mut digester = self.digester();
        digester.update(data);
        digester.finish()
    }

    /// `digest` of data that arrives in parts: equal to `digest` of the parts joined.
    pub fn digester(&self) -> Digester {
        Digester(
            <Hmac<Sha256> as Mac>::new_from_slice(&self.digest_key)
                .expect("HMAC accepts keys of any length"),
        )
    }
}

/// A keyed digest being computed; see `Sealer::digester`.
pub struct Digester(Hmac<Sha256>);

impl Digester {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> String {
        self.0
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_context() {
        let sealer = Sealer::from_key(&[7; 32]);
        let sealed = sealer.seal(b"correct horse", b"job-1");
        assert!(!sealed.windows(13).any(|w| w == b"correct horse"));
        assert_eq!(sealer.open(&sealed, b"job-1").unwrap(), b"correct horse");
        assert!(sealer.open(&sealed, b"job-2").is_err());
        assert!(Sealer::from_key(&[8; 32]).open(&sealed, b"job-1").is_err());
    }

    #[test]
    fn digests_are_stable_and_keyed() {
        let a = Sealer::from_key(&[1; 32]);
        assert_eq!(a.digest(b"x"), a.digest(b"x"));
        assert_ne!(a.digest(b"x"), a.digest(b"y"));
        assert_ne!(a.digest(b"x"), Sealer::from_key(&[2; 32]).digest(b"x"));
        let mut parts = a.digester();
        parts.update(b"ab");
        parts.update(b"c");
        assert_eq!(parts.finish(), a.digest(b"abc"));
    }
}
