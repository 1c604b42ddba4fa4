//! `berth volume ...`: workspace volumes kept by `sandbox delete
//! --keep-volume`. Adopt one with `berth sandbox create NAME --volume VOL`.

use berth_proto::v1::{DeleteVolumeRequest, KeptVolume, ListVolumesRequest};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{request_id, Control};
use crate::output::{print_table, Format};
use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Kept volumes: the sandbox they belonged to, their node and size.
    List,
    /// Delete a kept volume for good (its node removes it).
    Delete { volume: String },
}

pub async fn run(control: Control, format: Format, command: VolumeCommand) -> Result<u8, Failure> {
    let mut client = control.sandboxes();
    match command {
        VolumeCommand::List => {
            let list = client
                .list_volumes(ListVolumesRequest {})
                .await?
                .into_inner();
            print_volumes(format, &list.volumes);
        }
        VolumeCommand::Delete { volume } => {
            let kept = client
                .delete_volume(DeleteVolumeRequest {
                    volume,
                    request_id: request_id(),
                })
                .await?
                .into_inner();
            match format {
                Format::Json => println!("{}", volume_json(&kept)),
                Format::Table => println!(
                    "volume {} is being deleted on node {}",
                    kept.volume, kept.node
                ),
            }
        }
    }
    Ok(0)
}

fn volume_json(v: &KeptVolume) -> Value {
    json!({ "volume": v.volume, "node": v.node, "sandbox": v.sandbox, "uid": v.uid,
            "kept_at_unix_ms": v.kept_at_unix_ms, "size_bytes": v.size_bytes,
            "deleting": v.deleting })
}

/// Bytes in a short human unit (1.5 MiB).
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn print_volumes(format: Format, volumes: &[KeptVolume]) {
    match format {
        Format::Json => println!(
            "{}",
            Value::Array(volumes.iter().map(volume_json).collect())
        ),
        Format::Table => {
            let mut rows = vec![["VOLUME", "NODE", "SANDBOX", "UID", "SIZE", "STATUS"]
                .map(String::from)
                .to_vec()];
            for v in volumes {
                rows.push(vec![
                    v.volume.clone(),
                    v.node.clone(),
                    v.sandbox.clone(),
                    v.uid.clone(),
                    v.size_bytes.map_or_else(|| "?".to_string(), human),
                    if v.deleting { "Deleting" } else { "Kept" }.to_string(),
                ]);
            }
            print_table(&rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
