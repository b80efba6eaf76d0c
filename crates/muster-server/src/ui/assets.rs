//! The UI's stylesheet, script and icon, compiled into the binary and served under names that
//! carry a hash of their content. A changed file gets a new URL, so browsers may keep each one
//! for a year without ever asking again; the ETag covers clients that ask anyway.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

pub(super) struct Asset {
    stem: &'static str,
    extension: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    hash: u64,
}

/// FNV-1a, evaluated at compile time: enough to tell versions of our own files apart, with
/// no build script and no dependency.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($stem:literal, $extension:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("assets/", $stem, ".", $extension));
        Asset {
            stem: $stem,
            extension: $extension,
            content_type: $content_type,
            body: BODY,
            hash: fnv1a(BODY),
        }
    }};
}

pub(super) static STYLESHEET: Asset = asset!("muster", "css", "text/css; charset=utf-8");
pub(super) static SCRIPT: Asset = asset!("muster", "js", "text/javascript; charset=utf-8");
pub(super) static ICON: Asset = asset!("icon", "svg", "image/svg+xml");

static ALL: [&Asset; 3] = [&STYLESHEET, &SCRIPT, &ICON];

/// The file names the assets are served under, computed once.
static FILE_NAMES: LazyLock<[String; 3]> = LazyLock::new(|| ALL.map(Asset::file_name));

impl Asset {
    fn file_name(&self) -> String {
        format!("{}.{:016x}.{}", self.stem, self.hash, self.extension)
    }

    /// The URL pages link to.
    pub(super) fn url(&self) -> String {
        let index = ALL
            .iter()
            .position(|a| std::ptr::eq(*a, self))
            .expect("every asset is listed");
        format!("/assets/{}", FILE_NAMES[index])
    }

    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

/// `GET /assets/{file}`: only the current versions exist; an old hash is a 404 rather than
/// today's content cached forever under yesterday's name.
pub(super) async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(index) = FILE_NAMES.iter().position(|name| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let asset = ALL[index];
    let etag = asset.etag();
    let cache = [
        (
            CACHE_CONTROL,
            "public, max-age=31536000, immutable".to_owned(),
        ),
        (ETAG, etag.clone()),
    ];
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(CONTENT_TYPE, asset.content_type)], asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        let url = STYLESHEET.url();
        assert!(
            url.starts_with("/assets/muster.") && url.ends_with(".css"),
            "{url}"
        );
        assert_ne!(STYLESHEET.url(), SCRIPT.url());
    }
}
