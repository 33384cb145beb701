//! The `paysync` binary: everything lives in the library; see [`paysync::cli`].

fn main() -> std::process::ExitCode {
    paysync::cli::main()
}
