//! Recovery at open: each segment scanned with its ack file, what is still live handed back per
//! queue in log order (where each message is, not its body).
//!
//! Invariants:
//! - A segment whose header is not Warren's, or is of another format version, is refused (the
//!   broker does not start) rather than misread; one created but never written is empty.
//! - A record that does not fit in what remains of its file (a crash mid-write) is dropped; a
//!   record whose checksum does not match is reported and skipped, never delivered; scanning
//!   resynchronises on the next valid record.

use super::acks::{self, Acks};
use super::record::{parse_payload, record_at, HEADER, SEGMENT_MAGIC};
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
    if data[..6] != SEGMENT_MAGIC[..6] {
        return Err(StoreError::Corrupt {
            path,
            detail: "not a Warren message segment (bad magic)".into(),
        });
    }
    if data[6..8] != SEGMENT_MAGIC[6..8] {
        return Err(StoreError::Version {
            path,
            found: format!("segment format {}", u16::from_be_bytes([data[6], data[7]])),
        });
    }
    let Acks {
        acked,
        delivered,
        returned,
    } = acks::read_acks(dir, n)?;
    let mut live = 0u64;
    let mut pos = SEGMENT_MAGIC.len();
    while pos < data.len() {
        let Some(len) = record_at(&data, pos) else {
            // Not a valid record here: either the end of what was written before a crash (no
            // valid record follows), or damage in the middle (one does).
            match (pos + 1..data.len()).find(|&p| record_at(&data, p).is_some()) {
                Some(next) => {
                    rec.corrupt_records += 1;
                    error!(path = %path.display(), offset = pos,
                        "corrupt message record (checksum mismatch): skipped, not delivered");
                    pos = next;
                    continue;
                }
                None => {
                    rec.torn_records += 1;
                    warn!(path = %path.display(), offset = pos,
                        "dropping an incomplete record at the end of a segment (written when the broker stopped)");
                    break;
                }
            }
        };
        let payload = data.slice(pos + HEADER..pos + HEADER + len);
        let offset = pos as u32;
        pos += HEADER + len;
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
