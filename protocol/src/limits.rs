//! Limits on everything that comes from outside, named with the unit last.
//!
//! Over a limit is `INVALID_INPUT` naming the limit (see [`crate::error`]). The values are
//! documented in `docs/PROTOCOL.md`; a test keeps the two in step.

/// Longest task title, in bytes of UTF-8.
pub const TITLE_BYTES_MAX: usize = 200;
/// Longest task description, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 16 * 1024;
/// Longest progress message, reason, summary or other free-text field of a record, in bytes.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// Longest short field (a requirement, label, glob, commit, command), in bytes.
pub const FIELD_BYTES_MAX: usize = 256;
/// Most items in one list field of a task or record (requirements, checks, files, commits ...).
pub const LIST_ITEMS_MAX: usize = 64;
/// Most dependencies of one task.
pub const DEPENDENCIES_MAX: usize = 64;
/// Most records one task may carry; further records are refused locally and ignored by the
/// resolver beyond this count (in record-id order, so every node ignores the same ones).
pub const RECORDS_PER_TASK_MAX: usize = 4096;
/// Longest task id, agent name or node name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Largest encoded signed record, in bytes.
pub const RECORD_BYTES_MAX: usize = 64 * 1024;
/// Lowest and highest task priority.
pub const PRIORITY_MIN: i64 = -1000;
pub const PRIORITY_MAX: i64 = 1000;
/// Shortest and longest lease a claim may ask for, in milliseconds.
pub const LEASE_MS_MIN: u64 = 10 * 1000;
pub const LEASE_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Lease a claim gets when the task names none: 30 minutes.
pub const LEASE_MS_DEFAULT: u64 = 30 * 60 * 1000;
/// Highest `max_attempts` a task may set.
pub const ATTEMPTS_MAX: u32 = 100;
/// `max_attempts` when the task names none.
pub const ATTEMPTS_DEFAULT: u32 = 3;
/// Longest request id a client may send for idempotency, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Largest JSON body the local API accepts, in bytes.
pub const API_BODY_BYTES_MAX: usize = 256 * 1024;
/// Longest life of an invite token, in milliseconds: 7 days.
pub const INVITE_TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Longest a claim waits for its majority or its confirmation (`claim --timeout`): 10 minutes.
pub const CLAIM_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
/// Life of an invite token when `--ttl` is not given: 1 hour.
pub const INVITE_TTL_MS_DEFAULT: u64 = 3600 * 1000;
/// Most addresses an invite token carries.
pub const INVITE_ADDRS_MAX: usize = 16;
/// Longest invite token, in bytes of text.
pub const INVITE_TOKEN_BYTES_MAX: usize = 4096;
/// Invites a node keeps (open, used or expired); the oldest expired go first.
pub const INVITES_KEPT_MAX: usize = 1024;
/// Largest document a joining node accepts from its inviter, in bytes: 1 GiB.
pub const JOIN_DOCUMENT_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Most connections a node holds at once, in and out.
pub const CONNECTIONS_MAX: u32 = 256;
/// Most connections to or from one peer.
pub const CONNECTIONS_PER_PEER_MAX: u32 = 2;
/// Most addresses kept per known peer.
pub const PEER_ADDRS_MAX: usize = 16;
/// Longest settle time a claim waits before it is reported won, in milliseconds.
pub const SETTLE_MS_MAX: u64 = 500;
