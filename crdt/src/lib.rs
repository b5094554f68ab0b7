//! meshwork's core: the queue document, the deterministic resolver, and the sync engine.
//!
//! No I/O, no clock, no OS randomness: time and randomness are parameters. Start reading at
//! [`resolve::resolve`] (how a task's state follows from its records), then
//! [`replica::Replica`] (the document plus the state derived from it), then [`sync`].

pub mod derived_cache;
pub mod document;
pub mod duties;
pub mod events;
pub mod export;
pub mod fields;
pub mod gate;
pub mod inbox;
pub mod layout;
pub mod membership;
pub mod ops;
pub mod probes;
pub mod ready;
pub mod replica;
pub mod resolve;
pub mod sync;
pub mod task;
pub mod task_json_cache;
/// Builders for tests and benchmarks; only with the `test-support` feature, which tests
/// enable and a release build never does.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod test_support;

pub use derived_cache::{CacheRefused, CacheUse, DerivedCache, DerivedCacheFile};
pub use document::{DocError, QueueDoc, Touched};
pub use ops::{Applied, OpError, Speaker};
pub use replica::{Founded, Replica, SignError};
pub use resolve::{TaskEntry, TaskState, resolve};
