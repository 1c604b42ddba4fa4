//! Pages of a listing: how many items a page holds, and the page token
//! that says where the previous page ended. Keeps every response bounded
//! however many sandboxes exist (a list of 100,000 in one message exceeds
//! a client's 4 MiB limit), without any state on the server: a token is
//! the last name of the page before, so any control node continues any
//! page, also after a failover.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::ApiError;

/// The most items one page holds.
pub const MAX_PAGE: usize = 5000;
/// Marks a token as this API's (and its format's version).
const PREFIX: &str = "p1.";

/// Where a page starts: after the name a `token` carries (None: at the
/// start). A token this API did not make is refused.
pub fn start_after(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ApiError::Invalid(format!(
            "invalid page_token {token:?}: pass a next_page_token from a previous response"
        ))
    };
    let body = token.strip_prefix(PREFIX).ok_or_else(invalid)?;
    let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| invalid())?;
    let name = String::from_utf8(bytes).map_err(|_| invalid())?;
    if name.is_empty() {
        return Err(invalid());
    }
    Ok(Some(name))
}

/// The token for the page after one that ended with `last`.
pub fn token_after(last: &str) -> String {
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(last))
}

/// Takes one page of `items` (every item if `page_size` is 0, at most
/// [`MAX_PAGE`] otherwise), and says whether more items follow.
pub fn take<T>(items: impl Iterator<Item = T>, page_size: u32) -> (Vec<T>, bool) {
    let size = match page_size as usize {
        0 => usize::MAX,
        n => n.min(MAX_PAGE),
    };
    let mut items = items.peekable();
    let page: Vec<T> = items.by_ref().take(size).collect();
    let more = items.peek().is_some();
    (page, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_carries_the_name_it_was_made_for() {
        for name in ["a", "tenant-1/sandbox-0042", "ü/ä"] {
            assert_eq!(
                start_after(&token_after(name)).unwrap().as_deref(),
                Some(name)
            );
        }
        assert_eq!(start_after("").unwrap(), None);
    }

    #[test]
    fn a_token_not_made_here_is_refused() {
        for bad in ["x", "p1.", "p1.!!", "p2.YQ", "YQ", "p1.__8"] {
            let err = start_after(bad).unwrap_err();
            assert!(matches!(err, ApiError::Invalid(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn pages_are_bounded_and_say_whether_more_follow() {
        assert_eq!(take(0..10, 4), (vec![0, 1, 2, 3], true));
        assert_eq!(take(0..4, 4), (vec![0, 1, 2, 3], false));
        assert_eq!(take(0..3, 0), (vec![0, 1, 2], false));
        let (page, more) = take(0..MAX_PAGE + 1, u32::MAX);
        assert_eq!((page.len(), more), (MAX_PAGE, true));
    }
}
