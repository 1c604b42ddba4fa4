//! In-memory driver: sandboxes are map entries. For fast tests and
//! benchmarks of the control plane; same idempotent semantics as the
//! container driver (a volume outlives its container and is only dropped by
//! `remove` without `keep_volume`). Images are imaginary: every image is
//! present except those whose name contains [`MISSING_IMAGE_MARKER`], so
//! control-plane tests can simulate a failed pull (in `pull` and `ensure`),
//! and those whose name contains [`CRASHING_IMAGE_MARKER`] start and exit
//! at once with code 1 (a sandbox that crashes on start).
//! Policies are validated (a bad one is `Invalid`) but have no effect.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use berth_proto::agent_v1::{
    exec_output::Out, ContainerState, Ensure, ExecOutput, LogChunk, Observed, Remove,
};

use super::{Driver, DriverError, ExecStream, LogStream};

/// An image whose name contains this cannot be pulled by the memory driver.
pub const MISSING_IMAGE_MARKER: &str = "does-not-exist";

/// A container of an image whose name contains this exits at once (code 1).
pub const CRASHING_IMAGE_MARKER: &str = "crashes-on-start";

/// `ImageNotFound` for simulated missing images.
fn check_image(image: &str) -> Result<(), DriverError> {
    if image.contains(MISSING_IMAGE_MARKER) {
        return Err(DriverError::ImageNotFound {
            image: image.to_string(),
            reason: "manifest unknown (simulated by the memory driver)".to_string(),
        });
    }
    Ok(())
}

#[derive(Debug, Default)]
struct State {
    sandboxes: BTreeMap<String, Observed>,
    /// Volume name -> (sandbox name, uid) it was created for.
    volumes: BTreeMap<String, (String, String)>,
    next_id: u64,
    /// Bumped by every call that may change what `inventory` lists.
    generation: u64,
}

/// A driver that keeps sandboxes in a map.
#[derive(Debug, Default)]
pub struct MemoryDriver {
    state: Mutex<State>,
}

impl MemoryDriver {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running sandboxes: (name, uid, revision) each.
    pub fn running(&self) -> Vec<(String, String, u64)> {
        self.lock()
            .sandboxes
            .values()
            .filter(|o| o.state == ContainerState::Running as i32)
            .map(|o| (o.name.clone(), o.uid.clone(), o.revision))
            .collect()
    }

    /// The volumes this "engine" holds: (volume, sandbox name, owner uid).
    pub fn volumes(&self) -> Vec<(String, String, String)> {
        self.lock()
            .volumes
            .iter()
            .map(|(v, (name, uid))| (v.clone(), name.clone(), uid.clone()))
            .collect()
    }
}

