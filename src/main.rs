use clap::Parser;

fn main() -> std::process::ExitCode {
    jma_poller::cli::main(jma_poller::cli::Cli::parse())
}
