//! The `floyd` binary: parse, run, map the outcome to an exit code. Nothing else.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    floyd::cli::main()
}
