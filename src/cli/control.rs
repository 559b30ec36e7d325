//! Reaching a running coordinator from the CLI: the `--coordinator` and `--token` options of
//! `cohort status`, `cohort checkpoint` and `cohort rollback --live`, and one request/answer
//! over the wire (role `cli`).

use cohort_checkpoint::CheckpointStore;
use cohort_coordinator::service::control::{self, ControlReply, ControlRequest};
use cohort_wire::{ConnectConfig, DEFAULT_PORT, Role, Secret, TOKEN_ENV};

use crate::cli::failure::Failure;
use crate::cli::tls::TlsArgs;

/// Where the coordinators are and how to prove who we are.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnectArgs {
    /// The coordinators to ask, in order (repeat it, or separate with commas); a standby points
    /// at the leader. Without it: the leader recorded in the store (--store or COHORT_STORE),
    /// else 127.0.0.1:7411.
    #[arg(
        long = "coordinator",
        value_name = "ADDR",
        env = "COHORT_COORDINATOR",
        value_delimiter = ','
    )]
    pub(crate) coordinators: Vec<String>,

    /// The shared token of the coordinators, if they have one.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,

    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

/// [`ConnectArgs`] and an optional store to find the leader in.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CoordinatorArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,

    /// The store, to find the leader's address in its newest epoch record.
    #[arg(long, env = "COHORT_STORE", hide_env_values = true, value_name = "URL")]
    pub(crate) store: Option<String>,
}

impl CoordinatorArgs {
    /// The addresses to try: the given ones, else the store's leader, else the default port.
    pub(crate) async fn addresses(&self) -> anyhow::Result<Vec<String>> {
        let store = match &self.store {
            Some(url) => Some(CheckpointStore::open_read_only(url).await?),
            None => None,
        };
        self.connect.addresses(store.as_ref()).await
    }

    /// Sends `request`, following standbys to the leader.
    pub(crate) async fn ask(
        &self,
        request: ControlRequest,
    ) -> anyhow::Result<(Vec<String>, ControlReply)> {
        let addrs = self.addresses().await?;
        self.connect.ask_at(addrs, request).await
    }
}

impl ConnectArgs {
    /// The addresses to try: the given ones, else the leader recorded in `store`, else the
    /// default port.
    pub(crate) async fn addresses(
        &self,
        store: Option<&CheckpointStore>,
    ) -> anyhow::Result<Vec<String>> {
        if !self.coordinators.is_empty() {
            return Ok(self.coordinators.clone());
        }
        if let Some(store) = store {
            let state = store.newest_epoch_state().await?;
            for problem in crate::cli::store::epoch_problems(state.as_ref()) {
                tracing::warn!("{problem}");
            }
            if let Some(address) = state.and_then(|s| s.record.ok()).and_then(|r| r.address) {
                tracing::debug!(%address, "the store names the leader");
                return Ok(vec![address]);
            }
        }
        Ok(vec![format!("127.0.0.1:{DEFAULT_PORT}")])
    }

    /// The CLI's side of the handshake.
    pub(crate) fn config(&self) -> anyhow::Result<ConnectConfig> {
        let mut config = ConnectConfig::new(Role::Cli, "cohort-cli");
        if let Some(token) = &self.token {
            config.token = Some(Secret::new(token.as_bytes().to_vec()).map_err(|e| {
                Failure::usage(e.to_string()).hint("pass the token the coordinators run with")
            })?);
        }
        config.tls = self.tls.config()?;
        Ok(config)
    }

    /// Sends `request` to the first of `addrs` that answers, following standbys to the leader.
    pub(crate) async fn ask_at(
        &self,
        addrs: Vec<String>,
        request: ControlRequest,
    ) -> anyhow::Result<(Vec<String>, ControlReply)> {
        let config = self.config()?;
        match control::request(&addrs, &config, request).await {
            Ok(reply) => Ok((addrs, reply)),
            Err(e) => Err(Failure::usage(format!(
                "cannot reach a coordinator at {}: {e}",
                addrs.join(", ")
            ))
            .hint("start one with `cohort serve`, or pass --coordinator ADDR (and --token or --tls-* as it runs with)")
            .into()),
        }
    }
}

/// The failure of a request only the leader answers, when the coordinators at `addrs` do not
/// lead and the `leader` they name (if any) could not be reached.
pub(crate) fn not_leading(addrs: &[String], leader: Option<String>) -> Failure {
    Failure::refused(match leader {
        Some(leader) => format!(
            "no coordinator at {} leads, and the leader they name ({leader}) could not be reached",
            addrs.join(", ")
        ),
        None => format!(
            "no coordinator at {} leads right now (a standby may be waiting out the lease)",
            addrs.join(", ")
        ),
    })
    .hint("retry in a moment; `cohort status` shows who leads")
}

/// The failure for an answer the request does not call for.
pub(crate) fn unexpected(reply: &ControlReply) -> Failure {
    Failure::usage(format!(
        "the coordinator gave an unexpected answer: {reply:?}"
    ))
}
