//! The `provisioner` command line; everything is in the library.

fn main() -> std::process::ExitCode {
    provisioner_cli::main()
}
