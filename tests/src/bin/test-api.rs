//! The API binary, built inside the test package so end-to-end tests can run it as a child
//! process (`CARGO_BIN_EXE_test-api`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    provisioner_api::main_entry().await
}
