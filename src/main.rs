//! The `paysync` binary: everything lives in the library; see [`paysync::cli`].
//!
//! The allocator is mimalloc: the hot path allocates small, short-lived
//! buffers for every event (message copies, the signed request, the HTTP
//! exchange), and with glibc's malloc a fifth of paysync's CPU went to
//! allocating and freeing them (see `docs/performance.md`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    paysync::cli::main()
}
