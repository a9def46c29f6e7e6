//! The device's own ed25519 key: made on first start, kept in the telemetry
//! directory (mode 0600), registered with the collector at enrolment, and
//! used to sign every batch.

use crate::error::{Error, IoContext};
use ed25519_dalek::{Signer, SigningKey};
use std::path::Path;

/// A device id and the key it signs batches with.
pub struct DeviceIdentity {
    device_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id)
            .field("public_key", &self.public_key_hex())
            .finish()
    }
}

impl DeviceIdentity {
    /// Load `dir/device.key`, or make one.
    pub fn load_or_create(dir: &Path, device_id: &str) -> Result<Self, Error> {
        let path = dir.join("device.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let seed: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{}: not a device key (64 hex digits); delete it to make a new one and enrol again",
                            path.display()
                        ))
                    })?;
                SigningKey::from_bytes(&seed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| {
                    Error::Config(format!("no OS randomness for the device key: {e}"))
                })?;
                write_private(&path, hex::encode(seed).as_bytes())?;
                SigningKey::from_bytes(&seed)
            }
            Err(e) => return Err(e).at(&path),
        };
        Ok(DeviceIdentity {
            device_id: device_id.to_string(),
            key,
        })
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Hex public key, as enrolled.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Hex signature of a batch body (see [`crate::wire::signing_message`]).
    pub fn sign_batch(&self, body: &[u8]) -> String {
        let msg = crate::wire::signing_message(&self.device_id, body);
        hex::encode(self.key.sign(&msg).to_bytes())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}
