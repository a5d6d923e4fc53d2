//! A node's TOML configuration file: where it listens, where its data lives, how it reaches the
//! cluster, and overrides of the core's [`Config`].
//!
//! Why TOML and typed structs: an operator edits this file by hand, so every unknown key is an
//! error that names the key (a typo must not silently fall back to a default), and every value
//! the core uses goes through [`Config::validate`] before a node starts.
//!
//! ```text
//!   node.toml ──read──▶ toml + serde (unknown keys refused) ──▶ NodeConfig
//!        relative paths resolved against the file's directory ─┘      │
//!        [core] overrides applied onto Config::default() ──▶ Config::validate ──▶ node start
//! ```
//!
//! A documented example is `io-tokio/examples/node.toml` (a test parses it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis_core::config::{Config, ConfigError};
use serde::Deserialize;

/// Largest config file read (a config is a few hundred bytes; this bounds a wrong path).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most seed addresses in one config.
pub const MAX_SEEDS: usize = 64;

/// A config file the operator must fix. The operator is at fault in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path}: {len} bytes is larger than the {MAX_CONFIG_BYTES}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not valid TOML for a node config (toml's message names the key and line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A field's value is refused by the core's validation.
    #[error("{path}: [core] {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field and why.
        source: ConfigError,
    },
    /// Too many seeds.
    #[error("{path}: `seeds` lists {count} addresses, at most {MAX_SEEDS} are allowed")]
    TooManySeeds {
        /// The file.
        path: PathBuf,
        /// How many were given.
        count: usize,
    },
}

/// A node's configuration file.
///
/// ```
/// let text = r#"
///     listen = "127.0.0.1:0"
///     data_dir = "data"
///     bootstrap = true
///     [core]
///     raft_tick_ms = 50
/// "#;
/// let config = portcullis_io_tokio::config::NodeConfig::parse(text, "/etc/portcullis/node.toml".as_ref()).unwrap();
/// assert_eq!(config.data_dir, std::path::Path::new("/etc/portcullis/data"));
/// assert_eq!(config.core_config().unwrap().raft_tick_ms, 50);
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NodeConfig {
    /// UDP address the node listens on (port 0 picks a free port; the node prints it).
    pub listen: SocketAddr,
    /// Address peers should dial, if not `listen` (behind NAT, or when listening on 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Data directory: the redb store, the node key and the control socket.
    pub data_dir: PathBuf,
    /// Directory with the cluster key and join secret (from `cluster init`): only on admitting
    /// nodes.
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// Found a new one-node cluster on first start (the data directory is empty). Requires
    /// `secrets_dir`. Ignored on restart.
    #[serde(default)]
    pub bootstrap: bool,
    /// Members to reach when joining, tried in turn (`node join --seed`, repeatable, replaces
    /// them).
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Address of the Prometheus metrics endpoint; no endpoint when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Flight recorder: record every input of this node's core to rotating files in this
    /// directory (off when absent). See the README's "Flight recorder".
    #[serde(default)]
    pub record_dir: Option<PathBuf>,
    /// Overrides of the core's configuration.
    #[serde(default)]
    pub core: CoreOverrides,
}

