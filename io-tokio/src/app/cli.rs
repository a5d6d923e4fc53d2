//! The networked commands: running a node (`node run`, `node join`) and talking to a running
//! node through its control socket (everything else).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;

use crate::config::NodeConfig;
use crate::control::{self, ControlRequest, ControlResponse};
use crate::driver::{self, DriverError, NodeOptions};
use crate::secrets;
use portcullis_core::crypto::{from_hex, to_hex};
use portcullis_core::identity::AdmissionSecrets;
use portcullis_core::ledger::MemberSpec;
use portcullis_core::token::{JoinToken, Role};
use rand_core::{OsRng, RngCore};

use super::{CliError, Cmd, MemberCmd, NamespaceCmd, NodeCmd, TokenCmd};

/// Runs a networked command on a fresh tokio runtime.
pub fn run_async(cmd: Cmd) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(dispatch(cmd))
}

async fn dispatch(cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Node(NodeCmd::Run { config }) => {
            init_tracing();
            let config = NodeConfig::load(&config)?;
            run_node(config, None).await
        }
        Cmd::Node(NodeCmd::Join {
            token,
            seeds,
            config,
            data_dir,
            listen,
            exit_after_join,
        }) => {
            init_tracing();
            // Refuse a token that does not even parse before starting anything.
            let token = JoinToken::parse(&token)?;
            let config = match (config, data_dir) {
                (Some(path), _) => NodeConfig::load(&path)?,
                (None, Some(dir)) => NodeConfig::minimal(listen, dir),
                (None, None) => {
                    return Err(CliError::Usage("give --config or --data-dir".into()));
                }
            };
            let seeds = if seeds.is_empty() {
                config.seeds.clone()
            } else {
                seeds
            };
            if seeds.is_empty() {
                return Err(CliError::Usage(
                    "no seed: give --seed or `seeds` in the config".into(),
                ));
            }
            if seeds.len() > crate::driver::MAX_SEEDS {
                return Err(CliError::Usage(format!(
                    "{} seeds given, at most {} are allowed",
                    seeds.len(),
                    crate::driver::MAX_SEEDS
                )));
            }
            run_node(
                config,
                Some(JoinPlan {
                    token,
                    seeds,
                    exit_after_join,
                }),
            )
            .await
        }
        Cmd::Status { data_dir } => {
            let ControlResponse::Status(s) = ask(&data_dir, ControlRequest::Status).await? else {
                return Err(unexpected());
            };
            println!(
                "node key     {}",
                s.node_key.get(..16).unwrap_or(&s.node_key)
            );
            println!("listen       {}", s.listen);
            println!(
                "member id    {}",
                s.member_id.map_or("-".into(), |m| m.to_string())
            );
            println!(
                "leader       {} (term {})",
                s.leader.map_or("-".into(), |m| m.to_string()),
                s.term
            );
            println!("voters       {:?}", s.voters);
            println!("learners     {:?}", s.learners);
            println!("peers        {}", s.peers_connected);
            println!("admitted     {}", s.admissions_granted);
            for (reason, n) in &s.admissions_rejected {
                println!("rejected     {reason}: {n}");
            }
            if let Some(fatal) = s.fatal {
                println!("FATAL        {fatal}");
            }
            Ok(())
        }
        Cmd::Member(MemberCmd::List { data_dir }) => {
            let ControlResponse::Status(s) = ask(&data_dir, ControlRequest::Status).await? else {
                return Err(unexpected());
            };
            for id in &s.voters {
                let leader = if Some(*id) == s.leader {
                    " (leader)"
                } else {
                    ""
                };
                println!("{id}\tvoter{leader}");
            }
            for id in &s.learners {
                println!("{id}\tlearner");
            }
            Ok(())
        }
        Cmd::Member(MemberCmd::Promote {
            data_dir,
            member_id,
        }) => done(ask(&data_dir, ControlRequest::PromoteMember { member_id }).await?),
        Cmd::Token(TokenCmd::List { data_dir }) => {
            let ControlResponse::Admissions(lines) =
                ask(&data_dir, ControlRequest::Admissions).await?
            else {
                return Err(unexpected());
            };
            println!("token\tpresenter\tresult\tlog index\tunix ms\telapsed ms");
            for l in lines {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    l.token, l.presenter, l.result, l.log_index, l.at_unix_ms, l.elapsed_ms
                );
            }
            Ok(())
        }
        Cmd::Token(TokenCmd::Revoke { data_dir, token }) => {
            let token = JoinToken::parse(&token)?;
            done(
                ask(
                    &data_dir,
                    ControlRequest::RevokeToken {
                        hash: token.hash().0.0,
                        expires_at_unix_ms: token.body().expires_at_unix_ms,
                    },
                )
                .await?,
            )
        }
        Cmd::Namespace(NamespaceCmd::Create { data_dir }) => {
            let mut salt = [0u8; 16];
            OsRng.fill_bytes(&mut salt);
            match ask(&data_dir, ControlRequest::CreateNamespace { salt }).await? {
                ControlResponse::NamespaceCreated { namespace } => {
                    println!("{}", to_hex(&namespace));
                    Ok(())
                }
                other => done(other),
            }
        }
        Cmd::Namespace(NamespaceCmd::Invite {
            data_dir,
            namespace,
            ttl,
            single_use,
        }) => {
            let namespace: [u8; 32] = from_hex(&namespace)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| CliError::Usage("--namespace must be 64 hex digits".into()))?;
            match ask(
                &data_dir,
                ControlRequest::Invite {
                    namespace,
                    ttl_ms: ttl,
                    reusable: !single_use,
                },
            )
            .await?
            {
                ControlResponse::Invitation(bytes) => {
                    println!("{}", to_hex(&bytes));
                    Ok(())
                }
                other => done(other),
            }
        }
        Cmd::Namespace(NamespaceCmd::Join {
            data_dir,
            invitation,
            peers,
            deadline,
        }) => {
            let invitation = from_hex(invitation.trim())
                .ok_or_else(|| CliError::Usage("--invitation must be hex".into()))?;
            match ask(
                &data_dir,
                ControlRequest::JoinNamespace {
                    invitation,
                    peers: peers.iter().map(ToString::to_string).collect(),
                    deadline_ms: deadline,
                },
            )
            .await?
            {
                ControlResponse::NamespaceReady {
                    members,
                    acked_by,
                    elapsed_ms,
                } => {
                    println!("ready: {members} members, acked by {acked_by}, in {elapsed_ms} ms");
                    Ok(())
                }
                other => done(other),
            }
        }
        Cmd::Namespace(NamespaceCmd::Members {
            data_dir,
            namespace,
        }) => {
            let namespace: [u8; 32] = from_hex(&namespace)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| CliError::Usage("--namespace must be 64 hex digits".into()))?;
            match ask(&data_dir, ControlRequest::NamespaceMembers { namespace }).await? {
                ControlResponse::NamespaceMembers {
                    member,
                    members,
                    admins,
                    applied_through,
                } => {
                    println!(
                        "{} members, {} admins, {applied_through} ops applied; this node is {}a member",
                        members.len(),
                        admins.len(),
                        if member { "" } else { "not " }
                    );
                    for key in &members {
                        let admin = if admins.contains(key) { " (admin)" } else { "" };
                        println!("{key}{admin}");
                    }
                    Ok(())
                }
                other => done(other),
            }
        }
        Cmd::Demo => {
            init_tracing();
            let stdout = std::io::stdout();
            crate::demo::run_demo(stdout.lock())
                .await
                .map(|_| ())
                .map_err(CliError::Demo)
        }
        Cmd::Cluster(_) | Cmd::Token(_) => Err(CliError::Usage("offline command".into())),
    }
}

