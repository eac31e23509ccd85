//! Reading etcd at any size: a range is read in pages, every page at the revision of the
//! first, and every response may be as large as the largest record etcd accepts.
//!
//! One unpaged range get of the whole prefix does not scale: the gRPC client refuses a
//! response above its decode limit (4 MiB by default), which ~10,000 Neutron-shaped ports
//! (or a handful of 1 MB values) exceed, and a starting agent would retry forever.

use etcd_client::{Client, Error, GetOptions, KeyValue, KvClient, WatchClient};
use tonic::Code;

/// The decode limit of every etcd response this crate reads. etcd refuses a request larger
/// than its `--max-request-bytes` (1.5 MiB by default; operators raise it to 10 MiB at
/// most, as etcd's docs advise), so no single record is larger; a page of records is cut
/// to fit (see [`get_prefix`]), and a watch response holds the events of one revision.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// Keys per page: a Neutron-shaped port record is about 1 KiB, so ~1 MiB a page; a page
/// that does not fit [`MAX_DECODE_BYTES`] (huge values) is read again in halves.
pub const PAGE_KEYS: i64 = 1000;

/// Everything under a prefix, as of one revision.
#[derive(Debug, Default)]
pub struct Range {
    /// The store's revision the whole range was read at.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

/// A KV client whose responses may be [`MAX_DECODE_BYTES`] large.
pub fn kv(client: &Client) -> KvClient {
    client
        .kv_client()
        .max_decoding_message_size(MAX_DECODE_BYTES)
}

/// A watch client whose responses may be [`MAX_DECODE_BYTES`] large.
pub fn watcher(client: &Client) -> WatchClient {
    client
        .watch_client()
        .max_decoding_message_size(MAX_DECODE_BYTES)
}

/// The end of the key range of `prefix` (etcd's `WithPrefix`): the prefix with its last
/// byte below 0xff incremented and what follows dropped; `\0` (to the end of the key space)
/// when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key under `prefix`, read [`PAGE_KEYS`] at a time, all pages at the revision of
/// the first (a consistent snapshot however many pages it takes). If that revision is
/// compacted while paging, etcd says so and the caller reads again.
pub async fn get_prefix(kv: &mut KvClient, prefix: &str) -> Result<Range, Error> {
    get_prefix_paged(kv, prefix, PAGE_KEYS).await
}

/// [`get_prefix`] with a page size of the caller's (tests use small ones).
pub async fn get_prefix_paged(
    kv: &mut KvClient,
    prefix: &str,
    page_keys: i64,
) -> Result<Range, Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut out = Range::default();
    let mut limit = page_keys.max(1);
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if out.revision != 0 {
            opts = opts.with_revision(out.revision);
        }
        let mut resp = match kv.get(from.clone(), Some(opts)).await {
            Ok(r) => r,
            // The page is larger than we decode: the same keys again, fewer at a time.
            Err(Error::GRpcStatus(s)) if s.code() == Code::OutOfRange && limit > 1 => {
                limit = (limit / 2).max(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        if out.revision == 0 {
            out.revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let Some(last) = kvs.last() else {
            return Ok(out);
        };
        // The next page starts right after the last key of this one.
        from = last.key().to_vec();
        from.push(0);
        out.kvs.extend(kvs);
        if !more {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"/dragonflow/"), b"/dragonflow0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
