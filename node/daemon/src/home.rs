//! A node's home directory: key, config, document, socket, lock.
//!
//! ```text
//! HOME/node.key      libp2p protobuf ed25519 keypair, mode 0600
//! HOME/config.toml   name, labels (user-editable)
//! HOME/mesh.json     mesh id and name, so `init` can answer without the document
//! HOME/doc/          snapshots and change logs (see store)
//! HOME/boot          boot counter (see store::next_boot)
//! HOME/verified.bin  ids of records whose signatures verified (a cache; damage is ignored)
//! HOME/derived.bin   the state derived from the document, by its heads (a cache, likewise)
//! HOME/network.json listening ports chosen at the first start, peers' addresses (net/book.rs)
//! HOME/invites.json  invites this node issued: secret hashes, expiry, who used each
//! HOME/sync/         each peer's Automerge sync state, reused on the next connection
//! HOME/node.sock     local API socket, mode 0600, while a node runs
//! HOME/node.lock     held (flock) by the running node
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use meshwork_protocol::NodeKey;
use meshwork_protocol::identity::validate_name;
use rand::TryRng;
use serde::{Deserialize, Serialize};

/// The files of one node's home.
#[derive(Debug, Clone)]
pub(crate) struct Home {
    root: PathBuf,
}

/// What `config.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// This node's human name, shown to other members.
    pub(crate) name: String,
    /// Labels this machine offers to task requirements (`label:licensed-ansys`).
    #[serde(default)]
    pub(crate) labels: Vec<String>,
    /// Tools to look for on PATH besides the built-in list.
    #[serde(default)]
    pub(crate) tools: Vec<String>,
}

/// What `mesh.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MeshFile {
    pub(crate) mesh_id: String,
    pub(crate) mesh_name: String,
}

impl Home {
    pub(crate) fn new(root: PathBuf) -> Home {
        Home { root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub(crate) fn mesh_path(&self) -> PathBuf {
        self.root.join("mesh.json")
    }

    pub(crate) fn doc_dir(&self) -> PathBuf {
        self.root.join(meshwork_protocol::storage::DOC_DIR_NAME)
    }

    /// The verified-records cache (`protocol::verified_cache`).
    pub(crate) fn verified_cache_path(&self) -> PathBuf {
        self.root.join("verified.bin")
    }

    /// The derived-state cache (`protocol::derived_cache`, `crdt::derived_cache`).
    pub(crate) fn derived_cache_path(&self) -> PathBuf {
        self.root.join("derived.bin")
    }

    pub(crate) fn socket_path(&self) -> PathBuf {
        self.root.join(meshwork_protocol::storage::SOCKET_FILE_NAME)
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join(meshwork_protocol::storage::LOCK_FILE_NAME)
    }

    /// Whether `init` already ran here.
    pub(crate) fn is_initialised(&self) -> bool {
        self.key_path().exists() && self.mesh_path().exists()
    }

    /// Creates the home directory, private to its owner.
    pub(crate) fn create_dir(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.root).with_context(|| format!("cannot create the home {}", self.root.display()))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", self.root.display()))
    }

    /// Reads the node key, or creates one from the OS random source (mode 0600, written
    /// with `create_new` so two racing inits cannot both write one).
    pub(crate) fn load_or_create_key(&self) -> anyhow::Result<NodeKey> {
        let path = self.key_path();
        if path.exists() {
            return self.load_key();
        }
        let mut seed = [0u8; 32];
        rand::rngs::SysRng.try_fill_bytes(&mut seed).context("the OS random source failed")?;
        let key = NodeKey::from_seed(seed);
        let bytes = key.to_libp2p_protobuf().context("cannot encode the node key")?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create the key file {}", path.display()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        sync_dir(&self.root)?;
        Ok(key)
    }

    pub(crate) fn load_key(&self) -> anyhow::Result<NodeKey> {
        let path = self.key_path();
        let bytes = fs::read(&path).with_context(|| format!("cannot read the key file {}", path.display()))?;
        NodeKey::from_libp2p_protobuf(&bytes)
            .with_context(|| format!("the key file {} is damaged; restore it from a backup", path.display()))
    }

    pub(crate) fn load_config(&self) -> anyhow::Result<Config> {
        let path = self.config_path();
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid config (INVALID_INPUT)", path.display()))?;
        validate_name("a node name", &config.name).with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    pub(crate) fn write_config(&self, config: &Config) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(config).context("cannot encode the config")?;
        write_atomically(&self.config_path(), text.as_bytes())
    }

    pub(crate) fn load_mesh(&self) -> anyhow::Result<MeshFile> {
        let path = self.mesh_path();
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    pub(crate) fn write_mesh(&self, mesh: &MeshFile) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(mesh).context("cannot encode mesh.json")?;
        write_atomically(&self.mesh_path(), text.as_bytes())
    }

    /// Takes the home's lock, held for as long as the returned file lives. A second node on
    /// the same home is refused.
    pub(crate) fn lock(&self) -> anyhow::Result<File> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.try_lock().is_err() {
            bail!(
                "a node is already running for {}; stop it with `meshwork node stop --home {0}`",
                self.root.display()
            );
        }
        Ok(file)
    }
}

/// Writes a file through a temporary file, fsync and rename, then fsyncs the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", temp.display()))?;
    fs::rename(&temp, path).with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// The machine's host name, made into a valid node name.
pub(crate) fn default_node_name() -> String {
    let raw = sysinfo::System::host_name().unwrap_or_default();
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(meshwork_protocol::limits::NAME_BYTES_MAX)
        .collect();
    if cleaned.is_empty() { "node".to_owned() } else { cleaned }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        home.create_dir().unwrap();
        let key = home.load_or_create_key().unwrap();
        let mode = fs::metadata(home.key_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(home.load_or_create_key().unwrap().node_id(), key.node_id());
    }

    #[test]
    fn a_second_lock_on_one_home_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        let _held = home.lock().unwrap();
        assert!(home.lock().is_err());
    }

    #[test]
    fn a_damaged_config_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        fs::write(home.config_path(), "name = 5").unwrap();
        let error = format!("{:#}", home.load_config().unwrap_err());
        assert!(error.contains("config.toml"), "{error}");
    }
}
