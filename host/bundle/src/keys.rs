//! Ed25519 keys in the WebAssembly tool-conventions serialisation, so keys
//! made here work with `wasmsign2` and the other way round:
//! public key `0x01 ‖ 32 bytes`, key pair `0x81 ‖ secret 32 bytes ‖ public 32 bytes`.

use crate::error::io;
use crate::{Error, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

const PK_ID: u8 = 0x01;
const KEYPAIR_ID: u8 = 0x81;
/// Ed25519 signature algorithm identifier in the signature section.
pub(crate) const ED25519_ALG: u8 = 0x01;

/// A key id: the first 8 bytes of SHA-256 over the serialised public key.
///
/// Key ids travel with signatures as hints only; verification never trusts
/// them and recomputes them from the trusted keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A publisher's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub(crate) VerifyingKey);

impl PublicKey {
    /// Parse the tool-conventions serialisation (`0x01 ‖ 32 bytes`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match bytes {
            [PK_ID, rest @ ..] if rest.len() == 32 => {
                let arr: [u8; 32] = rest
                    .try_into()
                    .map_err(|_| invalid_key(None, "wrong length"))?;
                VerifyingKey::from_bytes(&arr)
                    .map(PublicKey)
                    .map_err(|_| invalid_key(None, "not a valid Ed25519 point"))
            }
            [KEYPAIR_ID, ..] => Err(invalid_key(
                None,
                "this is a secret key; pass the .pub file",
            )),
            _ => Err(invalid_key(
                None,
                "expected 33 bytes: 0x01 followed by an Ed25519 public key",
            )),
        }
    }

    /// Read a public key file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(io(path))?;
        Self::from_bytes(&bytes).map_err(|e| with_path(e, path))
    }

    /// The tool-conventions serialisation.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![PK_ID];
        v.extend_from_slice(self.0.as_bytes());
        v
    }

    /// This key's id.
    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.to_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// The key id wasmsign2 writes next to a signature and matches keys by:
    /// HMAC-SHA256 keyed with the raw public key over `"key_id"`, first 12
    /// bytes. It is a hint in the signature section; edgeml's own
    /// [`KeyId`] names keys everywhere else (trust policies, fleet roots).
    pub fn wasm_key_id(&self) -> [u8; 12] {
        use hmac::Mac as _;
        let mut id = [0u8; 12];
        if let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(self.0.as_bytes()) {
            mac.update(b"key_id");
            id.copy_from_slice(&mac.finalize().into_bytes()[..12]);
        }
        id
    }

    /// Check an Ed25519 signature over `msg` (strict verification). Used for
    /// bundle signatures and for signed fleet metadata.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

/// A publisher's signing key pair. Keep it secret.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Parse the tool-conventions key pair serialisation (`0x81 ‖ sk ‖ pk`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match bytes {
            [KEYPAIR_ID, rest @ ..] if rest.len() == 64 => {
                let sk: [u8; 32] = rest[..32]
                    .try_into()
                    .map_err(|_| invalid_key(None, "wrong length"))?;
                let key = SigningKey::from_bytes(&sk);
                if key.verifying_key().as_bytes()[..] != rest[32..] {
                    return Err(invalid_key(
                        None,
                        "public half does not match the secret half",
                    ));
                }
                Ok(SecretKey(key))
            }
            [PK_ID, ..] => Err(invalid_key(
                None,
                "this is a public key; pass the .key file",
            )),
            _ => Err(invalid_key(
                None,
                "expected 65 bytes: 0x81, secret key, public key",
            )),
        }
    }

    /// Read a key pair file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(io(path))?;
        Self::from_bytes(&bytes).map_err(|e| with_path(e, path))
    }

    /// The tool-conventions key pair serialisation.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![KEYPAIR_ID];
        v.extend_from_slice(self.0.as_bytes());
        v.extend_from_slice(self.0.verifying_key().as_bytes());
        v
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Sign `msg` (64-byte Ed25519 signature). Callers put a domain tag in
    /// `msg` so that a signature made for one purpose never verifies as another.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(msg).to_bytes().to_vec()
    }

    /// Write `DIR/NAME.key` (mode 0600 on Unix) and `DIR/NAME.pub`. Refuses to
    /// overwrite an existing key.
    pub fn write_pair(
        &self,
        dir: &Path,
        name: &str,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(invalid_key(None, "key name must be a plain file name"));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let secret = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&secret).map_err(io(&secret))?;
        std::io::Write::write_all(&mut f, &self.to_bytes()).map_err(io(&secret))?;
        std::fs::write(&public, self.public_key().to_bytes()).map_err(io(&public))?;
        Ok((secret, public))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, ..)", self.public_key().id())
    }
}

fn invalid_key(path: Option<&Path>, reason: &str) -> Error {
    Error::InvalidKey {
        path: path.map(Path::to_path_buf),
        reason: reason.to_string(),
    }
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::InvalidKey { reason, .. } => Error::InvalidKey {
            path: Some(path.to_path_buf()),
            reason,
        },
        other => other,
    }
}
