//! meshwork's protocol: the types that cross a process or network boundary.
//!
//! Everything here is pure data and pure functions: no I/O, no clock, no OS randomness.
//! Start reading at [`record`] (what nodes sign), then [`identity`] and [`hlc`].

pub mod api;
pub mod derived_cache;
pub mod error;
pub mod event;
pub mod hlc;
pub mod identity;
pub mod invite;
pub mod limits;
pub mod probe;
pub mod record;
pub mod requirement;
pub mod route;
pub mod task_id;
mod task_json;
pub mod task_spec;
pub mod time;
pub mod verified_cache;
pub mod wire;

pub use error::{ErrorBody, ErrorCode};
pub use hlc::{Hlc, Stamp};
pub use identity::{AgentId, AgentName, MeshId, NodeId, NodeKey};
pub use probe::Probe;
pub use record::{Record, RecordBody, RecordId, SignedRecord};
pub use requirement::Requirement;
pub use task_id::TaskId;
pub mod storage;
