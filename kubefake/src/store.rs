//! The API server's object store: every object as JSON under
//! (resource, namespace, name), one resourceVersion counter for all of
//! them, and a bounded history of changes that watches replay and follow.
//!
//! Keeps the API's concurrency rules: a create of an existing name is
//! `409 AlreadyExists`, a replace or delete whose resourceVersion or uid
//! precondition is stale is `409 Conflict`, and a watch from a version
//! older than the history is `410 Gone` (the client must list again).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};
use tokio::sync::broadcast;

/// How many changes a watch can replay before it gets `410 Gone`.
const HISTORY: usize = 10_000;

/// One kind of object the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    PersistentVolumeClaims,
    ConfigMaps,
    Secrets,
    NetworkPolicies,
}

impl Resource {
    pub fn from_plural(group_version: &str, plural: &str) -> Option<Self> {
        Some(match (group_version, plural) {
            ("v1", "pods") => Self::Pods,
            ("v1", "persistentvolumeclaims") => Self::PersistentVolumeClaims,
            ("v1", "configmaps") => Self::ConfigMaps,
            ("v1", "secrets") => Self::Secrets,
            ("networking.k8s.io/v1", "networkpolicies") => Self::NetworkPolicies,
            _ => return None,
        })
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::Pods => "pods",
            Self::PersistentVolumeClaims => "persistentvolumeclaims",
            Self::ConfigMaps => "configmaps",
            Self::Secrets => "secrets",
            Self::NetworkPolicies => "networkpolicies",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::Pods => "Pod",
            Self::PersistentVolumeClaims => "PersistentVolumeClaim",
            Self::ConfigMaps => "ConfigMap",
            Self::Secrets => "Secret",
            Self::NetworkPolicies => "NetworkPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }
}

/// Where an object lives.
pub type Key = (Resource, String, String);

/// A change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    pub resource: Resource,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
    pub version: u64,
}

/// An API error: HTTP code, reason and message, sent as a `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(key: &Key) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {:?} not found", key.0.plural(), key.2),
        )
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message,
            "reason": self.reason, "code": self.code,
        })
    }
}

/// All objects, their versions and the recent history.
pub struct Store {
    objects: BTreeMap<Key, Value>,
    version: u64,
    history: VecDeque<Change>,
    /// The oldest version a watch may start from.
    oldest: u64,
    changes: broadcast::Sender<Change>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            version: 1,
            history: VecDeque::new(),
            oldest: 1,
            changes: broadcast::channel(4096).0,
        }
    }
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn version_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/resourceVersion")?.as_str()
}

fn uid_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/uid")?.as_str()
}

