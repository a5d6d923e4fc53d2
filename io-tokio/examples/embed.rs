//! Embedding portcullis: start a node, present a join token, join a namespace, and receive
//! events.
//!
//! A one-node cluster stands in for "the cluster you were given a token for"; everything
//! the application does is the `driver` API.
//!
//! Run: `cargo run -p portcullis-io-tokio --example embed`

use std::net::SocketAddr;
use std::time::Duration;

use portcullis_core::node::{Event, LocalCommand};
use portcullis_io_tokio::demo::{self, LocalCluster};
use portcullis_io_tokio::driver::{self, NodeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The operator's side: a cluster, a token, a namespace with an invitation.
    let cluster = LocalCluster::start(1, LocalCluster::fast_config()).await?;
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let token = cluster.issue_token(600_000);
    let seed = cluster.founders[0].addr();
    let (namespace, invitation) =
        demo::create_namespace_and_invite(&cluster.founders[0], *b"embedding-exampl", 600_000)
            .await?;

    // The application's side.
    let dir = tempfile::tempdir()?;
    let mut opts = NodeOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir.path());
    opts.config = LocalCluster::fast_config();
    let node = driver::start(opts).await?;
    let mut events = node.subscribe();

    let member = node.join_cluster(token, seed).await?;
    println!("admitted as member {}", member.0);

    node.connect_peer(seed).await?;
    node.command(LocalCommand::JoinNamespace {
        invitation,
        deadline_ms: 10_000,
    })
    .await?;
    let ready = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await {
                Ok(Event::NamespaceReady(report)) if report.namespace == namespace => {
                    return Ok(report);
                }
                Ok(Event::NamespaceJoinFailed(failure)) => {
                    return Err(format!("namespace join failed: {:?}", failure.reason));
                }
                Ok(event) => println!("event: {event:?}"),
                Err(e) => return Err(format!("event stream: {e}")),
            }
        }
    })
    .await??;
    println!(
        "namespace {namespace} ready in {} ms, {} members",
        ready.elapsed_ms, ready.members_learned
    );

    node.shutdown().await?;
    cluster.shutdown().await?;
    Ok(())
}
