//! Recovery at open: each segment scanned with its ack file, what is still live handed back per
//! queue in log order (where each message is, not its body).
//!
//! Invariants:
//! - A segment whose header is not Warren's, or is of a format version this build does not read,
//!   is refused (the broker does not start) rather than misread; one created but never written
//!   is empty.
//! - Only records naming this segment are read: a whole record of another segment (a reused
//!   file's old bytes, see `record`) is never this segment's, whatever its checksum says.
//! - Where no record of this segment starts, scanning resynchronises on the next one, byte by
//!   byte past anything else (old records, zeros): the one that does not start there is
//!   reported as corrupt and skipped, never delivered. With none after it, the records end
//!   there: cleanly at the writer's end mark (`record::END_MARK`) or at old bytes, else at a
//!   record cut short by a crash mid-write (dropped with a warning; it was never confirmed).

use super::acks::{self, Acks};
use super::record::{check_at, parse_payload, Check, Format, END_MARK, SEGMENT_MAGIC};
use super::{io_err, seg_path, Recovered, RecoveredMessage};
use crate::store::StoreError;
use bytes::Bytes;
use std::path::Path;
use tracing::{error, warn};

/// Read one segment and its acks into `rec`; returns how many (record, queue) pairs are live.
pub(super) fn recover_segment(dir: &Path, n: u32, rec: &mut Recovered) -> Result<u64, StoreError> {
    let path = seg_path(dir, n);
    let data = Bytes::from(std::fs::read(&path).map_err(|e| io_err(&path, e))?);
    if data.len() < SEGMENT_MAGIC.len() {
        // Created but never written (a crash right after creating it).
        return Ok(0);
    }
    let f = match Format::of(&data, n) {
        Ok(f) => f,
        Err(None) => {
            return Err(StoreError::Corrupt {
                path,
                detail: "not a Warren message segment (bad magic)".into(),
            })
        }
        Err(Some(v)) => {
            return Err(StoreError::Version {
                path,
                found: format!("segment format {v}"),
            })
        }
    };
    let Acks {
        acked,
        delivered,
        returned,
    } = acks::read_acks(dir, n)?;
    let mut live = 0u64;
    let mut pos = SEGMENT_MAGIC.len();
    while pos < data.len() {
        let len = match check_at(&data, pos, f) {
            Check::Record(len) => len,
            here => {
                // No record of this segment here: damage in the middle if one follows (found
                // byte by byte, past a reused file's old records too), else the end.
                let next = (pos + 1..data.len())
                    .find(|&p| matches!(check_at(&data, p, f), Check::Record(_)));
                if let Some(next) = next {
                    rec.corrupt_records += 1;
                    error!(path = %path.display(), offset = pos,
                        "corrupt message record (checksum mismatch): skipped, not delivered");
                    pos = next;
                    continue;
                }
                // The end: cleanly at the writer's end mark or a reused file's old bytes, or
                // a write cut short (never confirmed) when the broker stopped.
                if here != Check::Stale && data.get(pos..pos + 4) != Some(&END_MARK[..]) {
                    rec.torn_records += 1;
                    warn!(path = %path.display(), offset = pos,
                        "dropping an incomplete record at the end of a segment (written when the broker stopped)");
                }
                break;
            }
        };
        let payload = data.slice(pos + f.header()..pos + f.header() + len);
        let offset = pos as u32;
        pos += f.header() + len;
        let Some((published_at, (ttl, priority), queues, _, _, _, body)) = parse_payload(&payload)
        else {
            rec.corrupt_records += 1;
            error!(path = %path.display(), offset, "malformed message record: skipped");
            continue;
        };
        for q in queues {
            if acked.contains(&(offset, q)) {
                continue;
            }
            live += 1;
            rec.queues.entry(q).or_default().push(RecoveredMessage {
                segment: n,
                offset,
                size: body.len() as u32,
                published_at,
                ttl,
                priority,
                delivered: delivered.contains(&(offset, q)),
                returned: returned.get(&(offset, q)).copied().unwrap_or(0),
            });
        }
    }
    Ok(live)
}