impl Store {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one resource in one namespace.
    pub fn list(&self, resource: Resource, namespace: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes after `since`, or `410 Gone` if the history no longer
    /// reaches back that far.
    pub fn since(&self, since: u64) -> Result<Vec<Change>, ApiError> {
        if since + 1 < self.oldest {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {since} ({})", self.oldest),
            ));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.version > since)
            .cloned()
            .collect())
    }

    /// Forget all history: every watch must list again (tests use this to
    /// force `410 Gone`).
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.version + 1;
    }

    fn record(&mut self, resource: Resource, namespace: &str, kind: &'static str, object: Value) {
        let change = Change {
            resource,
            namespace: namespace.to_string(),
            kind,
            version: self.version,
            object,
        };
        if self.history.len() == HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.version + 1;
            }
        }
        self.history.push_back(change.clone());
        let _ = self.changes.send(change);
    }

    fn stamp(&mut self, object: &mut Value) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
    }

    pub fn create(&mut self, key: Key, mut object: Value) -> Result<Value, ApiError> {
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", key.0.plural(), key.2),
            ));
        }
        object["apiVersion"] = json!(key.0.api_version());
        object["kind"] = json!(key.0.kind());
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        meta["namespace"] = json!(key.1);
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now());
        self.stamp(&mut object);
        self.objects.insert(key.clone(), object.clone());
        self.record(key.0, &key.1, "ADDED", object.clone());
        Ok(object)
    }

    /// Replace an object; its `metadata.resourceVersion`, when set, must
    /// be the current one.
    pub fn replace(&mut self, key: &Key, mut object: Value) -> Result<Value, ApiError> {
        let current = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(key))?;
        if let Some(v) = version_of(&object) {
            if Some(v) != version_of(current) {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                        key.0.plural(),
                        key.2
                    ),
                ));
            }
        }
        for field in ["uid", "creationTimestamp", "namespace", "name"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        object["apiVersion"] = json!(key.0.api_version());
        object["kind"] = json!(key.0.kind());
        self.stamp(&mut object);
        self.objects.insert(key.clone(), object.clone());
        self.record(key.0, &key.1, "MODIFIED", object.clone());
        Ok(object)
    }

    /// Change an object in place (the fake kubelet's status updates).
    pub fn modify(&mut self, key: &Key, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut object = self.objects.get(key)?.clone();
        change(&mut object);
        self.stamp(&mut object);
        self.objects.insert(key.clone(), object.clone());
        self.record(key.0, &key.1, "MODIFIED", object.clone());
        Some(object)
    }

    /// Check a delete's preconditions.
    pub fn check_preconditions(&self, key: &Key, options: &Value) -> Result<&Value, ApiError> {
        let current = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(key))?;
        let pre = &options["preconditions"];
        let stale = |field: &str, have: Option<&str>| {
            pre[field].as_str().is_some_and(|want| Some(want) != have)
        };
        if stale("uid", uid_of(current)) || stale("resourceVersion", version_of(current)) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed for {} {:?}: the object was replaced or modified",
                    key.0.plural(),
                    key.2
                ),
            ));
        }
        Ok(current)
    }

    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.stamp(&mut object);
        self.record(key.0, &key.1, "DELETED", object.clone());
        Some(object)
    }
}

/// Whether `object` matches a label selector of `k=v`, `k!=v`, `k` and
/// `!k` terms (comma separated; set-based terms are not supported).
pub fn matches_labels(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels[k.trim()].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

/// Whether `object` matches a field selector of `path=value` terms, for
/// the fields the fake knows (`metadata.name`, `metadata.namespace`,
/// `spec.nodeName`); an unknown field matches nothing.
pub fn matches_fields(object: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let Some((field, value)) = term.split_once('=') else {
                return false;
            };
            let value = value.strip_prefix('=').unwrap_or(value);
            let (field, negate) = match field.strip_suffix('!') {
                Some(f) => (f, true),
                None => (field, false),
            };
            let pointer = match field {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                "spec.nodeName" => "/spec/nodeName",
                _ => return false,
            };
            let equal = object.pointer(pointer).and_then(Value::as_str) == Some(value);
            equal != negate
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        (Resource::ConfigMaps, "ns".into(), name.into())
    }

    #[test]
    fn create_replace_delete_follow_the_api_rules() {
        let mut store = Store::default();
        let a = store.create(key("a"), json!({"metadata": {}})).unwrap();
        assert_eq!(
            store
                .create(key("a"), json!({"metadata": {}}))
                .unwrap_err()
                .code,
            409
        );
        let mut stale = a.clone();
        store.replace(&key("a"), a.clone()).unwrap();
        stale["data"] = json!({"x": "1"});
        assert_eq!(
            store.replace(&key("a"), stale).unwrap_err().reason,
            "Conflict"
        );
        let wrong_uid = json!({"preconditions": {"uid": "other"}});
        assert_eq!(
            store
                .check_preconditions(&key("a"), &wrong_uid)
                .unwrap_err()
                .code,
            409
        );
        let since = store.version();
        store.remove(&key("a")).unwrap();
        assert_eq!(store.since(since).unwrap().len(), 1);
        store.compact();
        assert_eq!(store.since(since).unwrap_err().code, 410);
    }

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}, "spec": {"nodeName": "n1"}});
        assert!(matches_labels(&o, "a=1,b"));
        assert!(matches_labels(&o, "a==1,c!=3,!c"));
        assert!(!matches_labels(&o, "a=2"));
        assert!(matches_fields(&o, "spec.nodeName=n1,metadata.name=p"));
        assert!(!matches_fields(&o, "spec.nodeName=n2"));
        assert!(matches_fields(&o, "spec.nodeName!=n2"));
        assert!(!matches_fields(&o, "status.phase=Running"));
    }
}
