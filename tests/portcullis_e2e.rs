//! `portcullis-e2e`: the `portcullis` command line, built by this crate for its end-to-end
//! tests.
//!
//! Cargo hands the path of a freshly built binary (`CARGO_BIN_EXE_<name>`) only to the tests
//! of the package that defines it. The program is [`portcullis_io_tokio::app::main`], the same
//! function the `portcullis` binary runs, so these processes are `portcullis` processes.

fn main() -> std::process::ExitCode {
    portcullis_io_tokio::app::main()
}
