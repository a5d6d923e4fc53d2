//! `portcullis`: the operator's command line.
//!
//! Offline commands (`cluster init`, `token create | inspect`) need only the secrets
//! directory. `node run` and `node join` run a node in the foreground; every other command
//! talks to a running node through its control socket in the data directory
//! (`io-tokio/src/control.rs`).
//!
//! ```text
//!   portcullis node run --config node.toml ──▶ driver::start ─┬─ control socket (DATA_DIR/control.sock)
//!                                                              └─ metrics endpoint (optional)
//!   portcullis status --data-dir DIR ──▶ control socket ──▶ NodeHandle ──▶ answer
//! ```
//!
//! Every failure is a typed error with its own exit code (listed in `portcullis --help`).
//!
//! The whole program lives in the library so that the `portcullis` binary (`src/main.rs`) and
//! the end-to-end test crate's copy of it (`tests/portcullis_e2e.rs`) are the same code: Cargo
//! gives the path of a freshly built binary only to its own package's tests.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ConfigFileError;
use crate::control::ControlError;
use crate::demo::DemoError;
use crate::driver::{DriverError, JoinError};
use crate::secrets::{self, SecretsError};
use clap::{Parser, Subcommand};
use portcullis_core::admission::JoinFailure;
use portcullis_core::messages::RejectReason;
use portcullis_core::token::{JoinToken, Role, TokenError};

/// Exit codes, shown in `--help`.
const EXIT_CODES: &str = "\
Exit codes:
   0  success
   2  usage error (bad arguments)
   3  secrets directory problem
   4  system clock before 1970
   5  config file problem
   6  node failed to start or stopped (storage, transport, core)
   7  no running node at the data directory (control socket)
   8  the node refused or could not complete the command
  10  token expired
  11  token is for another cluster
  12  token MAC does not verify (forged or corrupted)
  13  token malformed or of an unsupported version
  14  token already consumed by another node (replayed)
  15  token revoked
  16  join refused for another reason (overloaded, unavailable, ...)
  17  join timed out
  18  seed unreachable or not authenticated";