/// Generates a struct of optional overrides and the code that applies them onto a target.
macro_rules! overrides {
    (
        $(#[$meta:meta])*
        $name:ident => $target:ty {
            $( $(#[$doc:meta])* $field:ident : $ty:ty, )*
        }
        $( nested { $( $(#[$ndoc:meta])* $nfield:ident : $nty:ty, )* } )?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[non_exhaustive]
        pub struct $name {
            $( $(#[$doc])* #[serde(default)] pub $field: Option<$ty>, )*
            $( $( $(#[$ndoc])* #[serde(default)] pub $nfield: $nty, )* )?
        }

        impl $name {
            /// Writes every given field onto `target`.
            pub fn apply(&self, target: &mut $target) {
                $( if let Some(value) = self.$field { target.$field = value; } )*
                $( $( self.$nfield.apply(&mut target.$nfield); )* )?
            }
        }
    };
}

overrides! {
    /// `[core]`: overrides of [`Config`]; absent fields keep their defaults.
    CoreOverrides => Config {
        /// Largest frame accepted from a peer.
        max_frame_bytes: usize,
        /// Allowed clock skew on token expiry.
        token_clock_skew_ms: u64,
        /// Lease a listener takes on a token.
        admission_lease_ms: u64,
        /// How often the sweeper runs.
        sweep_interval_ms: u64,
        /// Most commands per sweep.
        max_sweep_commands: u32,
        /// Most queued outputs.
        max_output_queue: u32,
        /// Most admissions in flight at a listener.
        max_inflight_admissions: u32,
        /// Length of one Raft tick.
        raft_tick_ms: u64,
        /// Ticks before an election.
        election_ticks: u32,
        /// Ticks between heartbeats.
        heartbeat_ticks: u32,
        /// Largest Raft append.
        max_append_bytes: u64,
        /// Most in-flight appends per follower.
        max_inflight_appends: u32,
        /// Entries between log compactions.
        compact_after_entries: u64,
        /// Largest snapshot accepted.
        max_snapshot_bytes: usize,
        /// Proposal retry interval.
        proposal_retry_ms: u64,
        /// Most pending proposals.
        max_pending_proposals: u32,
        /// A joiner's wait for one seed.
        join_request_timeout_ms: u64,
        /// A joiner's resend interval.
        join_resend_ms: u64,
        /// A joiner's first retry delay.
        join_retry_initial_ms: u64,
        /// A joiner's largest retry delay.
        join_retry_max_ms: u64,
        /// A joiner's whole budget.
        join_deadline_ms: u64,
        /// Reconnect interval to unreachable members.
        connect_retry_ms: u64,
        /// Most Raft learners.
        max_raft_learners: u32,
        /// Most Raft voters.
        max_raft_voters: u32,
        /// Most namespaces held.
        max_namespaces: u32,
        /// Most remembered message ids.
        max_seen_messages: u32,
    }
    nested {
        /// `[core.ledger]`: the replicated ledger (identical on every node of a cluster).
        ledger: LedgerOverrides,
        /// `[core.namespace]`: namespace joins.
        namespace: NamespaceOverrides,
    }
}

overrides! {
    /// `[core.ledger]`: overrides of [`portcullis_core::config::LedgerConfig`]. Every node of a
    /// cluster MUST use the same values.
    LedgerOverrides => portcullis_core::config::LedgerConfig {
        /// Most token records.
        max_token_records: u32,
        /// Most members.
        max_members: u32,
        /// How long finished records are kept.
        record_grace_ms: u64,
        /// Longest lease.
        max_lease_ms: u64,
        /// Most purges per entry.
        max_purge_per_entry: u32,
        /// Proposals remembered per proposer.
        proposal_window: u32,
    }
}

overrides! {
    /// `[core.namespace]`: overrides of [`portcullis_core::namespace::NamespaceConfig`].
    NamespaceOverrides => portcullis_core::namespace::NamespaceConfig {
        /// Beacon interval.
        beacon_interval_ms: u64,
        /// Beacon freshness.
        beacon_ttl_ms: u64,
        /// Largest future skew of a beacon.
        max_future_skew_ms: u64,
        /// Probe answer interval per peer.
        probe_answer_interval_ms: u64,
        /// Probe re-publish interval.
        probe_retry_ms: u64,
        /// Subscription re-announce interval.
        subscriptions_refresh_ms: u64,
        /// One join attempt's budget.
        join_deadline_ms: u64,
        /// Longest fast path.
        fast_path_max_ms: u64,
        /// Backfill partner silence before replacement.
        backfill_silence_ms: u64,
        /// Longest wait for acks.
        ack_wait_ms: u64,
        /// Acks an announce needs.
        min_acks: usize,
        /// Announce retry interval.
        announce_retry_ms: u64,
        /// First retry delay.
        retry_initial_ms: u64,
        /// Largest retry delay.
        retry_max_ms: u64,
        /// Longest retrying join.
        retry_max_total_ms: u64,
    }
}

impl NodeConfig {
    /// Reads and parses the file at `path` (relative paths inside resolve against its directory).
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigFileError> {
        let read_err = |source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigFileError::TooLarge {
                path: path.to_path_buf(),
                len,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        NodeConfig::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (used for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigFileError> {
        let mut config: NodeConfig =
            toml::from_str(text).map_err(|e: toml::de::Error| ConfigFileError::Parse {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_owned(),
            })?;
        if config.seeds.len() > MAX_SEEDS {
            return Err(ConfigFileError::TooManySeeds {
                path: path.to_path_buf(),
                count: config.seeds.len(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.secrets_dir = config.secrets_dir.map(|dir| base.join(dir));
        config.record_dir = config.record_dir.map(|dir| base.join(dir));
        config
            .core_config()
            .map_err(|source| ConfigFileError::Invalid {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(config)
    }

    /// The core configuration: defaults with `[core]` applied, validated.
    pub fn core_config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        self.core.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// A minimal config for `dir` (used by `node join` without `--config`).
    pub fn minimal(listen: SocketAddr, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            listen,
            advertise: None,
            data_dir,
            secrets_dir: None,
            bootstrap: false,
            seeds: Vec::new(),
            metrics_listen: None,
            record_dir: None,
            core: CoreOverrides::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_applies_overrides() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node.toml");
        let config = NodeConfig::load(&path).unwrap();
        let dir = path.parent().unwrap();
        assert_eq!(config.data_dir, dir.join("data/node1"));
        assert_eq!(config.secrets_dir, Some(dir.join("secrets")));
        assert!(config.bootstrap);
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let core = config.core_config().unwrap();
        assert_eq!(core.raft_tick_ms, 50);
        assert_eq!(core.ledger.max_lease_ms, 30_000);
        assert_eq!(core.namespace.min_acks, 1);
        // Untouched fields keep the defaults.
        assert_eq!(core.max_frame_bytes, Config::default().max_frame_bytes);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = NodeConfig::parse(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[core]\nraft_tick = 5\n",
            Path::new("n.toml"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigFileError::Parse { .. }));
        assert!(text.contains("raft_tick"), "{text}");
        assert!(text.starts_with("n.toml"), "{text}");
    }

    #[test]
    fn core_validation_names_the_field() {
        let err = NodeConfig::parse(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[core]\nelection_ticks = 2\nheartbeat_ticks = 1\n",
            Path::new("n.toml"),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigFileError::Invalid {
                    source: ConfigError::OutOfRange {
                        field: "election_ticks",
                        ..
                    },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_required_field_and_bad_address_are_parse_errors() {
        let missing = NodeConfig::parse("listen = \"127.0.0.1:0\"\n", Path::new("n.toml"));
        assert!(
            matches!(&missing, Err(ConfigFileError::Parse { message, .. }) if message.contains("data_dir")),
            "{missing:?}"
        );
        let bad = NodeConfig::parse(
            "listen = \"nowhere\"\ndata_dir = \"d\"\n",
            Path::new("n.toml"),
        );
        assert!(matches!(bad, Err(ConfigFileError::Parse { .. })), "{bad:?}");
    }

    #[test]
    fn too_many_seeds_is_refused() {
        let seeds: Vec<String> = (0..=MAX_SEEDS)
            .map(|i| format!("\"127.0.0.1:{}\"", 1000 + i))
            .collect();
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\nseeds = [{}]\n",
            seeds.join(",")
        );
        assert!(matches!(
            NodeConfig::parse(&text, Path::new("n.toml")),
            Err(ConfigFileError::TooManySeeds { count, .. }) if count == MAX_SEEDS + 1
        ));
    }
}
