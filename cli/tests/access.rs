//! Tokens, tenants and quotas end to end: a `berth up` cluster (mutual TLS,
//! its bootstrap token in the home) and the real `berth` binary with
//! tokens it made. Bad credentials exit 6, forbidden actions 7, a create
//! over quota 8, each with one line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;
use common::{berth_env, berth_home, free_base_port, json, up_without_agent, Down, Run};

struct Cluster<'a> {
    home: &'a Path,
    control: String,
}

impl Cluster<'_> {
    /// As the platform admin `berth up` set up.
    fn admin(&self, args: &[&str]) -> Run {
        berth_home(self.home, &self.control, args)
    }

    /// With `token`, through the nodes in the order given.
    fn with(&self, token: &str, args: &[&str]) -> Run {
        berth_env(self.home, &self.control, &[("BERTH_TOKEN", token)], args)
    }

    /// A new token's secret.
    fn token(&self, tenant: &str, role: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "-o", "json", "token", "create", "--tenant", tenant, "--role", role,
        ];
        args.extend(extra);
        let made = json(&self.admin(&args));
        made["token"].as_str().unwrap().to_string()
    }
}

fn names(run: &Run) -> Vec<String> {
    let mut names: Vec<String> = json(run)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["tenant"].as_str().unwrap_or("?"),
                s["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

#[test]
fn tokens_roles_tenants_and_quotas_through_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let control = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    let _down = Down(home.path());
    up_without_agent(home.path(), base);
    let c = Cluster {
        home: home.path(),
        control,
    };

    // `berth up` wired the bootstrap platform-admin token into the home.
    let token_file = home.path().join("token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let me = json(&c.admin(&["-o", "json", "whoami"]));
    assert_eq!(me["role"], "platform-admin");
    assert_eq!(me["tenant"], "default");

    // Bad credentials: Unauthenticated, exit 6, one line.
    let secret = std::fs::read_to_string(&token_file).unwrap();
    let secret = secret.trim();
    let flipped = if secret.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &secret[..secret.len() - 1]);
    for bad in ["nonsense", "berth_00_11", forged.as_str()] {
        let run = c.with(bad, &["sandbox", "list"]);
        assert_eq!(run.code, 6, "{bad}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("error: not authenticated"),
            "{}",
            run.stderr
        );
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(!run.stderr.contains(secret));
    }

    // Two tenants may use the same name; each sees only its own.
    let a = c.token("team-a", "member", &[]);
    let b = c.token("team-b", "member", &[]);
    let a_reader = c.token("team-a", "reader", &[]);
    for token in [&a, &b] {
        let run = c.with(token, &["sandbox", "create", "web", "--image", "busybox"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert_eq!(
        names(&c.with(&a, &["-o", "json", "sandbox", "list"])),
        ["team-a/web"]
    );
    assert_eq!(
        names(&c.with(&b, &["-o", "json", "sandbox", "list"])),
        ["team-b/web"]
    );
    assert_eq!(
        names(&c.admin(&["-o", "json", "sandbox", "list"])),
        ["team-a/web", "team-b/web"]
    );
    // A platform admin acts in another tenant by naming it.
    let got = json(&c.admin(&[
        "-o",
        "json",
        "--as-tenant",
        "team-b",
        "sandbox",
        "get",
        "web",
    ]));
    assert_eq!(got["name"], "web");
    // A member may not name another tenant.
    let run = c.with(&a, &["--as-tenant", "team-b", "sandbox", "list"]);
    assert_eq!(run.code, 7, "{}", run.stderr);

    // Another tenant's sandbox does not exist for you.
    let run = c.with(&a, &["sandbox", "delete", "web"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let other = c.with(&b, &["sandbox", "get", "web"]);
    assert_eq!(
        other.code, 0,
        "team-b's web survives team-a's delete: {}",
        other.stderr
    );
    let run = c.with(&a, &["sandbox", "get", "web"]);
    assert_eq!(run.code, 3, "{}", run.stderr);

    // A reader reads, and may not write: PermissionDenied, exit 7.
    assert_eq!(c.with(&a_reader, &["sandbox", "list"]).code, 0);
    let run = c.with(&a_reader, &["sandbox", "create", "x", "--image", "busybox"]);
    assert_eq!(run.code, 7, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: permission denied"),
        "{}",
        run.stderr
    );
    // Nor make tokens, nor join the cluster's admins.
    assert_eq!(c.with(&a_reader, &["token", "list"]).code, 7);
    let run = c.with(&a, &["token", "create", "--role", "admin"]);
    assert_eq!(run.code, 7, "{}", run.stderr);

    // A tenant admin manages its own tenant's tokens only.
    let a_admin = c.token("team-a", "admin", &[]);
    let listed = json(&c.with(&a_admin, &["-o", "json", "token", "list"]));
    let tenants: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| *t == "team-a"),
        "{tenants:?}"
    );
    assert!(!listed.to_string().contains(&a), "a secret was listed");
    let run = c.with(
        &a_admin,
        &["token", "create", "--tenant", "team-b", "--role", "reader"],
    );
    assert_eq!(run.code, 7, "{}", run.stderr);

    // Revocation: the next call fails, on every node.
    let id = |secret: &str| secret.split('_').nth(1).unwrap().to_string();
    assert_eq!(c.with(&a_admin, &["token", "revoke", &id(&a)]).code, 0);
    for node in c.control.split(',') {
        let run = berth_env(c.home, node, &[("BERTH_TOKEN", &a)], &["sandbox", "list"]);
        assert_eq!(run.code, 6, "node {node}: {}", run.stderr);
        assert!(run.stderr.contains("revoked"), "{}", run.stderr);
    }
    // Another tenant's token is not found for a tenant admin.
    let run = c.with(&a_admin, &["token", "revoke", &id(&b)]);
    assert_eq!(run.code, 3, "{}", run.stderr);

    // Expiry.
    let brief = c.token("team-a", "reader", &["--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let run = c.with(&brief, &["sandbox", "list"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("expired"), "{}", run.stderr);

    // Secret env: sealed with the data key `berth up` made, shown redacted,
    // and the sandbox's events say who did what.
    let secret_file = home.path().join("secret.txt");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let arg = format!("DB_PASSWORD=@{}", secret_file.display());
    let run = c.with(
        &b,
        &[
            "sandbox",
            "create",
            "vault",
            "--image",
            "busybox",
            "--secret-env",
            &arg,
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = c.with(&b, &["-o", "json", "sandbox", "get", "vault"]);
    assert!(!got.stdout.contains("from-a-file"), "{}", got.stdout);
    assert_eq!(json(&got)["secret_env"]["DB_PASSWORD"], "<secret>");
    let events = json(&c.with(&b, &["-o", "json", "sandbox", "events", "vault", "--audit"]));
    let first = &events.as_array().unwrap()[0];
    assert_eq!(first["principal"], format!("token:{}", id(&b)));
    assert_eq!(first["outcome"], "ok");
    let run = c.with(
        &b,
        &[
            "sandbox",
            "create",
            "x",
            "--image",
            "busybox",
            "--secret-env",
            "NOPE",
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);

    // Quotas: only platform admins set them; creates stop at the limit,
    // with the figures, exit 8.
    let q = c.token("team-q", "member", &[]);
    assert_eq!(
        c.with(
            &q,
            &["tenant", "set-quota", "team-q", "--max-sandboxes", "2"]
        )
        .code,
        7
    );
    let set = c.admin(&["tenant", "set-quota", "team-q", "--max-sandboxes", "2"]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    for name in ["q1", "q2"] {
        assert_eq!(
            c.with(&q, &["sandbox", "create", name, "--image", "busybox"])
                .code,
            0
        );
    }
    let run = c.with(&q, &["sandbox", "create", "q3", "--image", "busybox"]);
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert!(run.stderr.contains("2 of its quota of 2"), "{}", run.stderr);
    let tenant = json(&c.with(&q, &["-o", "json", "tenant", "get"]));
    assert_eq!(tenant["usage"]["sandboxes"], 2);
    assert_eq!(tenant["quota"]["max_sandboxes"], 2);

    // A node that accepts connections but never answers (paused, say)
    // does not hold the CLI: it moves on to the next address.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = format!("{},{}", silent.local_addr().unwrap(), c.control);
    let started = std::time::Instant::now();
    let run = berth_home(c.home, &control, &["sandbox", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
