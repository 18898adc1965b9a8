//! Start-up of a service binary: the `main` every `flowmesh-*` service shares ([`main`], or the
//! whole binary with [`service_main!`](crate::service_main) and
//! [`executor_main!`](crate::executor_main)), and the serving of an executor service's routes
//! ([`serve`]).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::Context as _;
use axum::Router;
use clap::FromArgMatches as _;

use crate::logging::{self, LogArgs};
use crate::server::{
    bind, check_with, require_mesh_token, serve as serve_on, shutdown_signal, warn_if_exposed,
    ServeArgs, CHECK_WITH_FLAG,
};
use crate::{telemetry, trace};

/// What a service's `run` serves until: resolves on Ctrl-C or SIGTERM.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The whole `main` of the binary `flowmesh-{name}`: logs (`--log-format`, added to the options
/// of `C`), then the command line `C`, then
/// traces, then `run` until Ctrl-C or SIGTERM. Traces are flushed before the process exits; an
/// error is printed as `flowmesh-{name}: {error:#}` and the exit code is a failure.
///
/// Started as `flowmesh-{name} --flowmesh-check-with` (hidden: [`CHECK_WITH_FLAG`]), it starts
/// nothing: it reads a Flow's `with:` settings as a JSON object on stdin and prints on stdout
/// what its flags make of them ([`check_with`]), for `flowmesh validate`.
pub async fn main<C, F, Fut>(name: &str, run: F) -> ExitCode
where
    C: clap::Parser,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // `flowmesh up` and `flowmesh validate` ask the binary to check a Flow's `with:` settings
    // against its own flags, before logging or anything else starts.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == CHECK_WITH_FLAG)
    {
        return print_with_check(&<LogArgs as clap::Args>::augment_args(C::command()));
    }
    // `--log-format` is added to the service's own options, so that logs start before those
    // are read.
    let command = <LogArgs as clap::Args>::augment_args(C::command());
    let matches = command.get_matches();
    let log = LogArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init(log.log_format);
    let config =
        C::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut C::command()).exit());
    let traces = trace::init_traces(name);
    let result = run(config, Box::pin(shutdown_signal())).await;
    traces.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowmesh-{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads `with:` settings (a JSON object) on stdin and prints [`check_with`]'s answer.
fn print_with_check(command: &clap::Command) -> ExitCode {
    let mut input = String::new();
    let read = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input);
    let settings = read.map_err(|e| e.to_string()).and_then(|_| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&input)
            .map_err(|e| e.to_string())
    });
    match settings {
        Ok(settings) => {
            println!("{}", check_with(command, &settings));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{CHECK_WITH_FLAG}: stdin is not a JSON object of settings: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `run` of an executor service: takes the routes `app` built (its error is the
/// configuration's), reads the mesh token and the TLS configuration, then binds `--listen`
/// (printing the `listening on` line) and serves until `shutdown` resolves. The caller builds
/// before this binds, so that a bad configuration never prints a `listening on` line.
///
/// With a mesh token (`FLOWMESH_MESH_TOKEN` or `--mesh-token-file`, re-read on SIGHUP) every
/// route but `/livez` and `/readyz` needs it ([`require_mesh_token`]); without one, a service
/// listening on a non-loopback address warns that anyone who reaches it can call it.
///
/// `service` is the service's name as its metrics and logs label it (`SERVICE` of its library).
pub async fn serve(
    service: &'static str,
    args: &ServeArgs,
    app: anyhow::Result<Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app.context("invalid configuration")?;
    let tokens = args.mesh.tokens().context("invalid mesh token")?;
    let tls = args.tls.acceptor().context("invalid TLS configuration")?;
    let app = match &tokens {
        Some(tokens) => {
            tokens.reload_on_sighup();
            // Tracked outside the token check too: its 401s are counted and logged.
            telemetry::tracked(
                service,
                app.layer(require_mesh_token(service, tokens.clone())),
            )
        }
        None => app,
    };
    let addr = args.listen;
    let listener = bind(service, addr, tls.is_some())
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    if tokens.is_none() {
        warn_if_exposed(service, listener.local_addr()?, "a mesh token");
    }
    serve_on(listener, app, &args.limits, tls, shutdown).await?;
    Ok(())
}

/// The binary of a service: `$allocator` as the global allocator (the services use
/// `mimalloc::MiMalloc`: every request allocates many small, short-lived buffers, and with the
/// system allocator malloc and free took about 12% of the gateway's CPU under load), and a `main`
/// that is [`main`] of `$name`, the command line `$config` and `$run`
/// (`async fn(config, shutdown)`). The calling crate depends on `tokio`.
#[macro_export]
macro_rules! service_main {
    ($name:expr, $config:ty, $run:expr, $allocator:path) => {
        #[global_allocator]
        static GLOBAL: $allocator = $allocator;

        #[tokio::main]
        async fn main() -> std::process::ExitCode {
            $crate::service::main::<$config, _, _>($name, $run).await
        }
    };
}

/// The binary of the executor service whose library is `$lib`: [`service_main!`] with the
/// library's `SERVICE` name and `Config`, serving the routes of its `app(&Config)` with
/// [`serve`], and `$allocator`.
///
/// [`service_main!`]: crate::service_main
#[macro_export]
macro_rules! executor_main {
    ($lib:ident, $allocator:path) => {
        $crate::service_main!(
            $lib::SERVICE,
            $lib::Config,
            |config: $lib::Config, shutdown| async move {
                let app = $lib::app(&config);
                $crate::service::serve($lib::SERVICE, &config.serve, app, shutdown).await
            },
            $allocator
        );
    };
}