/// Admit nodes into clusters with single-use join tokens.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Cluster-wide set-up.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Join tokens: create and inspect offline; list and revoke on a running node.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Run a node, or join a cluster and run.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Cluster members (on a running node).
    #[command(subcommand)]
    Member(MemberCmd),
    /// Namespaces (on a running node).
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Show a running node's state.
    ///
    /// Example: portcullis status --data-dir ./data/node1
    Status {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Start a 3-node cluster on loopback, admit 2 nodes (one token contested by two joiners),
    /// create a namespace and join it; print each step and a summary.
    ///
    /// Example: portcullis demo
    Demo,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Create the cluster key and join secret (files are 0600 and never overwritten).
    ///
    /// Example: portcullis cluster init --dir ./secrets
    Init {
        /// Directory for the secrets.
        #[arg(long, default_value = "portcullis-secrets")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Issue a single-use join token; prints it on stdout, and nothing else.
    ///
    /// Example: portcullis token create --dir ./secrets --ttl 15m
    Create {
        /// Directory holding the secrets from `cluster init`.
        #[arg(long, default_value = "portcullis-secrets")]
        dir: PathBuf,
        /// Time to live: a number with a unit, e.g. 90s, 15m, 24h.
        #[arg(long, default_value = "1h", value_parser = parse_ttl_ms)]
        ttl: u64,
        /// Admit as an observer (never promoted to voter) instead of a member.
        #[arg(long)]
        observer: bool,
    },
    /// Check a token against the secrets and show its hash prefix, expiry and role.
    ///
    /// Example: portcullis token inspect --dir ./secrets PCJT-...
    Inspect {
        /// Directory holding the secrets from `cluster init`.
        #[arg(long, default_value = "portcullis-secrets")]
        dir: PathBuf,
        /// The token text.
        token: String,
    },
    /// Show the admission audit trail of a running node since it started (token hash
    /// prefix, presenter, result, log index, time).
    ///
    /// Example: portcullis token list --data-dir ./data/node1
    List {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Revoke a token through a running node (the leader applies it).
    ///
    /// Example: portcullis token revoke --data-dir ./data/node1 PCJT-...
    Revoke {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The token text.
        token: String,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Run a node from a TOML config (see io-tokio/examples/node.toml). Prints
    /// `listening on ADDR` as its first line, then runs until Ctrl-C or SIGTERM (exit 0), or
    /// until the node stops on a failure of its storage or core (exit 6).
    ///
    /// Example: portcullis node run --config node.toml
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Join a cluster with a token through a seed, then keep running as a member, as `node
    /// run` does. A node that is already a member (restart) skips the join.
    ///
    /// Example: portcullis node join --token PCJT-... --seed 127.0.0.1:7401 --data-dir ./data/node2
    Join {
        /// The token text.
        #[arg(long)]
        token: String,
        /// A member's address; repeat it for more, tried in turn (default: the config's
        /// `seeds`). A member without the join secret redirects to those that hold it.
        #[arg(long = "seed", value_name = "ADDR")]
        seeds: Vec<std::net::SocketAddr>,
        /// A config file; without it, `--data-dir` and `--listen` are used.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (without `--config`).
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        /// Listen address (without `--config`).
        #[arg(long, default_value = "127.0.0.1:0", conflicts_with = "config")]
        listen: std::net::SocketAddr,
        /// Exit after the verdict instead of running on.
        #[arg(long)]
        exit_after_join: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MemberCmd {
    /// List the metadata group's voters and learners.
    ///
    /// Example: portcullis member list --data-dir ./data/node1
    List {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Promote a learner to voter (ask the leader's node).
    ///
    /// Example: portcullis member promote --data-dir ./data/node1 2
    Promote {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The learner's member id.
        member_id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceCmd {
    /// Create a namespace administered by the node; prints its id (hex).
    ///
    /// Example: portcullis namespace create --data-dir ./data/node1
    Create {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Issue an invitation; prints it (hex) on stdout.
    ///
    /// Example: portcullis namespace invite --data-dir ./data/node1 --namespace 3fa1... --ttl 1h
    Invite {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The namespace id (hex).
        #[arg(long)]
        namespace: String,
        /// Validity.
        #[arg(long, default_value = "1h", value_parser = parse_ttl_ms)]
        ttl: u64,
        /// One join only (default: reusable until it expires).
        #[arg(long)]
        single_use: bool,
    },
    /// Join a namespace with an invitation through one or more members; waits for Ready.
    ///
    /// Example: portcullis namespace join --data-dir ./data/node2 --invitation 0a1b... --peer 127.0.0.1:7401
    Join {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The invitation (hex, from `namespace invite`).
        #[arg(long)]
        invitation: String,
        /// A namespace member's address (repeatable).
        #[arg(long = "peer", required = true)]
        peers: Vec<std::net::SocketAddr>,
        /// The whole budget.
        #[arg(long, default_value = "30s", value_parser = parse_ttl_ms)]
        deadline: u64,
    },
    /// List a namespace's members and admins as this node's replica sees them (key hashes).
    ///
    /// Example: portcullis namespace members --data-dir ./data/node2 --namespace 3fa1...
    Members {
        /// The running node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The namespace id (hex).
        #[arg(long)]
        namespace: String,
    },
}

/// Parses `90s`, `15m`, `24h`, `7d` or plain milliseconds (`500ms`) into milliseconds.
fn parse_ttl_ms(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use ms, s, m, h or d"
            ));
        }
    };
    let ms = value
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))?;
    if ms == 0 {
        return Err("the TTL must be positive".into());
    }
    Ok(ms)
}

/// Errors the CLI reports, each with its own exit code.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("token refused: {0}")]
    Token(#[from] TokenError),
    #[error("the system clock is before 1970")]
    Clock,
    #[error("config: {0}")]
    Config(#[from] ConfigFileError),
    #[error("{0}")]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Control(#[from] ControlError),
    #[error("the node refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Join(#[from] JoinError),
    #[error("demo: {0}")]
    Demo(#[from] DemoError),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Secrets(_) => 3,
            CliError::Token(TokenError::Expired { .. }) => 10,
            CliError::Token(TokenError::WrongCluster { .. }) => 11,
            CliError::Token(TokenError::BadMac) => 12,
            CliError::Token(_) => 13,
            CliError::Clock => 4,
            CliError::Config(_) => 5,
            CliError::Driver(_) => 6,
            // The node's own socket: it could not start.
            CliError::Control(ControlError::Bind { .. } | ControlError::PathTooLong { .. }) => 6,
            CliError::Control(_) => 7,
            CliError::Refused(_) => 8,
            CliError::Usage(_) => 2,
            CliError::Join(e) => join_exit_code(e),
            CliError::Demo(DemoError::Driver(_) | DemoError::Io(_)) => 6,
            CliError::Demo(DemoError::Join(e)) => join_exit_code(e),
            CliError::Demo(_) => 8,
        }
    }
}

fn join_exit_code(e: &JoinError) -> u8 {
    match e {
        JoinError::Failed(JoinFailure::Rejected(reason)) => match reason {
            RejectReason::Expired => 10,
            RejectReason::WrongCluster => 11,
            RejectReason::BadMac => 12,
            RejectReason::Malformed | RejectReason::UnsupportedVersion => 13,
            RejectReason::AlreadyConsumed => 14,
            RejectReason::Revoked => 15,
            _ => 16,
        },
        JoinError::Failed(JoinFailure::TimedOut { .. }) | JoinError::Timeout(_) => 17,
        JoinError::Seed(_) => 18,
        // Our own node died (storage, core): not the cluster's answer.
        JoinError::Stopped(_) => 6,
        _ => 16,
    }
}

impl CliError {
    /// What the operator can do about it, for the token refusals.
    fn hint(&self) -> Option<&'static str> {
        match self.exit_code() {
            10 => Some("the token expired: issue a new one with `portcullis token create`"),
            11 => Some(
                "the token was issued for another cluster: check the seed and the secrets it came from",
            ),
            12 => Some("the token does not verify: it was altered or forged"),
            13 => {
                Some("the token is not a portcullis token of this version: copy it again in full")
            }
            14 => Some(
                "the token already admitted another node: tokens are single-use; issue a new one",
            ),
            15 => Some("the operator revoked this token"),
            _ => None,
        }
    }
}

fn unix_ms() -> Result<u64, CliError> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CliError::Clock)?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Cmd::Cluster(ClusterCmd::Init { dir }) => {
            let made = secrets::init(&dir)?;
            eprintln!(
                "created cluster secrets in {} (cluster pin {})",
                dir.display(),
                made.pin().0.short()
            );
        }
        Cmd::Token(TokenCmd::Create { dir, ttl, observer }) => {
            let s = secrets::load(&dir)?;
            let role = if observer {
                Role::Observer
            } else {
                Role::Member
            };
            let expires = unix_ms()?.saturating_add(ttl);
            let token = JoinToken::issue(
                &s.join_secret,
                s.pin(),
                secrets::random_token_id(),
                expires,
                role,
            );
            println!("{}", token.expose_text().as_str());
            eprintln!(
                "token {} expires at unix ms {expires} ({role:?})",
                token.hash()
            );
        }
        Cmd::Token(TokenCmd::Inspect { dir, token }) => {
            let s = secrets::load(&dir)?;
            let t = JoinToken::parse(&token)?;
            t.verify(&s.join_secret, s.pin(), unix_ms()?, 0)?;
            println!(
                "valid: hash {} role {:?} expires at unix ms {}",
                t.hash(),
                t.body().role,
                t.body().expires_at_unix_ms
            );
        }
        other => cli::run_async(other)?,
    }
    Ok(())
}