impl State {
    fn tick(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn observed(&self, name: &str, volume: &str) -> Observed {
        match self.sandboxes.get(name) {
            Some(o) => Observed {
                volume_present: self.volumes.contains_key(&o.volume),
                ..o.clone()
            },
            None => Observed {
                name: name.to_string(),
                uid: self
                    .volumes
                    .get(volume)
                    .map(|v| v.1.clone())
                    .unwrap_or_default(),
                state: ContainerState::Absent as i32,
                volume: volume.to_string(),
                volume_present: self.volumes.contains_key(volume),
                ..Default::default()
            },
        }
    }

    fn uid_matches(&self, name: &str, uid: &str) -> Result<(), DriverError> {
        match self.sandboxes.get(name) {
            Some(o) if !uid.is_empty() && o.uid != uid => Err(DriverError::UidMismatch {
                name: name.to_string(),
                expected: uid.to_string(),
                found: o.uid.clone(),
            }),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Driver for MemoryDriver {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn pull(&self, image: &str) -> Result<(), DriverError> {
        if image.is_empty() {
            return Err(DriverError::Invalid("image is empty".into()));
        }
        check_image(image)
    }

    async fn inventory(&self) -> Result<Vec<Observed>, DriverError> {
        let st = self.lock();
        let mut out: Vec<Observed> = st
            .sandboxes
            .values()
            .map(|o| Observed {
                volume_present: st.volumes.contains_key(&o.volume),
                ..o.clone()
            })
            .collect();
        let used: HashSet<&str> = st.sandboxes.values().map(|o| o.volume.as_str()).collect();
        for (v, (owner, _)) in st
            .volumes
            .iter()
            .filter(|(v, _)| !used.contains(v.as_str()))
        {
            out.push(st.observed(owner, v));
        }
        Ok(out)
    }

    fn generation(&self) -> Option<u64> {
        Some(self.lock().generation)
    }

    async fn ensure(&self, e: &Ensure) -> Result<Observed, DriverError> {
        super::validate_name("sandbox", &e.name)?;
        super::validate_name("volume", &e.volume)?;
        super::container_policy::parse(e)?; // a bad policy changes nothing
        let mut st = self.lock();
        st.generation += 1;
        let owner = super::volume_owner(&e.volume_uid, &e.uid);
        match st.volumes.get(&e.volume) {
            Some((_, uid)) if uid != owner => {
                return Err(DriverError::ForeignVolume {
                    name: e.name.clone(),
                    volume: e.volume.clone(),
                })
            }
            None if e.volume_expected => {
                return Err(DriverError::VolumeLost {
                    name: e.name.clone(),
                    volume: e.volume.clone(),
                })
            }
            _ => {}
        }
        let same = st
            .sandboxes
            .get(&e.name)
            .is_some_and(|o| o.uid == e.uid && o.revision == e.revision && o.volume == e.volume);
        if !same {
            check_image(&e.image)?; // a new container needs the image
        }
        let n = st.tick();
        st.volumes
            .entry(e.volume.clone())
            .or_insert_with(|| (e.name.clone(), owner.to_string()));
        let entry = st.sandboxes.entry(e.name.clone()).or_default();
        if !same {
            *entry = Observed {
                name: e.name.clone(),
                uid: e.uid.clone(),
                revision: e.revision,
                container_id: format!("mem-{n}"),
                volume: e.volume.clone(),
                ..Default::default()
            };
        }
        if e.image.contains(CRASHING_IMAGE_MARKER) {
            entry.state = ContainerState::Exited as i32;
            entry.exit_code = 1;
            entry.started_at = format!("start-{n}");
            entry.message = "exited (1) right after start".to_string();
        } else if entry.state != ContainerState::Running as i32 {
            entry.state = ContainerState::Running as i32;
            entry.started_at = format!("start-{n}");
            entry.message = "running".to_string();
        }
        Ok(st.observed(&e.name, &e.volume))
    }

    async fn stop(&self, name: &str, uid: &str) -> Result<Observed, DriverError> {
        let mut st = self.lock();
        st.generation += 1;
        st.uid_matches(name, uid)?;
        if let Some(o) = st.sandboxes.get_mut(name) {
            o.state = ContainerState::Exited as i32;
            o.message = "exited".to_string();
        }
        Ok(st.observed(name, ""))
    }

    async fn remove(&self, r: &Remove) -> Result<Observed, DriverError> {
        let mut st = self.lock();
        st.generation += 1;
        // Another sandbox of the same name is never touched.
        let mine = st.uid_matches(&r.name, &r.uid).is_ok();
        let old = if mine {
            st.sandboxes.remove(&r.name)
        } else {
            None
        };
        let volume = match (&r.volume, old) {
            (v, _) if !v.is_empty() => v.clone(),
            (_, Some(o)) => o.volume,
            _ => String::new(),
        };
        let owner = super::volume_owner(&r.volume_uid, &r.uid);
        if !r.keep_volume {
            match st.volumes.get(&volume) {
                Some((_, uid)) if uid != owner => {
                    return Err(DriverError::ForeignVolume {
                        name: r.name.clone(),
                        volume,
                    })
                }
                _ => {
                    st.volumes.remove(&volume);
                }
            }
        }
        if mine {
            Ok(st.observed(&r.name, &volume))
        } else {
            Ok(Observed {
                name: r.name.clone(),
                uid: r.uid.clone(),
                state: ContainerState::Absent as i32,
                volume_present: st.volumes.contains_key(&volume),
                volume,
                ..Default::default()
            })
        }
    }

    async fn exec(
        &self,
        name: &str,
        uid: &str,
        command: Vec<String>,
    ) -> Result<ExecStream, DriverError> {
        super::validate_name("sandbox name", name)?;
        let st = self.lock();
        match st.sandboxes.get(name) {
            None => return Err(DriverError::NotFound { name: name.into() }),
            Some(o) if !uid.is_empty() && o.uid != uid => {
                return Err(DriverError::NotFound { name: name.into() })
            }
            Some(o) if o.state != ContainerState::Running as i32 => {
                return Err(DriverError::NotRunning { name: name.into() })
            }
            Some(_) => {}
        }
        let line = format!("{}\n", command.join(" ")).into_bytes();
        let items =
            [Out::Stdout(line), Out::ExitCode(0)].map(|out| Ok(ExecOutput { out: Some(out) }));
        Ok(Box::pin(futures::stream::iter(items)))
    }

    async fn logs(&self, name: &str, uid: &str, _follow: bool) -> Result<LogStream, DriverError> {
        super::validate_name("sandbox name", name)?;
        let st = self.lock();
        let o = st
            .sandboxes
            .get(name)
            .filter(|o| uid.is_empty() || o.uid == uid)
            .ok_or_else(|| DriverError::NotFound { name: name.into() })?;
        let chunk = LogChunk {
            data: format!("{} started at {}\n", o.name, o.started_at).into_bytes(),
            stderr: false,
        };
        Ok(Box::pin(futures::stream::iter([Ok(chunk)])))
    }

    async fn volume_size(&self, volume: &str) -> Result<u64, DriverError> {
        match self.lock().volumes.contains_key(volume) {
            true => Ok(0),
            false => Err(DriverError::NotFound {
                name: volume.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn ensure(rev: u64) -> Ensure {
        Ensure {
            name: "s1".into(),
            uid: "u1".into(),
            revision: rev,
            image: "img".into(),
            volume: "vol-s1".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn ensure_is_idempotent_and_volume_outlives_container() {
        let d = MemoryDriver::new();
        let a = d.ensure(&ensure(1)).await.unwrap();
        let b = d.ensure(&ensure(1)).await.unwrap();
        assert_eq!(a, b);
        d.stop("s1", "u1").await.unwrap();
        let c = d.ensure(&ensure(1)).await.unwrap();
        assert_eq!(c.container_id, a.container_id);
        assert_ne!(c.started_at, a.started_at);
        let up = d.ensure(&ensure(2)).await.unwrap();
        assert_ne!(up.container_id, a.container_id);
        assert!(up.volume_present);
        let mut out = d
            .exec("s1", "u1", vec!["echo".into(), "hi".into()])
            .await
            .unwrap();
        assert_eq!(
            out.next().await.unwrap().unwrap().out,
            Some(Out::Stdout(b"echo hi\n".to_vec()))
        );
        assert_eq!(
            out.next().await.unwrap().unwrap().out,
            Some(Out::ExitCode(0))
        );
        let rm = Remove {
            name: "s1".into(),
            uid: "u1".into(),
            volume: "vol-s1".into(),
            keep_volume: true,
            ..Default::default()
        };
        let gone = d.remove(&rm).await.unwrap();
        assert_eq!(gone.state, ContainerState::Absent as i32);
        assert!(gone.volume_present);
        let inv = d.inventory().await.unwrap();
        assert_eq!(inv.len(), 1);
        assert!(inv[0].volume_present);
        let rm = Remove {
            keep_volume: false,
            ..rm
        };
        assert!(!d.remove(&rm).await.unwrap().volume_present);
        assert!(d.inventory().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_images_and_bad_policies_change_nothing() {
        let d = MemoryDriver::new();
        d.pull("img").await.unwrap();
        let missing = d.pull("localhost/does-not-exist:v2").await.unwrap_err();
        assert!(
            matches!(missing, DriverError::ImageNotFound { .. }),
            "{missing}"
        );
        let first = d.ensure(&ensure(1)).await.unwrap();
        let mut bad = Ensure {
            image: "localhost/does-not-exist:v2".into(),
            ..ensure(2)
        };
        assert!(matches!(
            d.ensure(&bad).await,
            Err(DriverError::ImageNotFound { .. })
        ));
        bad.image = "img".into();
        bad.policy = Some("network: bridge\n".into());
        assert!(matches!(d.ensure(&bad).await, Err(DriverError::Invalid(_))));
        assert_eq!(d.inventory().await.unwrap(), vec![first]);
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    fn ensure(name: &str, uid: &str, volume: &str) -> Ensure {
        Ensure {
            name: name.into(),
            uid: uid.into(),
            revision: 1,
            image: "img".into(),
            volume: volume.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn exec_and_logs_reach_only_the_sandbox_with_the_uid_asked_for() {
        let d = MemoryDriver::new();
        d.ensure(&ensure("s", "u-new", "vol-new")).await.unwrap();
        let stale = d.exec("s", "u-old", vec!["true".into()]).await.err();
        assert!(matches!(stale, Some(DriverError::NotFound { .. })));
        assert!(d.logs("s", "u-old", false).await.is_err());
        assert!(d.exec("s", "u-new", vec!["true".into()]).await.is_ok());
        assert!(d.logs("s", "", false).await.is_ok());
        let bad = d.exec("../etc", "", vec!["true".into()]).await.err();
        assert!(matches!(bad, Some(DriverError::Invalid(_))), "{bad:?}");
    }

    #[tokio::test]
    async fn a_seeded_sandbox_whose_volume_is_gone_is_volume_lost_and_nothing_is_created() {
        let d = MemoryDriver::new();
        let lost = Ensure {
            volume_expected: true,
            ..ensure("s", "u", "vol-s")
        };
        let err = d.ensure(&lost).await.unwrap_err();
        assert!(matches!(err, DriverError::VolumeLost { .. }), "{err}");
        assert!(err.to_string().starts_with("VolumeLost:"), "{err}");
        assert!(d.inventory().await.unwrap().is_empty(), "nothing created");
    }

    #[tokio::test]
    async fn a_kept_volume_is_adopted_by_uid_and_never_touched_by_the_old_name() {
        let d = MemoryDriver::new();
        d.ensure(&ensure("a", "old", "vol-old")).await.unwrap();
        let keep = Remove {
            name: "a".into(),
            uid: "old".into(),
            volume: "vol-old".into(),
            keep_volume: true,
            ..Default::default()
        };
        d.remove(&keep).await.unwrap();
        // A new sandbox "a" (new uid) runs next to the kept volume.
        d.ensure(&ensure("a", "new", "vol-new")).await.unwrap();
        // Deleting the kept volume by the old uid leaves the new one alone.
        let drop_kept = Remove {
            keep_volume: false,
            ..keep.clone()
        };
        let o = d.remove(&drop_kept).await.unwrap();
        assert!(!o.volume_present);
        let inv = d.inventory().await.unwrap();
        assert_eq!(inv.len(), 1);
        assert_eq!(
            (inv[0].uid.as_str(), inv[0].state()),
            ("new", ContainerState::Running)
        );
        // Adopting a volume: it is mounted only for the uid on its labels.
        d.ensure(&ensure("b", "b1", "vol-b")).await.unwrap();
        d.remove(&Remove {
            name: "b".into(),
            uid: "b1".into(),
            volume: "vol-b".into(),
            keep_volume: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let stranger = d.ensure(&ensure("c", "c1", "vol-b")).await.unwrap_err();
        assert!(matches!(stranger, DriverError::ForeignVolume { .. }));
        let adopted = Ensure {
            volume_uid: "b1".into(),
            volume_expected: true,
            ..ensure("c", "c1", "vol-b")
        };
        assert!(d.ensure(&adopted).await.unwrap().volume_present);
    }
}
