//! `connectors`: one binary, one subcommand per component.

mod commands;

use clap::Parser;

// NB: admission and proxying allocate many small JSON values and buffers;
// mimalloc measured markedly faster than the system allocator for them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // NB: rustls must use ring; several dependencies would otherwise pick
    // a process default at first use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = commands::Cli::parse();
    commands::init_logging(cli.log_format, cli.verbose);
    match commands::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