/// Runs the `portcullis` command line on this process's arguments and returns its exit code.
///
/// # Example
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     portcullis_io_tokio::app::main()
/// }
/// ```
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::StopReason;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl_ms("90s"), Ok(90_000));
        assert_eq!(parse_ttl_ms("15m"), Ok(900_000));
        assert_eq!(parse_ttl_ms("500ms"), Ok(500));
        assert!(parse_ttl_ms("0s").is_err());
        assert!(parse_ttl_ms("5y").is_err());
        assert!(parse_ttl_ms("m").is_err());
        assert!(parse_ttl_ms("99999999999999999999d").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn node_join_refuses_data_dir_or_listen_beside_config() {
        let join = |extra: &[&str]| {
            let mut args = vec![
                "portcullis",
                "node",
                "join",
                "--token",
                "T",
                "--config",
                "c",
            ];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|_| ())
        };
        assert!(join(&[]).is_ok());
        for extra in [&["--data-dir", "d"][..], &["--listen", "127.0.0.1:1"][..]] {
            let err = join(extra).expect_err("ignored silently otherwise");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{extra:?}"
            );
        }
    }

    #[test]
    fn failures_to_start_or_of_a_dead_node_exit_6() {
        let io = || std::io::Error::other("x");
        let path = PathBuf::from("d/control.sock");
        let codes = [
            CliError::Control(ControlError::Bind {
                path: path.clone(),
                source: io(),
            })
            .exit_code(),
            CliError::Control(ControlError::PathTooLong {
                path: path.clone(),
                len: 200,
                max: 107,
            })
            .exit_code(),
            CliError::Join(JoinError::Stopped(StopReason::Fatal("x".into()))).exit_code(),
            CliError::Driver(DriverError::Died(StopReason::Fatal("x".into()))).exit_code(),
        ];
        assert_eq!(codes, [6; 4]);
        // Not reaching a node's socket stays 7.
        let connect = ControlError::Connect { path, source: io() };
        assert_eq!(CliError::Control(connect).exit_code(), 7);
    }

    #[test]
    fn demo_failures_exit_with_the_code_of_what_failed() {
        let demo = |e: DemoError| CliError::from(e).exit_code();
        assert_eq!(demo(DemoError::Driver(DriverError::Stopped)), 6);
        assert_eq!(demo(DemoError::Io(std::io::Error::other("x"))), 6);
        assert_eq!(demo(DemoError::Join(JoinError::Timeout(1))), 17);
        let refused = JoinError::Failed(JoinFailure::Rejected(RejectReason::Revoked));
        assert_eq!(demo(DemoError::Join(refused)), 15);
        assert_eq!(demo(DemoError::Timeout("a leader")), 8);
        assert_eq!(demo(DemoError::Unexpected("x".into())), 8);
    }

    #[test]
    fn token_refusals_have_distinct_exit_codes() {
        let code =
            |reason| CliError::Join(JoinError::Failed(JoinFailure::Rejected(reason))).exit_code();
        let codes = [
            code(RejectReason::Expired),
            code(RejectReason::WrongCluster),
            code(RejectReason::BadMac),
            code(RejectReason::Malformed),
            code(RejectReason::AlreadyConsumed),
            code(RejectReason::Revoked),
        ];
        assert_eq!(codes, [10, 11, 12, 13, 14, 15]);
        // The offline check of the same faults gives the same codes.
        assert_eq!(CliError::Token(TokenError::BadMac).exit_code(), 12);
    }
}
