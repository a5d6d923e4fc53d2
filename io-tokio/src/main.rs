//! `portcullis`: the operator's command line (see [`portcullis_io_tokio::app`]).

fn main() -> std::process::ExitCode {
    portcullis_io_tokio::app::main()
}
