//! Replicated write throughput: CreateSandbox against a fresh 3-node berth
//! cluster at each concurrency level and, with `--against-etcd`, Put of the
//! same key and payload size against a fresh 3-member etcd cluster in the
//! same run, driven by the same client library (tonic) and load driver.
//! Both acknowledge a write only once it is synced on a majority.

use std::time::Duration;

use berth_proto::v1::{CreateSandboxRequest, SandboxSpec};
use berth_testkit::TestCluster;
use prost::Message;

use crate::etcd::{self, pb::PutRequest, EtcdCluster};
use crate::load::{drive, Level};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub levels: Vec<usize>,
    pub secs: f64,
    pub against_etcd: bool,
}

fn create_request(name: String) -> CreateSandboxRequest {
    CreateSandboxRequest {
        name,
        spec: Some(SandboxSpec {
            image: "localhost/berth-demo:v1".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn berth_level(concurrency: usize, secs: f64) -> anyhow::Result<Level> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let client = cluster.sandboxes(leader).await?;
    let level = drive(concurrency, secs, move |seq| {
        let mut client = client.clone();
        async move {
            client
                .create_sandbox(create_request(format!("w{seq}")))
                .await?;
            Ok(())
        }
    })
    .await;
    if level.is_err() {
        eprintln!("{}", cluster.logs());
    }
    level
}

async fn etcd_level(
    binary: &std::path::Path,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<Level> {
    let cluster = EtcdCluster::start(binary).await?;
    let kv = cluster.leader_kv(Duration::from_secs(20)).await?;
    // The same payload size as berth's create request for the same name.
    let size = create_request("w0".to_string()).encoded_len();
    drive(concurrency, secs, move |seq| {
        let mut kv = kv.clone();
        async move {
            kv.put(PutRequest {
                key: format!("w{seq}").into_bytes(),
                value: vec![b'x'; size],
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    })
    .await
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let etcd_binary = match (options.against_etcd, etcd::binary()) {
        (true, None) => {
            println!("writes: etcd is not installed (apt-get install etcd-server); berth only");
            None
        }
        (true, Some(b)) => Some(b),
        (false, _) => None,
    };
    println!(
        "writes: 3 nodes each, fresh clusters per level, {}s per level, fsync on",
        options.secs
    );
    let mut rows = Vec::new();
    for &concurrency in &options.levels {
        let berth = berth_level(concurrency, options.secs).await?;
        let etcd = match &etcd_binary {
            Some(b) => Some(etcd_level(b, concurrency, options.secs).await?),
            None => None,
        };
        println!(
            "writes: concurrency {concurrency}: berth {:.0}/s ({} writes) p99 {}{}",
            berth.per_sec,
            berth.ops,
            ms(berth.p99),
            etcd.map(|e| format!(
                "; etcd {:.0}/s ({} puts) p99 {}",
                e.per_sec,
                e.ops,
                ms(e.p99)
            ))
            .unwrap_or_default()
        );
        rows.push((berth, etcd));
    }
    println!();
    println!("| concurrency | berth creates/s | etcd puts/s | ratio | berth p50 | berth p99 | etcd p50 | etcd p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (b, e) in &rows {
        let (eps, ratio, ep50, ep99) = match e {
            Some(e) => (
                format!("{:.0}", e.per_sec),
                format!("{:.2}x", b.per_sec / e.per_sec),
                ms(e.p50),
                ms(e.p99),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {:.0} | {eps} | {ratio} | {} | {} | {ep50} | {ep99} |",
            b.concurrency,
            b.per_sec,
            ms(b.p50),
            ms(b.p99)
        );
    }
    Ok(())
}
