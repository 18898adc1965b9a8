//! Serving a service: the common command-line options ([`ServeArgs`]), the executor protocol's
//! routes ([`Executor`], [`executor_router`]), the routes every service shares ([`shed_beyond`],
//! the JSON fallbacks), a serve loop with connection limits ([`serve`]), and the shutdown signal.
//!
//! Every service holds under abusive traffic the same way: request limits ([`Limits`]) are
//! checked before any work, requests beyond `--max-concurrent-requests` are shed at once with
//! 429 and `Retry-After` ([`shed_beyond`]), a connection that does not send its headers within
//! `--header-timeout-secs` (or sits idle that long between requests) is closed by hyper, at most
//! `--max-connections` are open at once, and an executor stops a call whose deadline
//! ([`crate::Deadline`]) has passed.
//!
//! Every service prints `NAME listening on http://ADDR` (`https://` with `--tls-cert`) as its
//! first line on stdout, which is how the launcher learns the port of a service it started on
//! port 0.
//!
//! Executors refuse calls without the mesh token when one is set ([`require_mesh_token`],
//! [`MeshArgs`]); every service serves HTTPS with [`ServerTlsArgs`], mutual TLS with
//! `--tls-client-ca`. Every request carries its peer's address as
//! `axum::extract::ConnectInfo<SocketAddr>` in its extensions.

mod args;
mod executor;
mod listen;
mod mesh;
mod routes;
mod signal;

pub use crate::limits::Limits;
pub use crate::tls::ServerTlsArgs;
pub use args::{
    check_with, edit_distance, nearest, parse_listen, settings_to_flags, ServeArgs, CHECK_WITH_FLAG,
};
pub use executor::{executor_router, stateful_executor_router, Executor};
pub use listen::{bind, bind_and_serve, serve, warn_if_exposed};
pub use mesh::{
    bearer_token, require_mesh_token, MeshArgs, MeshGuard, MeshLayer, MESH_TOKEN_ENV,
    MESH_TOKEN_FILE_ENV,
};
pub use routes::{
    method_not_allowed, service_router, shed_beyond, shed_with, unknown_route, ShedLayer,
};
pub use signal::shutdown_signal;
