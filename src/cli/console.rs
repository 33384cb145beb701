//! `paysync console`: the operator console on its own listener
//! (`console.listen`), reading the group's state from Kafka and delivering
//! nothing; and `--hash-password`, which makes a users file's hash.

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;

use super::args::ConsoleArgs;
use super::exit::{EXIT_USAGE, failed, load_settings};
use crate::admin::AdminServer;
use crate::console::Console;

/// How the console is served.
enum Served {
    Http(AdminServer),
    Https(tokio::task::JoinHandle<()>),
}

pub(super) async fn console(args: ConsoleArgs) -> ExitCode {
    if args.hash_password {
        let mut password = String::new();
        if let Err(error) = std::io::stdin().read_to_string(&mut password) {
            eprintln!("paysync console: cannot read the password on stdin: {error}");
            return ExitCode::FAILURE;
        }
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            eprintln!("paysync console: give the password on stdin");
            return ExitCode::from(EXIT_USAGE);
        }
        println!("{}", crate::console::auth::hash_password(password));
        return ExitCode::SUCCESS;
    }
    let Some(config) = args.config else {
        return ExitCode::from(EXIT_USAGE);
    };
    let settings = match load_settings(&config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    let listen: SocketAddr = settings
        .console
        .listen
        .parse()
        .expect("validated in Settings::validate");
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("paysync console: cannot listen on console.listen {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let console = match Console::open(&settings, None).await {
        Ok(console) => console,
        Err(error) => return failed("console", &error.into()),
    };
    let router = crate::console::router(&console);
    let address = listener.local_addr().ok();
    let served = match (
        &settings.console.tls_cert_file,
        &settings.console.tls_key_file,
    ) {
        (Some(cert), Some(key)) => match crate::console::tls::server_config(cert, key) {
            Ok(tls) => Served::Https(tokio::spawn(crate::console::tls::serve(
                listener, router, tls,
            ))),
            Err(error) => return failed("console", &error.into()),
        },
        _ => match AdminServer::serve_router(listener, router) {
            Ok(server) => Served::Http(server),
            Err(error) => return failed("console", &error.into()),
        },
    };
    let scheme = match served {
        Served::Https(_) => "https",
        Served::Http(_) => "http",
    };
    let shown = address.map_or_else(|| listen.to_string(), |a| a.to_string());
    println!(
        "paysync console: serving {scheme}://{shown}{}",
        crate::console::views::BASE
    );
    tracing::info!(address = %shown, scheme, "The console is served.");
    crate::shutdown::signal().await;
    match served {
        Served::Http(server) => server.stop().await,
        Served::Https(task) => task.abort(),
    }
    let _ = tokio::task::spawn_blocking(move || console.close()).await;
    ExitCode::SUCCESS
}
