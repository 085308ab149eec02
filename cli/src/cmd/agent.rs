//! `ballast agent --config FILE [--stdin-socket]`: runs this host's agent until SIGINT or
//! SIGTERM. A configuration that cannot be used is reported with its file, line and
//! field, and the command exits with status 1.
//!
//! With `--stdin-socket` the agent takes its QUIC socket (UDP, already bound to
//! `node.listen`) from standard input instead of binding it, the way inetd and systemd
//! (`StandardInput=socket`) hand a socket over; a launcher that holds the port (the
//! local cluster of `ballast demo`, the chaos harness, the tests) never releases it.

use anyhow::Context;
use ballast_node::agent::run_agent;
use ballast_node::config::AgentConfig;
use std::path::PathBuf;

/// Arguments of `ballast agent`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's configuration file (TOML).
    #[arg(long, env = "BALLAST_CONFIG")]
    config: PathBuf,
    /// Take the QUIC socket (UDP, bound to `node.listen`) from standard input instead
    /// of binding it.
    #[arg(long)]
    stdin_socket: bool,
}

/// Runs the agent until it is stopped.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(&args.config)
        .with_context(|| format!("bad configuration {}", args.config.display()))?;
    let socket = if args.stdin_socket {
        Some(take_stdin_socket()?)
    } else {
        None
    };
    crate::logging::init(Some("info"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        run_agent(cfg, socket, stop_signal())
            .await
            .context("the agent could not start")
    })
}

/// The UDP socket on standard input; standard input then reads `/dev/null`, so that no
/// process the agent starts inherits the socket.
fn take_stdin_socket() -> anyhow::Result<std::net::UdpSocket> {
    use rustix::net::SocketType;
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("--stdin-socket: cannot read standard input")?;
    match rustix::net::sockopt::socket_type(&fd) {
        Ok(SocketType::DGRAM) => {}
        Ok(_) => anyhow::bail!("--stdin-socket: standard input is a socket, but not a UDP one"),
        Err(e) => anyhow::bail!(
            "--stdin-socket: standard input is not a socket ({e}); start the agent with its bound UDP socket as standard input, or leave the flag out to bind node.listen"
        ),
    }
    let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("--stdin-socket: replacing standard input")?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop signal received");
}
