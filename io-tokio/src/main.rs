//! `portcullis`: the operator's command line.
//!
//! Today: offline cluster secrets and tokens, and a provisional `demo` that walks through the
//! token lifecycle on an in-process ledger. The networked commands (`node run`, `node join`,
//! `namespace ...`) arrive with the QUIC driver.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use portcullis_core::config::LedgerConfig;
use portcullis_core::crypto::SecretKey;
use portcullis_core::ledger::{
    Addrs, Command, LeaseId, Ledger, LogEntry, MemberSpec, NodeId, Outcome, PresenterId, ProposalId,
};
use portcullis_core::token::{JoinToken, Role, TokenError};
use portcullis_io_tokio::secrets::{self, SecretsError};
use rand_core::OsRng;

/// Admit nodes into clusters with single-use join tokens.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Cluster-wide set-up.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Join tokens (offline: needs only the secrets directory).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Walk through the token lifecycle on an in-process ledger (provisional: the networked
    /// 3-node demo replaces it once the QUIC driver lands).
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
        Cmd::Demo => demo()?,
    }
    Ok(())
}

/// The provisional demo: one token, two presenters, on an in-process ledger.
fn demo() -> Result<(), CliError> {
    let started = Instant::now();
    let step = |n: u32, what: &str| {
        println!(
            "[{:>7.2} ms] step {n}: {what}",
            started.elapsed().as_secs_f64() * 1e3
        );
    };
    println!(
        "portcullis demo (provisional: in-process ledger; the networked demo comes with the QUIC driver)\n"
    );
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    let s = secrets::init(&dir)?;
    step(
        1,
        &format!("cluster secrets created (pin {})", s.pin().0.short()),
    );
    let now = unix_ms()?;
    let token = JoinToken::issue(
        &s.join_secret,
        s.pin(),
        secrets::random_token_id(),
        now + 60_000,
        Role::Member,
    );
    step(
        2,
        &format!("token issued (hash {}, ttl 60 s)", token.hash()),
    );
    let parsed = JoinToken::parse(&token.expose_text())?;
    parsed.verify(&s.join_secret, s.pin(), now, 0)?;
    step(3, "token parsed and verified (MAC, cluster pin, expiry)");

    let mut ledger = Ledger::new(LedgerConfig::default());
    let alice = SecretKey::generate(&mut OsRng);
    let bob = SecretKey::generate(&mut OsRng);
    let hash = parsed.hash();
    let mut index = 0u64;
    let mut propose = |ledger: &mut Ledger, commands: Vec<Command>| {
        index += 1;
        let entry = LogEntry::new(
            ProposalId {
                node: NodeId(1),
                seq: index,
            },
            now,
            commands,
        )
        .expect("invariant: the demo proposes at most 2 commands per entry");
        ledger.apply(index, &entry).outcomes
    };
    let begin = |key: &SecretKey, lease| Command::BeginInFlight {
        hash,
        presenter: PresenterId::of(&key.public()),
        lease_id: LeaseId(lease),
        lease_ms: 10_000,
    };
    let register = Command::Register {
        hash,
        expires_at_unix_ms: parsed.body().expires_at_unix_ms,
    };
    let a = propose(&mut ledger, vec![register.clone(), begin(&alice, 1)]);
    let b = propose(&mut ledger, vec![register, begin(&bob, 2)]);
    step(
        4,
        &format!("alice and bob present the same token: alice {a:?}, bob {b:?}"),
    );
    let consume = |key: &SecretKey, lease| Command::Consume {
        hash,
        presenter: PresenterId::of(&key.public()),
        lease_id: LeaseId(lease),
        member: MemberSpec {
            node_key: key.public(),
            role: Role::Member,
            addrs: Addrs::new(),
        },
    };
    let ca = propose(&mut ledger, vec![consume(&alice, 1)]);
    let cb = propose(&mut ledger, vec![consume(&bob, 2)]);
    step(5, &format!("consume: alice {ca:?}, bob {cb:?}"));
    let replay = propose(&mut ledger, vec![consume(&alice, 1)]);
    step(6, &format!("alice replays after a lost reply: {replay:?}"));
    let admitted = matches!(ca[0], Outcome::Consumed { .. });
    let refused = cb[0].refusal().is_some();
    println!("\nsummary");
    println!(
        "  {:<34} {}",
        "token admits exactly one node",
        admitted && refused
    );
    println!("  {:<34} {}", "members", ledger.members().count());
    println!("  {:<34} {}", "ledger digest", ledger.digest().short());
    println!(
        "  {:<34} {:.2} ms",
        "total",
        started.elapsed().as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
