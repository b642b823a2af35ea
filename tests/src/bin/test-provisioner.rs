//! The `provisioner` command line, built inside the test package so end-to-end tests can run
//! the real program as a child process (`CARGO_BIN_EXE_test-provisioner`).

fn main() -> std::process::ExitCode {
    provisioner_cli::main()
}
