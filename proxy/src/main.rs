//! `tenant-proxy` binary: parse arguments and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

// The proxy allocates and frees small buffers, maps and strings on every request from every
// worker thread; glibc's malloc and free were about a tenth of the proxy's CPU (perf, route
// row), and mimalloc cut the proxy's CPU per request by about 7 % (loadtest/README.md). Built
// with `no_thp`: with transparent huge pages on, its eagerly committed arena made the idle
// proxy 15 MB larger (24 → 40 MB; 27 MB without them).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = tenant_proxy::cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            // An error may quote what someone else wrote (a server's answer in a parse error, a
            // file's content): shown escaped (see `tenant_proxy::shown`).
            eprintln!(
                "error: {}",
                tenant_proxy::shown::lines_shown(&format!("{e:#}"))
            );
            ExitCode::from(1)
        }
    }
}
