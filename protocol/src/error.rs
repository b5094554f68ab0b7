//! The stable error codes of the contract and the JSON body that carries them.

use serde::{Deserialize, Serialize};

/// One of the contract's error codes. Each maps to one process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    Internal,
    Usage,
    NodeUnavailable,
    NotFound,
    Conflict,
    NotOwner,
    GateRefused,
    InvalidInput,
    InvalidTransition,
}

impl ErrorCode {
    /// Every code, in exit-status order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Internal,
        ErrorCode::Usage,
        ErrorCode::NodeUnavailable,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::NotOwner,
        ErrorCode::GateRefused,
        ErrorCode::InvalidInput,
        ErrorCode::InvalidTransition,
    ];

    /// The process exit status the contract assigns to this code.
    pub fn exit_status(self) -> u8 {
        match self {
            ErrorCode::Internal => 1,
            ErrorCode::Usage => 2,
            ErrorCode::NodeUnavailable => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::Conflict => 5,
            ErrorCode::NotOwner => 6,
            ErrorCode::GateRefused => 7,
            ErrorCode::InvalidInput => 8,
            ErrorCode::InvalidTransition => 9,
        }
    }

    /// The code's name as it appears in JSON (`"NOT_FOUND"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Usage => "USAGE",
            ErrorCode::NodeUnavailable => "NODE_UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::NotOwner => "NOT_OWNER",
            ErrorCode::GateRefused => "GATE_REFUSED",
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::InvalidTransition => "INVALID_TRANSITION",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation's failure as users, scripts and agents see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Whether repeating the same request later may succeed.
    pub retryable: bool,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody { code, message: message.into(), retryable: false }
    }

    pub fn retryable(mut self) -> ErrorBody {
        self.retryable = true;
        self
    }

    pub fn invalid_input(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorCode::InvalidInput, message)
    }

    /// A value over one of the [`crate::limits`]; the message names the limit.
    pub fn over_limit(what: &str, limit_name: &str, limit: usize) -> ErrorBody {
        ErrorBody::invalid_input(format!("{what} is over the limit {limit_name} = {limit}"))
    }
}

/// The JSON a failed command prints: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's exit table, code by code.
    #[test]
    fn exit_statuses_follow_the_contract_table() {
        let table: Vec<(u8, String)> = ErrorCode::ALL
            .iter()
            .map(|code| (code.exit_status(), serde_json::to_string(code).unwrap_or_default()))
            .collect();
        expect_test::expect![[r#"
            [
                (
                    1,
                    "\"INTERNAL\"",
                ),
                (
                    2,
                    "\"USAGE\"",
                ),
                (
                    3,
                    "\"NODE_UNAVAILABLE\"",
                ),
                (
                    4,
                    "\"NOT_FOUND\"",
                ),
                (
                    5,
                    "\"CONFLICT\"",
                ),
                (
                    6,
                    "\"NOT_OWNER\"",
                ),
                (
                    7,
                    "\"GATE_REFUSED\"",
                ),
                (
                    8,
                    "\"INVALID_INPUT\"",
                ),
                (
                    9,
                    "\"INVALID_TRANSITION\"",
                ),
            ]
        "#]]
        .assert_debug_eq(&table);
        for code in ErrorCode::ALL {
            assert_eq!(format!("\"{}\"", code.as_str()), serde_json::to_string(&code).unwrap_or_default());
        }
    }
}
