//! The two-file journal: appends checksummed batches, replays them on open, compacts by writing
//! the whole live state into the other file and switching to it.
//!
//! Owns the byte layout of `journal.0`/`journal.1` (see [`super::format`]) and the fail-stop
//! rule: after a failed write or sync every later call returns that failure instead of trusting
//! a retried fsync. Never interprets records; that is [`super::recovery`]'s job.

use std::io;
use std::sync::Arc;

use super::format::{self, Header, Record, BATCH_ALIGN, BATCH_HEADER_LEN, HEADER_LEN};
use crate::volume::Storage;
use crate::{DiffAreaError, DiffAreaPart};

/// What replay found, in journal order.
#[derive(Debug)]
pub(crate) enum ReplayItem {
    /// A batch whose checksum and records are good.
    Batch(Vec<Record>),
    /// Bytes at `offset` of the active file that should hold batches but do not decode, while a
    /// good batch follows them: records are missing here.
    Damage { offset: u64, reason: String },
}

/// The open journal.
#[derive(Debug)]
pub(crate) struct Journal {
    files: [Arc<dyn Storage>; 2],
    active: usize,
    header: Header,
    end: u64,
    next_seq: u64,
    failed: Option<String>,
}

impl Journal {
    /// Starts a new journal in two empty files.
    pub(crate) fn create(files: [Arc<dyn Storage>; 2], header: Header) -> Result<Journal, DiffAreaError> {
        let header = Header { generation: 1, ..header };
        let io = |e| DiffAreaError::Io { what: "creating the journal", source: e };
        files[0].set_len(0).map_err(io)?;
        files[0].write_at(&header.encode(), 0).map_err(io)?;
        files[1].set_len(0).map_err(io)?;
        files[1].write_at(&vec![0u8; HEADER_LEN as usize], 0).map_err(io)?;
        files[0].sync_data().map_err(io)?;
        files[1].sync_data().map_err(io)?;
        Ok(Journal { files, active: 0, header, end: HEADER_LEN, next_seq: 1, failed: None })
    }

    /// Opens the journal and replays it. A torn tail (a batch cut short by a crash) is cut off.
    pub(crate) fn open(files: [Arc<dyn Storage>; 2]) -> Result<(Journal, Vec<ReplayItem>), DiffAreaError> {
        let mut best: Option<(usize, Header)> = None;
        let mut reasons = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let mut block = vec![0u8; HEADER_LEN as usize];
            let len = f.len().map_err(|e| DiffAreaError::Io { what: "reading the journal", source: e })?;
            if len < HEADER_LEN {
                reasons.push(format!("journal.{i}: shorter than its header"));
                continue;
            }
            f.read_at(&mut block, 0).map_err(|e| DiffAreaError::Io { what: "reading the journal", source: e })?;
            match Header::decode(&block) {
                Ok(h) if h.generation > 0 => {
                    if best.is_none_or(|(_, b)| h.generation > b.generation) {
                        best = Some((i, h));
                    }
                }
                Ok(_) => reasons.push(format!("journal.{i}: unused")),
                Err(format::DecodeError::NewerVersion { found }) => {
                    return Err(DiffAreaError::NewerFormat { found, supported: format::FORMAT_VERSION })
                }
                Err(e) => reasons.push(format!("journal.{i}: {e}")),
            }
        }
        let Some((active, header)) = best else {
            return Err(DiffAreaError::Corrupt { what: DiffAreaPart::JournalHeader, offset: Some(0), detail: reasons.join("; ") });
        };
        let file = &files[active];
        let len = file.len().map_err(|e| DiffAreaError::Io { what: "reading the journal", source: e })?;
        let mut bytes = vec![0u8; len as usize];
        file.read_at(&mut bytes, 0).map_err(|e| DiffAreaError::Io { what: "reading the journal", source: e })?;

        let mut items = Vec::new();
        let mut pos = HEADER_LEN;
        let mut next_seq = 1u64;
        loop {
            match decode_batch_at(&bytes, pos, header.generation, Some(next_seq)) {
                Ok((records, framed, _)) => {
                    items.push(ReplayItem::Batch(records));
                    pos += framed;
                    next_seq += 1;
                }
                Err(reason) => {
                    // Damage in the middle, or the torn end of the last write? A good batch with a
                    // later sequence number further on means damage.
                    let mut probe = pos + BATCH_ALIGN;
                    let mut found = None;
                    while probe + BATCH_HEADER_LEN as u64 <= len {
                        if let Ok((_, _, seq)) = decode_batch_at(&bytes, probe, header.generation, None) {
                            if seq > next_seq {
                                found = Some((probe, seq));
                                break;
                            }
                        }
                        probe += BATCH_ALIGN;
                    }
                    match found {
                        Some((at, seq)) => {
                            tracing::error!(offset = pos, %reason, "diff-area journal damaged; records are missing");
                            items.push(ReplayItem::Damage { offset: pos, reason });
                            pos = at;
                            next_seq = seq;
                        }
                        None => break,
                    }
                }
            }
        }
        let io = |e| DiffAreaError::Io { what: "cutting the journal's torn tail", source: e };
        if pos < len {
            tracing::info!(offset = pos, bytes = len - pos, "cutting off the journal's unfinished tail");
            file.set_len(pos).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok((Journal { files, active, header, end: pos, next_seq, failed: None }, items))
    }

