//! OCI image reference validation, following the grammar of the
//! distribution project's `reference` package:
//!
//! ```text
//! reference := name [ ":" tag ] [ "@" digest ]
//! name      := [ domain "/" ] path-component ( "/" path-component )*
//! domain    := host [ ":" port ]          (first component with '.', ':' or "localhost")
//! path-comp := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest    := algorithm ":" encoded      (sha256 needs 64 lowercase hex digits)
//! ```

use crate::error::ApiError;

const MAX_NAME_LEN: usize = 255;

pub fn validate_image(image: &str) -> Result<(), ApiError> {
    parse(image)
        .map_err(|why| ApiError::Invalid(format!("invalid image reference {image:?}: {why}")))
}

fn parse(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("must not be empty".into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    // A ':' after the last '/' starts the tag (a ':' before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    check_name(name)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("missing repository name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "repository name longer than {MAX_NAME_LEN} characters"
        ));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    if components.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        check_domain(first)?;
        components.remove(0);
    }
    for component in components {
        check_path_component(component)?;
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid registry port in {domain:?}"));
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("invalid registry host {host:?}"))
    }
}

fn check_path_component(component: &str) -> Result<(), String> {
    let bad = || {
        Err(format!("invalid path component {component:?} (lowercase letters, digits and separators '.', '_', '__', '-')"))
    };
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return bad();
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-".
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return bad(),
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return bad();
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if bytes.is_empty()
        || bytes.len() > 128
        || !word(bytes[0])
        || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
    {
        return Err(format!(
            "invalid tag {tag:?} (up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-')"
        ));
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return Err(format!(
            "invalid digest {digest:?} (expected algorithm:hex)"
        ));
    };
    let algo_ok = !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
    if !algo_ok {
        return Err(format!("invalid digest algorithm {algorithm:?}"));
    }
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let encoded_ok = match algorithm {
        "sha256" => hex(encoded, 64),
        "sha512" => hex(encoded, 128),
        _ => {
            encoded.len() >= 32
                && encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
        }
    };
    if !encoded_ok {
        return Err(format!("invalid {algorithm} digest {encoded:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_valid_references() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "localhost/berth-demo:v1",
            "localhost:5000/team/app:1.0",
            "registry.example.com/a/b/c",
            "my_app__x.y-z--w:TAG_1.0-rc",
            &format!("busybox@{SHA}"),
            &format!("docker.io/library/busybox:1@{SHA}"),
        ] {
            assert!(validate_image(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            ":tag",
            "bad image",
            "busybox:-tag",
            "a//b",
            "a/-b",
            "a/b_",
            "a___b",
            "busybox@sha256:abc",
            "busybox@",
            "host:port/x",
            &format!("x:{}", "t".repeat(129)),
        ] {
            assert!(validate_image(bad).is_err(), "{bad}");
        }
    }
}
