//! Resource limits handed to every container.
//!
//! Engines default to raising `nofile`/`nproc` above what the runtime may
//! set, and without CAP_SYS_RESOURCE the runtime then fails ("setrlimit:
//! Operation not permitted"). The runtime inherits the engine's limits, so
//! we pass explicit limits no higher than both this process's and (when the
//! engine is a local process we can see) the engine's. Read from `/proc`
//! (no unsafe code).

use std::path::Path;

use bollard::models::ResourcesUlimits;

/// Docker/Podman spelling of "unlimited".
const UNLIMITED: i64 = -1;
const ROWS: [(&str, &str); 2] = [("Max open files", "nofile"), ("Max processes", "nproc")];

/// `nofile` and `nproc`: this process's soft/hard values, lowered to those
/// of the processes listening on `engine_socket` (empty when unreadable:
/// the engine defaults then apply).
pub fn container_ulimits(engine_socket: Option<&Path>) -> Vec<ResourcesUlimits> {
    let own = match std::fs::read_to_string("/proc/self/limits") {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/limits; using engine default ulimits");
            return Vec::new();
        }
    };
    let engine_pids = engine_socket.map(listeners).unwrap_or_default();
    engine_pids.iter().fold(own, |acc, pid| {
        match std::fs::read_to_string(format!("/proc/{pid}/limits")) {
            Ok(text) => lower(acc, &parse(&text)),
            Err(_) => acc,
        }
    })
}

fn parse(text: &str) -> Vec<ResourcesUlimits> {
    ROWS.into_iter()
        .filter_map(|(row, name)| {
            let rest = text.lines().find_map(|l| l.strip_prefix(row))?;
            let mut cols = rest.split_whitespace().map(|v| match v {
                "unlimited" => Some(UNLIMITED),
                v => v.parse::<i64>().ok(),
            });
            let (soft, hard) = (cols.next()??, cols.next()??);
            Some(ResourcesUlimits {
                name: Some(name.to_string()),
                soft: Some(soft),
                hard: Some(hard),
            })
        })
        .collect()
}

/// Element-wise minimum (by name) of two limit sets; soft never above hard.
fn lower(mut acc: Vec<ResourcesUlimits>, other: &[ResourcesUlimits]) -> Vec<ResourcesUlimits> {
    for limit in &mut acc {
        if let Some(o) = other.iter().find(|o| o.name == limit.name) {
            limit.hard = min(limit.hard, o.hard);
            limit.soft = min(min(limit.soft, o.soft), limit.hard);
        }
    }
    acc
}

/// Minimum where `None` is unknown and `UNLIMITED` is the largest value.
fn min(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, x) | (x, None) | (Some(UNLIMITED), x) | (x, Some(UNLIMITED)) => x,
        (Some(a), Some(b)) => Some(a.min(b)),
    }
}

/// Pids holding a listening unix socket bound at `path` (root can see all).
fn listeners(path: &Path) -> Vec<u32> {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let path = path.to_string_lossy();
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 8 && cols[7] == path && cols[5] == "01").then(|| cols[6].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|t| targets.iter().any(|s| t.as_os_str() == s.as_str()))
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, soft: i64, hard: i64) -> ResourcesUlimits {
        ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(soft),
            hard: Some(hard),
        }
    }

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max processes             96365                unlimited            processes\n\
                    Max open files            1024                 20000                files\n";
        let got = parse(text);
        assert_eq!(
            got,
            vec![
                limit("nofile", 1024, 20000),
                limit("nproc", 96365, UNLIMITED)
            ]
        );
        assert_eq!(container_ulimits(None).len(), 2);
    }

    #[test]
    fn lowers_to_the_engine_limits() {
        let own = vec![limit("nofile", 1024, 20000), limit("nproc", 96365, 96365)];
        let engine = [limit("nofile", 4096, 20000), limit("nproc", 32768, 32768)];
        assert_eq!(
            lower(own, &engine),
            vec![limit("nofile", 1024, 20000), limit("nproc", 32768, 32768)]
        );
        let own = vec![limit("nproc", UNLIMITED, UNLIMITED)];
        assert_eq!(
            lower(own, &[limit("nproc", 100, 200)]),
            vec![limit("nproc", 100, 200)]
        );
    }
}
