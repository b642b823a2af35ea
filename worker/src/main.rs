#[tokio::main]
async fn main() -> anyhow::Result<()> {
    provisioner_worker::main_entry().await
}
