//! The edgeml fleet and telemetry API, from both ends.
//!
//! - [`wire`]: every request and response body, serialised by the server
//!   (`edgeml-server`) and read by the device agent and the `edgeml` CLI.
//! - [`Client`] (feature `http`, on by default): one typed, blocking HTTP
//!   client for the device calls (enrol, poll, download, report), signed
//!   with the device key, and the operator calls (publish, rollout, fleet
//!   and telemetry queries), authorised with the admin token.
//!
//! ```no_run
//! use edgeml_client::Client;
//! # fn main() -> Result<(), edgeml_client::Error> {
//! let client = Client::new("http://127.0.0.1:7070")?.with_admin_token("secret");
//! for d in client.fleet_devices()? {
//!     println!("{} {:?}", d.device_id, d.status.state);
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod error;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub mod oci;
pub mod wire;

pub use error::Error;
#[cfg(feature = "http")]
pub use http::{Client, DownloadLimits, Poll, SampleFormat};