fn unexpected() -> CliError {
    CliError::Refused("unexpected answer from the node".into())
}

async fn ask(data_dir: &Path, request: ControlRequest) -> Result<ControlResponse, CliError> {
    let response = control::request(data_dir, &request).await?;
    if let ControlResponse::Failed { kind, message } = response {
        return Err(CliError::Refused(format!("{kind:?}: {message}")));
    }
    Ok(response)
}

fn done(response: ControlResponse) -> Result<(), CliError> {
    match response {
        ControlResponse::Done(text) => {
            println!("{text}");
            Ok(())
        }
        _ => Err(unexpected()),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal (https://no-color.org opts out): logs piped to a
    // file or another program carry no escape codes.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Logs go to stderr: stdout carries the lines scripts read (`listening on`, tokens).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

struct JoinPlan {
    token: JoinToken,
    /// Tried in turn (at most `MAX_SEEDS`).
    seeds: Vec<SocketAddr>,
    exit_after_join: bool,
}

/// Starts the node of `config`, serves its control socket (and metrics), optionally joins,
/// and runs until Ctrl-C or SIGTERM, or until the node stops on a failure.
async fn run_node(config: NodeConfig, join: Option<JoinPlan>) -> Result<(), CliError> {
    let core = config.core_config().map_err(|source| {
        CliError::Config(crate::config::ConfigFileError::Invalid {
            path: config.data_dir.clone(),
            source,
        })
    })?;
    let admission = match &config.secrets_dir {
        Some(dir) => {
            let s = secrets::load(dir)?;
            Some(AdmissionSecrets {
                cluster_key: s.cluster_key,
                join_secret: s.join_secret,
            })
        }
        None => None,
    };
    let mut listen = config.listen;
    let mut founders = Vec::new();
    if config.bootstrap {
        if admission.is_none() {
            return Err(CliError::Usage(
                "bootstrap = true needs secrets_dir (the cluster key and join secret)".into(),
            ));
        }
        // A founder's address is in the founding membership, so it must be known before the
        // node starts: pick the free port now if the config says 0.
        if listen.port() == 0 {
            listen = std::net::UdpSocket::bind(listen)
                .and_then(|s| s.local_addr())
                .map_err(|e| CliError::Usage(format!("cannot bind {listen}: {e}")))?;
        }
        let advertise = config.advertise.unwrap_or(listen);
        founders.push(MemberSpec {
            node_key: driver::node_public_key(&config.data_dir)?,
            role: Role::Member,
            addrs: driver::addrs_of(advertise)?,
        });
    }
    let mut options = NodeOptions::new(listen, &config.data_dir);
    options.advertise = config.advertise;
    options.config = core;
    options.secrets = admission;
    options.founders = founders;
    options.recording = config
        .record_dir
        .as_ref()
        .map(|dir| crate::recording::RecordingWriterConfig::new(dir, "life"));
    let node = driver::start(options).await?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", node.addr());
        let _ = writeln!(out, "node key {}", node.node_key().hash().to_hex());
        let _ = out.flush();
    }
    let _control = match control::serve(node.clone(), &config.data_dir) {
        Ok(server) => server,
        Err(e) => {
            // Its storage thread finishes what it was handed before the process exits.
            let _ = node.shutdown().await;
            return Err(e.into());
        }
    };
    let _metrics = match config.metrics_listen {
        Some(addr) => {
            let server = match crate::metrics::serve(node.clone(), addr).await {
                Ok(server) => server,
                Err(e) => {
                    let _ = node.shutdown().await;
                    return Err(CliError::Usage(format!("metrics endpoint {addr}: {e}")));
                }
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "metrics on http://{}/metrics", server.addr);
            let _ = out.flush();
            Some(server)
        }
        None => None,
    };
    if let Some(plan) = join {
        let Ok(status) = node.status().await else {
            return Err(DriverError::Died(node.stopped().await).into());
        };
        let result = match status.member_id {
            Some(member) => Ok(member),
            None => node.join_cluster_via(plan.token, &plan.seeds).await,
        };
        match result {
            Ok(member) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "admitted as member {}", member.0);
                let _ = out.flush();
            }
            Err(e) => {
                let _ = node.shutdown().await;
                return Err(e.into());
            }
        }
        if plan.exit_after_join {
            return Ok(node.shutdown().await?);
        }
    }
    run_until_stopped(node, wait_for_stop()).await
}

