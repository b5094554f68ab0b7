//! Task ids: given by the user (`WRK-664`) or generated so two offline nodes never collide.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hlc::Stamp;
use crate::identity::{IdentityError, NodeId, validate_name};

/// A task's id: 1 to 64 bytes of letters, digits, `.`, `_`, `-`.
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl Clone for TaskId {
    fn clone(&self) -> TaskId {
        TaskId(self.0.clone())
    }

    /// Reuses this id's memory: a listing fills one task object per task in place
    /// (`crdt::export`), and a derived `Clone` would allocate a new id each time.
    fn clone_from(&mut self, source: &TaskId) {
        self.0.clone_from(&source.0);
    }
}

/// Prefix of generated ids, so people can tell them from ids they chose.
pub const GENERATED_TASK_ID_PREFIX: &str = "mw-";

impl TaskId {
    pub fn new(id: &str) -> Result<TaskId, IdentityError> {
        validate_name("a task id", id)?;
        Ok(TaskId(id.to_owned()))
    }

    /// A fresh id from the creating node, its clock and randomness the caller supplies:
    /// `mw-` and ten base32 characters (50 bits) of a hash over all three. Two offline
    /// nodes never produce the same id unless their keys, stamps and random words all agree.
    pub fn generate(node: &NodeId, stamp: Stamp, random: u64) -> TaskId {
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
        let mut hasher = Sha256::new();
        hasher.update(b"meshwork-task-id-v1\0");
        hasher.update(node.public_key_bytes());
        hasher.update(stamp.wall_ms.to_be_bytes());
        hasher.update(stamp.logical.to_be_bytes());
        hasher.update(random.to_be_bytes());
        let digest = hasher.finalize();
        let mut bits = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
        let mut id = String::from(GENERATED_TASK_ID_PREFIX);
        for _ in 0..10 {
            id.push(ALPHABET[(bits >> 59) as usize] as char);
            bits <<= 5;
        }
        TaskId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskId {
    type Error = IdentityError;
    fn try_from(id: String) -> Result<TaskId, IdentityError> {
        TaskId::new(&id)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for TaskId {
    type Err = IdentityError;
    fn from_str(id: &str) -> Result<TaskId, IdentityError> {
        TaskId::new(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn generated_ids_are_valid_and_differ_by_node_clock_and_randomness() {
        let a = NodeKey::from_seed([1; 32]).node_id();
        let b = NodeKey::from_seed([2; 32]).node_id();
        let stamp = Stamp { wall_ms: 1, logical: 0 };
        let id = TaskId::generate(&a, stamp, 7);
        assert!(TaskId::new(id.as_str()).is_ok());
        assert_eq!(id.as_str().len(), GENERATED_TASK_ID_PREFIX.len() + 10);
        assert_ne!(id, TaskId::generate(&b, stamp, 7));
        assert_ne!(id, TaskId::generate(&a, Stamp { wall_ms: 2, logical: 0 }, 7));
        assert_ne!(id, TaskId::generate(&a, stamp, 8));
        assert_eq!(id, TaskId::generate(&a, stamp, 7));
    }
}
