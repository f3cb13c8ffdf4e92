//! `lior store check` and `lior store salvage`: verify every record of every partition of a
//! data directory without changing anything, and keep every record that verifies when the log
//! is damaged (each damaged segment file copied aside first).
//!
//! It owns the offline view of a data directory; the rules of reading a segment are
//! [`super::scan`]'s, the same ones start-up uses.

use super::scan::{self, Hole};
use super::{segment_file_name, Store, StoreConfig, StoreError, UringDisk};
use serde_json::json;
use std::path::{Path, PathBuf};

/// What one segment file holds.
#[derive(Clone, Debug)]
pub struct SegmentCheck {
    /// Its base sequence number (file `<20 digits>.log`).
    pub base: u64,
    /// Valid records and their bytes.
    pub records: u64,
    /// Bytes of the valid records.
    pub record_bytes: u64,
    /// Whether it ends with a seal (every segment but the last does).
    pub sealed: bool,
    /// Offset after its last valid record.
    pub end: u64,
    /// Damaged regions.
    pub holes: Vec<Hole>,
    /// Other findings (a missing segment before it, an old record format, an empty last
    /// segment start-up drops).
    pub notes: Vec<String>,
    /// Whether the notes are damage (start-up would refuse).
    pub damaged_note: bool,
}

impl SegmentCheck {
    /// Whether start-up would refuse because of this segment.
    pub fn damaged(&self) -> bool {
        !self.holes.is_empty() || self.damaged_note
    }
}

/// What one partition (a store directory) holds.
#[derive(Clone, Debug)]
pub struct PartitionCheck {
    /// The partition's directory.
    pub dir: PathBuf,
    /// Its segments in log order.
    pub segments: Vec<SegmentCheck>,
}

/// What `check` found in a data directory.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The directory checked.
    pub dir: PathBuf,
    /// Its partitions.
    pub partitions: Vec<PartitionCheck>,
}

impl CheckReport {
    /// Whether anything is damaged.
    pub fn damaged(&self) -> bool {
        self.partitions
            .iter()
            .any(|p| p.segments.iter().any(SegmentCheck::damaged))
    }