/// Runs until `stop` (exit 0) or until the node stops on its own: a failed storage commit or
/// the core's fatal error is `DriverError::Died` (exit 6), never a silent success.
async fn run_until_stopped(
    node: driver::NodeHandle,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    tokio::select! {
        () = stop => tracing::info!("stopping"),
        reason = node.stopped() => tracing::error!(%reason, "the node stopped"),
    }
    // Gives the node's failure, whichever came first.
    Ok(node.shutdown().await?)
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::StopReason;
    use crate::driver::tests::founder_options;

    /// A founder whose founding state's commit fails: it dies at once.
    async fn dying_founder(dir: &std::path::Path) -> driver::NodeHandle {
        let opts = founder_options(dir);
        opts.faults
            .fail_commits
            .store(true, std::sync::atomic::Ordering::Relaxed);
        driver::start(opts).await.expect("the founder starts")
    }

    #[tokio::test]
    async fn a_node_that_dies_ends_the_run_with_exit_6() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = dying_founder(dir.path()).await;
        // No signal ever comes: only the node's death ends the run.
        let err = run_until_stopped(node, std::future::pending())
            .await
            .expect_err("a dead node is a failure");
        assert!(
            matches!(
                err,
                CliError::Driver(DriverError::Died(StopReason::Storage(_)))
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 6);
        assert!(err.to_string().contains("storage"), "{err}");
    }

    #[tokio::test]
    async fn a_node_that_died_before_the_signal_still_exits_6() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = dying_founder(dir.path()).await;
        node.stopped().await;
        // SIGTERM after the death: the old code answered it with exit 0.
        let err = run_until_stopped(node, std::future::ready(()))
            .await
            .expect_err("a dead node is a failure");
        assert_eq!(err.exit_code(), 6, "{err}");
    }

    #[tokio::test]
    async fn a_stop_signal_to_a_healthy_node_exits_0() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = driver::start(founder_options(dir.path()))
            .await
            .expect("the founder starts");
        run_until_stopped(node, std::future::ready(()))
            .await
            .expect("a clean stop");
    }
}
