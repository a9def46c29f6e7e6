//! Every type the fleet and telemetry API sends, in one place: the server
//! serialises them, the agent and the CLI deserialise them.

pub mod audit;
pub mod fleet;
pub mod telemetry;

use serde::{Deserialize, Serialize};

/// The body of every error answer (4xx and 5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What was wrong, and what to do.
    pub error: String,
}
