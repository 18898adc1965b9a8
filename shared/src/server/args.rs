//! The command-line options every service takes.

use std::net::SocketAddr;

use super::mesh::MeshArgs;
use crate::limits::Limits;
use crate::tls::ServerTlsArgs;

/// Options every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "FLOWMESH_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Request and connection limits.
    #[command(flatten)]
    pub limits: Limits,
    /// The mesh token: required from callers by executors, sent by the gateway.
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// HTTPS.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}
