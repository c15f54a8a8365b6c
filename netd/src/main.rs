//! The `netd` binary: everything is in the library's [`netd::cli`].

fn main() -> std::process::ExitCode {
    netd::cli::main()
}