    /// The header of the active file.
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes the journal files take.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len().unwrap_or(0)).sum()
    }

    /// Bytes of the active file.
    pub(crate) fn active_len(&self) -> u64 {
        self.end
    }

    /// Appends one batch and makes it durable.
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<(), DiffAreaError> {
        self.check_failed()?;
        let batch = format::encode_batch(self.header.generation, self.next_seq, payload);
        let file = &self.files[self.active];
        let result = file.write_at(&batch, self.end).and_then(|()| file.sync_data());
        self.fail_stop(result, "appending to the journal")?;
        self.end += batch.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Writes `payloads` (the whole live state) into the other file, makes it durable, then
    /// switches to it. A crash at any point leaves one complete journal.
    pub(crate) fn compact(&mut self, payloads: &[Vec<u8>]) -> Result<(), DiffAreaError> {
        self.check_failed()?;
        let other = 1 - self.active;
        let header = Header { generation: self.header.generation + 1, version: format::FORMAT_VERSION, ..self.header };
        let file = Arc::clone(&self.files[other]);
        let result = (|| -> io::Result<u64> {
            file.set_len(HEADER_LEN)?;
            let mut pos = HEADER_LEN;
            for (i, p) in payloads.iter().enumerate() {
                let batch = format::encode_batch(header.generation, i as u64 + 1, p);
                file.write_at(&batch, pos)?;
                pos += batch.len() as u64;
            }
            file.sync_data()?;
            file.write_at(&header.encode(), 0)?;
            file.sync_data()?;
            Ok(pos)
        })();
        let end = self.fail_stop(result, "compacting the journal")?;
        self.active = other;
        self.header = header;
        self.end = end;
        self.next_seq = payloads.len() as u64 + 1;
        // The old file is now the older generation; shrink it so it stops taking space.
        let old = &self.files[1 - other];
        let _ = old.set_len(HEADER_LEN);
        Ok(())
    }

    /// Invalidates both headers in place, so that the diff area refuses to open. Used when a
    /// failure cannot be recorded: an unreadable diff area is better than copies that come back
    /// wrong. Best effort; errors are ignored.
    pub(crate) fn poison(&mut self) {
        self.failed.get_or_insert_with(|| "poisoned after a failure".into());
        for f in &self.files {
            let _ = f.write_at(&[0u8; 8], 0);
            let _ = f.sync_data();
        }
    }

    fn check_failed(&self) -> Result<(), DiffAreaError> {
        match &self.failed {
            Some(msg) => Err(DiffAreaError::Stopped(msg.clone())),
            None => Ok(()),
        }
    }

    fn fail_stop<T>(&mut self, result: io::Result<T>, what: &'static str) -> Result<T, DiffAreaError> {
        result.map_err(|e| {
            self.failed = Some(format!("{what}: {e}"));
            DiffAreaError::Io { what, source: e }
        })
    }
}

/// Decodes the batch at `pos`: its records, its framed length and its sequence number.
fn decode_batch_at(bytes: &[u8], pos: u64, generation: u64, want_seq: Option<u64>) -> Result<(Vec<Record>, u64, u64), String> {
    let start = usize::try_from(pos).map_err(|_| "offset")?;
    let head = bytes.get(start..start + BATCH_HEADER_LEN).ok_or("end of file inside a batch header")?;
    let h = format::parse_batch_header(head).ok_or("no batch header")?;
    if h.generation != generation {
        return Err(format!("batch of generation {} in a journal of generation {generation}", h.generation));
    }
    if let Some(want) = want_seq {
        if h.seq != want {
            return Err(format!("batch sequence {} where {want} was expected", h.seq));
        }
    }
    let payload_start = start + BATCH_HEADER_LEN;
    let payload = bytes.get(payload_start..payload_start + h.payload_len as usize).ok_or("end of file inside a batch")?;
    if !format::check_batch(head, &h, payload) {
        return Err("batch checksum mismatch".into());
    }
    let records = Record::decode_all(payload).map_err(|e| e.to_string())?;
    Ok((records, h.framed_len(), h.seq))
}
