//! `connectors`: one binary, one subcommand per component.

mod commands;

use clap::{CommandFactory, FromArgMatches};

// NB: admission and proxying allocate many small JSON values and buffers;
// mimalloc measured markedly faster than the system allocator for them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // NB: rustls must use ring; several dependencies would otherwise pick
    // a process default at first use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let matches = commands::Cli::command().get_matches();
    let cli = commands::Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let client = matches!(cli.command, commands::Command::Doctor(_) | commands::Command::Mutate(_));
    commands::init_logging(cli.log_format, cli.verbose, client);
    match commands::run(cli.command, &matches) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(commands::exit_code(&error))
        }
    }
}