    /// One line per segment, an indented line per finding, and a summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let (mut segs, mut recs, mut holes, mut bad_bytes) = (0, 0u64, 0, 0u64);
        for p in &self.partitions {
            for s in &p.segments {
                segs += 1;
                recs += s.records;
                let name = p.dir.join(segment_file_name(s.base));
                let state = if s.sealed { "sealed" } else { "log end" };
                out.push_str(&format!(
                    "{}: {} records ({} bytes), {state} at offset {}, {}\n",
                    name.display(),
                    s.records,
                    s.record_bytes,
                    s.end,
                    if s.damaged() { "DAMAGED" } else { "ok" }
                ));
                for h in &s.holes {
                    holes += 1;
                    bad_bytes += h.len as u64;
                    let then = match h.next_seq {
                        Some(seq) => format!(
                            "valid records continue at offset {} (seq {seq})",
                            h.offset + h.len
                        ),
                        None => "up to the segment's end (its seal is lost)".to_string(),
                    };
                    out.push_str(&format!(
                        "  damage at offset {}: {} bytes after seq {}; {then}\n",
                        h.offset, h.len, h.after_seq
                    ));
                }
                for n in &s.notes {
                    out.push_str(&format!("  {n}\n"));
                }
            }
        }
        if self.damaged() {
            out.push_str(&format!(
                "store check {}: DAMAGED: {holes} damaged regions ({bad_bytes} bytes) in {segs} \
                 segments, {recs} valid records; `lior store salvage {}` keeps every valid record \
                 (damaged segment files are copied aside first)\n",
                self.dir.display(),
                self.dir.display()
            ));
        } else {
            out.push_str(&format!(
                "store check {}: clean: {} partitions, {segs} segments, {recs} records\n",
                self.dir.display(),
                self.partitions.len()
            ));
        }
        out
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "dir": self.dir.display().to_string(),
            "clean": !self.damaged(),
            "partitions": self.partitions.iter().map(|p| json!({
                "dir": p.dir.display().to_string(),
                "segments": p.segments.iter().map(|s| json!({
                    "file": segment_file_name(s.base),
                    "base": s.base,
                    "records": s.records,
                    "record_bytes": s.record_bytes,
                    "sealed": s.sealed,
                    "end": s.end,
                    "damaged": s.damaged(),
                    "holes": s.holes.iter().map(|h| json!({
                        "offset": h.offset,
                        "bytes": h.len,
                        "after_seq": h.after_seq,
                        "next_seq": h.next_seq,
                    })).collect::<Vec<_>>(),
                    "notes": s.notes,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The store directories under a data directory: its `partition-N` subdirectories, or the
/// directory itself if it holds segment files.
pub fn partitions(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let parts: Vec<PathBuf> = (0..)
        .map(|i| dir.join(format!("partition-{i}")))
        .take_while(|p| p.is_dir())
        .collect();
    if !parts.is_empty() {
        return Ok(parts);
    }
    if !segment_bases(dir)?.is_empty() {
        return Ok(vec![dir.to_path_buf()]);
    }
    Err(format!(
        "{}: no store here (neither partition-N directories nor <20 digits>.log segment files)",
        dir.display()
    ))
}

fn segment_bases(dir: &Path) -> Result<Vec<u64>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut bases = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name.strip_suffix(".log") {
            if num.len() == 20 {
                if let Ok(b) = num.parse::<u64>() {
                    bases.push(b);
                }
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Verify every record of one store directory, changing nothing.
pub fn check_partition(dir: &Path) -> Result<PartitionCheck, String> {
    let mut bases = segment_bases(dir)?;
    let read = |b: u64| {
        let p = dir.join(segment_file_name(b));
        std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let mut out = PartitionCheck {
        dir: dir.to_path_buf(),
        segments: Vec::new(),
    };
    let mut dropped = None;
    if bases.len() >= 2 {
        // Start-up drops an empty last segment whose predecessor is unsealed (see `recover`).
        let last = *bases.last().expect("len >= 2");
        let data = read(last)?;
        let empty = scan::scan_segment(&data, last, last - 1, None, &mut || false, &mut |_, _| {})
            .map(|s| s.records == 0)
            .unwrap_or(false);
        let prev = bases[bases.len() - 2];
        let prev_data = read(prev)?;
        let prev_sealed = scan::scan_segment(
            &prev_data,
            prev,
            prev - 1,
            Some(last),
            &mut || false,
            &mut |_, _| {},
        )
        .map(|s| s.sealed)
        .unwrap_or(false);
        if empty && !prev_sealed {
            dropped = bases.pop();
        }
    }
    let mut prev_seq = 0u64;
    let mut prev_sealed = true;
    for (i, &base) in bases.iter().enumerate() {
        let data = read(base)?;
        let next_base = bases.get(i + 1).copied();
        let mut notes = Vec::new();
        let mut damaged_note = false;
        if i > 0 && prev_sealed && base != prev_seq + 1 {
            notes.push(format!(
                "the log jumps from seq {prev_seq} to this segment's base {base}: a segment \
                 file is missing before it"
            ));
            damaged_note = true;
        }
        let s = scan::scan_segment(
            &data,
            base,
            prev_seq,
            next_base,
            &mut || false,
            &mut |_, _| {},
        )
        .map_err(|_| "stopped".to_string())?;
        if let Some(v) = s.old_format {
            notes.push(format!(
                "written in record format {v}; this lior reads format {}",
                super::record::FORMAT_VERSION
            ));
            damaged_note = true;
        }
        prev_seq = s.last_seq;
        prev_sealed = s.sealed;
        out.segments.push(SegmentCheck {
            base,
            records: s.records,
            record_bytes: s.record_bytes,
            sealed: s.sealed,
            end: s.end as u64,
            holes: s.holes,
            notes,
            damaged_note,
        });
    }
    if let Some(b) = dropped {
        out.segments.push(SegmentCheck {
            base: b,
            records: 0,
            record_bytes: 0,
            sealed: false,
            end: 0,
            holes: Vec::new(),
            notes: vec![
                "empty segment of a roll whose batch never reached the disk; start-up removes it"
                    .into(),
            ],
            damaged_note: false,
        });
    }
    Ok(out)
}

/// Verify every record of every partition of a data directory, changing nothing.
pub fn check(dir: &Path) -> Result<CheckReport, String> {
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        partitions: Vec::new(),
    };
    for p in partitions(dir)? {
        report.partitions.push(check_partition(&p)?);
    }
    Ok(report)
}

/// What salvage did to one partition.
#[derive(Clone, Debug)]
pub struct Salvaged {
    /// The partition's directory.
    pub dir: PathBuf,
    /// Copies of the damaged segment files made before anything was written.
    pub copies: Vec<PathBuf>,
    /// Damaged regions skipped: (segment base, offset, bytes).
    pub skipped: Vec<(u64, u64, u64)>,
    /// Messages in the store afterwards.
    pub messages: u64,
}

/// Salvage a data directory: for each partition with damage, take its lock, copy each damaged
/// segment file to `<name>.log.damaged` (`.damaged.N` if that exists), then open it with
/// `salvage`: every record that verifies is kept (records after the damage too), each damaged
/// region gets a filler record (a seal where a segment's end was lost) so later starts are
/// clean. Partitions without damage are not touched.
pub fn salvage(dir: &Path) -> Result<Vec<Salvaged>, String> {
    let report = check(dir)?;
    let mut out = Vec::new();
    for p in &report.partitions {
        let damaged: Vec<&SegmentCheck> = p.segments.iter().filter(|s| s.damaged()).collect();
        if damaged.is_empty() {
            continue;
        }
        let disk = UringDisk::open(&p.dir).map_err(|e| match e {
            StoreError::Io { errno } if errno == libc::EWOULDBLOCK => format!(
                "{}: locked by a running lior; stop it first",
                p.dir.display()
            ),
            e => format!("{}: {e}", p.dir.display()),
        })?;
        let mut copies = Vec::new();
        for s in &damaged {
            let from = p.dir.join(segment_file_name(s.base));
            let mut to = p.dir.join(format!("{}.damaged", segment_file_name(s.base)));
            let mut n = 1;
            while to.exists() {
                to = p
                    .dir
                    .join(format!("{}.damaged.{n}", segment_file_name(s.base)));
                n += 1;
            }
            std::fs::copy(&from, &to)
                .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot sync {}: {e}", to.display()))?;
            copies.push(to);
        }
        let cfg = StoreConfig {
            salvage: true,
            ..StoreConfig::default()
        };
        let (store, _) = Store::open(disk, cfg).map_err(|e| format!("{}: {e}", p.dir.display()))?;
        let skipped = damaged
            .iter()
            .flat_map(|s| {
                s.holes
                    .iter()
                    .map(move |h| (s.base, h.offset as u64, h.len as u64))
            })
            .collect();
        out.push(Salvaged {
            dir: p.dir.clone(),
            copies,
            skipped,
            messages: super::QueueStore::stats(&store).messages,
        });
    }
    Ok(out)
}

/// Salvage's result as text: per partition the copies made and each region skipped.
pub fn salvaged_text(dir: &Path, done: &[Salvaged]) -> String {
    let mut out = String::new();
    if done.is_empty() {
        out.push_str(&format!(
            "store salvage {}: no damage found; nothing changed\n",
            dir.display()
        ));
    }
    for p in done {
        for c in &p.copies {
            out.push_str(&format!("copied aside: {}\n", c.display()));
        }
        for (base, off, len) in &p.skipped {
            out.push_str(&format!(
                "skipped: {} offset {off}: {len} bytes\n",
                p.dir.join(segment_file_name(*base)).display()
            ));
        }
        out.push_str(&format!(
            "salvaged {}: {} messages kept\n",
            p.dir.display(),
            p.messages
        ));
    }
    out
}

/// Salvage's result as one JSON object.
pub fn salvaged_json(done: &[Salvaged]) -> serde_json::Value {
    json!({
        "partitions": done.iter().map(|p| json!({
            "dir": p.dir.display().to_string(),
            "copies": p.copies.iter().map(|c| c.display().to_string()).collect::<Vec<_>>(),
            "skipped": p.skipped.iter().map(|(b, o, l)| json!({
                "file": segment_file_name(*b), "offset": o, "bytes": l,
            })).collect::<Vec<_>>(),
            "messages": p.messages,
        })).collect::<Vec<_>>(),
    })
}
