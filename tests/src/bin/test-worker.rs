//! The worker binary, built inside the test package so end-to-end tests can run it as a child
//! process (`CARGO_BIN_EXE_test-worker`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    provisioner_worker::main_entry().await
}
