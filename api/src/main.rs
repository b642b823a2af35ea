#[tokio::main]
async fn main() -> anyhow::Result<()> {
    provisioner_api::main_entry().await
}
