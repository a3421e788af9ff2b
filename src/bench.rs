use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn main(_args: BenchArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
