//! The queue document's layout: the top-level maps every node shares.
//!
//! Layout (every top-level map comes from the genesis change that all nodes share, so no
//! two nodes ever create one of them concurrently and hide the other's):
//!
//! ```text
//! meta     schema, mesh_id, mesh_name
//! members  "<node_id>/<record_id>" -> signed membership record (bytes)
//! probes   "<node_id>/<record_id>" -> signed probe record (bytes)
//! tasks    "<task_id>" -> map: a "spec" scalar of the initial fields, and edited keys
//!          ("title", "dep:<task_id>", ...), no nested objects (see fields.rs)
//! records  "<task_id>/<record_id>" -> signed task record (bytes)
//! leases   reserved for named locks
//! inbox    "<agent@node>/<message_id>" -> message (JSON text); "<...>/<message_id>/read" and
//!          ".../acked" -> true (see inbox.rs)
//! ```
//!
//! Records sit under flat composite keys, not in per-task maps, so that two nodes creating
//! the same task id offline can never hide each other's records (invariant 3, nothing lost).

use automerge::ObjId;

/// Names of the top-level maps, in genesis order.
pub const TOP_LEVEL_MAPS: [&str; 7] = ["meta", "members", "probes", "tasks", "records", "leases", "inbox"];

/// The object ids of the genesis maps.
#[derive(Debug, Clone)]
pub struct TopMaps {
    pub meta: ObjId,
    pub members: ObjId,
    pub probes: ObjId,
    pub tasks: ObjId,
    pub records: ObjId,
    pub leases: ObjId,
    pub inbox: ObjId,
}
