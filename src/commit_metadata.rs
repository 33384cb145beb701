//! The wire format of what paysync commits beside an offset: the completion
//! map (which offsets above the committed position are already finished,
//! delivered or dead-lettered) and the dead-letter look-back time, so that a
//! restarted or newly assigned consumer skips finished events instead of
//! sending them again. Pure and a leaf: configuration imports its limits,
//! the pipeline's tracker, resume decision and committer use its types.
//!
//! A committed offset alone says only "everything below is finished". One
//! slow or retrying event holds its partition's position while thousands of
//! events behind it finish; without the map a crash re-sends all of them.
//!
//! # Encoding (version 1)
//!
//! The metadata is ASCII: `ps1`, a kind letter, then base64url (no padding)
//! of a payload. The payload is `base`, `span` (LEB128 varints), a body, and
//! a CRC-32 (little endian) of everything before it. `base` is the committed
//! offset the map belongs to; `span` is how many offsets from `base` the map
//! describes (above `base + span` nothing is claimed). The body is either
//! run lengths (`r`: alternating unfinished/finished, starting with
//! unfinished, varints) or a bitmap (`b`: bit *i* set when `base + i` is
//! finished, least significant bit first). Upper-case kinds (`R`, `B`) are
//! the same bodies deflated. The encoder writes every kind and keeps the
//! shortest; when even that exceeds the byte budget it keeps the longest
//! prefix of finished ranges that fits, so what is committed is always true
//! and never larger than the budget.
//!
//! # The dead-letter look-back
//!
//! After the map (or alone), `~` and a time in epoch milliseconds: no dead
//! letter for an offset at or above the committed one was written by this
//! group's earlier owners before it. A new owner about to dead-letter such an
//! offset first looks in the dead-letter topic from that time on, and does
//! not write a second copy of one it finds (see `dead_letter::prior`).
//!
//! Decoding trusts nothing: an unknown prefix or kind, bad base64, a bad
//! checksum, a body that does not add up, or a `base` other than the
//! committed offset makes the map unusable ([`MapError`]), and the caller
//! falls back to the committed offset alone.

use std::io::{Read, Write};
use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "ps1";
/// Separates the map from the dead-letter look-back time.
const SINCE_MARK: char = '~';
/// The longest completion map written or read (the broker's default limit
/// is 4096 bytes).
pub const MAX_TEXT: usize = 64 * 1024;
/// The most a deflated body may inflate to (a bitmap of 8 M offsets).
const MAX_INFLATED: u64 = 1024 * 1024;
/// The longest span the encoder tries as a bitmap (8 KiB of bits).
const MAX_BITMAP_SPAN: u64 = 64 * 1024;

/// Whether committed metadata carries a dead-letter look-back time (then the
/// partition's end is worth reading on assignment).
pub fn has_look_back(metadata: &str) -> bool {
    // The base64url alphabet has no `~`.
    metadata.contains(SINCE_MARK)
}

/// The part of a partition earlier owners may have dead-lettered: offsets at
/// or above the committed one up to `until` (the partition's end when this
/// owner took over), in copies written no earlier than `since_ms` (epoch ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookBack {
    pub since_ms: i64,
    pub until: i64,
}

impl LookBack {
    /// Whether an earlier owner may have written a copy of `offset`.
    pub fn covers(&self, offset: i64) -> bool {
        offset < self.until
    }
}

/// Finished offsets above a committed position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompletionMap {
    /// The committed offset the map belongs to.
    pub base: i64,
    /// Sorted, disjoint, non-adjacent ranges of finished offsets, all at or above `base`.
    pub finished: Vec<Range<i64>>,
}

/// Why stored metadata cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("not a paysync completion map (it does not start with {PREFIX:?})")]
    Foreign,
    #[error("unknown completion map kind {0:?}")]
    UnknownKind(char),
    #[error("the completion map is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("the completion map belongs to offset {map}, but the committed offset is {committed}")]
    OtherBase { map: i64, committed: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Runs,
    Bitmap,
}

impl CompletionMap {
    /// How many offsets the map claims as finished.
    pub fn finished_count(&self) -> u64 {
        self.finished.iter().map(|r| (r.end - r.start) as u64).sum()
    }

    /// Whether `offset` is finished according to the map.
    pub fn contains(&self, offset: i64) -> bool {
        let index = self.finished.partition_point(|r| r.end <= offset);
        self.finished.get(index).is_some_and(|r| r.start <= offset)
    }

    /// Everything `maps` know to be finished at or above `base`: each map's
    /// offsets below its own base, and its finished ranges. (Every map holds
    /// facts; a fact about an offset stays true.)
    pub fn union_at<'a>(
        base: i64,
        maps: impl IntoIterator<Item = &'a CompletionMap>,
    ) -> CompletionMap {
        let mut ranges: Vec<Range<i64>> = Vec::new();
        for map in maps {
            ranges.push(base..map.base);
            ranges.extend(map.finished.iter().map(|r| r.start.max(base)..r.end));
        }
        ranges.retain(|r| !r.is_empty());
        ranges.sort_by_key(|r| r.start);
        let mut finished: Vec<Range<i64>> = Vec::new();
        for range in ranges {
            match finished.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => finished.push(range),
            }
        }
        CompletionMap { base, finished }
    }

    /// The shortest encoding of the longest prefix of the map that fits in
    /// `budget` bytes; `None` when nothing is finished or nothing fits.
    /// The second value is how many finished ranges the encoding keeps.
    pub fn encode(&self, budget: usize) -> Option<(String, usize)> {
        if self.finished.is_empty() || budget == 0 {
            return None;
        }
        if let Some(text) = self
            .encode_prefix(self.finished.len())
            .filter(|t| t.len() <= budget)
        {
            return Some((text, self.finished.len()));
        }
        // Find the longest prefix that fits. Longer prefixes are (nearly
        // always) longer texts; the check below keeps the answer honest.
        let (mut fits, mut too_long) = (0, self.finished.len());
        while too_long - fits > 1 {
            let middle = (fits + too_long) / 2;
            match self.encode_prefix(middle) {
                Some(text) if text.len() <= budget => fits = middle,
                _ => too_long = middle,
            }
        }
        let text = self.encode_prefix(fits)?;
        (text.len() <= budget).then_some((text, fits))
    }

    fn encode_prefix(&self, ranges: usize) -> Option<String> {
        let kept = &self.finished[..ranges];
        let span = u64::try_from(kept.last()?.end - self.base).ok()?;
        let base = u64::try_from(self.base).ok()?;
        let mut best: Option<String> = None;
        for body in [Body::Runs, Body::Bitmap] {
            // A bitmap of a long span loses to the runs: skip building it.
            if body == Body::Bitmap && span > MAX_BITMAP_SPAN {
                continue;
            }
            let payload = payload(base, span, body, kept);
            for deflated in [false, true] {
                let bytes = if deflated {
                    deflate(&payload)
                } else {
                    payload.clone()
                };
                let text = format!(
                    "{PREFIX}{}{}",
                    kind_letter(body, deflated),
                    URL_SAFE_NO_PAD.encode(&bytes)
                );
                if best.as_ref().is_none_or(|b| text.len() < b.len()) {
                    best = Some(text);
                }
            }
        }
        best
    }

    /// Reads metadata stored with the committed offset `committed`.
    pub fn decode(text: &str, committed: i64) -> Result<CompletionMap, MapError> {
        let rest = text.strip_prefix(PREFIX).ok_or(MapError::Foreign)?;
        let mut chars = rest.chars();
        let letter = chars.next().ok_or(MapError::Corrupt("no kind"))?;
        let (body, deflated) = match letter {
            'r' => (Body::Runs, false),
            'b' => (Body::Bitmap, false),
            'R' => (Body::Runs, true),
            'B' => (Body::Bitmap, true),
            other => return Err(MapError::UnknownKind(other)),
        };
        let encoded = chars.as_str();
        if encoded.len() > MAX_TEXT {
            return Err(MapError::Corrupt("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| MapError::Corrupt("not base64url"))?;
        let payload = if deflated { inflate(&bytes)? } else { bytes };
        let (content, checksum) = payload
            .split_last_chunk::<4>()
            .ok_or(MapError::Corrupt("too short"))?;
        if crc32fast::hash(content) != u32::from_le_bytes(*checksum) {
            return Err(MapError::Corrupt("checksum mismatch"));
        }
        let mut reader = Varints(content);
        let base = reader.next()?;
        let span = reader.next()?;
        let base = i64::try_from(base).map_err(|_| MapError::Corrupt("base out of range"))?;
        let end = i64::try_from(span)
            .ok()
            .and_then(|span| base.checked_add(span))
            .ok_or(MapError::Corrupt("span out of range"))?;
        if base != committed {
            return Err(MapError::OtherBase {
                map: base,
                committed,
            });
        }
        let finished = match body {
            Body::Runs => runs_body(&mut reader, base, end)?,
            Body::Bitmap => bitmap_body(reader.0, base, span)?,
        };
        Ok(CompletionMap { base, finished })
    }
}

/// The metadata committed with `map.base`: the map, shortened to fit
/// `budget` with the look-back time (which is left out only when it alone
/// does not fit). The second value is how many finished ranges it keeps.
pub fn encode_metadata(
    map: &CompletionMap,
    dead_letters_since: Option<i64>,
    budget: usize,
) -> (String, usize) {
    let since = dead_letters_since
        .map(|ms| format!("{SINCE_MARK}{ms}"))
        .filter(|text| text.len() <= budget)
        .unwrap_or_default();
    match map.encode(budget - since.len()) {
        Some((text, kept)) => (text + &since, kept),
        None => (since, 0),
    }
}

/// Reads metadata committed with the offset `committed`: the completion map
/// (an empty one when there is only a look-back time) and the look-back time.
pub fn decode_metadata(
    text: &str,
    committed: i64,
) -> (Result<CompletionMap, MapError>, Option<i64>) {
    let (map, since) = match text.rsplit_once(SINCE_MARK) {
        Some((map, since)) => match since.parse::<i64>() {
            Ok(ms) if ms >= 0 && since.bytes().all(|b| b.is_ascii_digit()) => (map, Some(ms)),
            _ => {
                return (
                    Err(MapError::Corrupt("bad dead-letter look-back time")),
                    None,
                );
            }
        },
        None => (text, None),
    };
    let map = match map {
        "" if since.is_some() => Ok(CompletionMap {
            base: committed,
            finished: Vec::new(),
        }),
        map => CompletionMap::decode(map, committed),
    };
    (map, since)
}

fn kind_letter(body: Body, deflated: bool) -> char {
    match (body, deflated) {
        (Body::Runs, false) => 'r',
        (Body::Bitmap, false) => 'b',
        (Body::Runs, true) => 'R',
        (Body::Bitmap, true) => 'B',
    }
}

fn payload(base: u64, span: u64, body: Body, finished: &[Range<i64>]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, base);
    put_varint(&mut out, span);
    let base = base as i64;
    match body {
        Body::Runs => {
            let mut cursor = base;
            for range in finished {
                put_varint(&mut out, (range.start - cursor) as u64);
                put_varint(&mut out, (range.end - range.start) as u64);
                cursor = range.end;
            }
        }
        Body::Bitmap => {
            let mut bits = vec![0u8; span.div_ceil(8) as usize];
            for range in finished {
                for offset in range.clone() {
                    let i = (offset - base) as usize;
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
            out.extend_from_slice(&bits);
        }
    }
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

fn runs_body(reader: &mut Varints<'_>, base: i64, end: i64) -> Result<Vec<Range<i64>>, MapError> {
    let mut finished = Vec::new();
    let mut cursor = base;
    while !reader.0.is_empty() {
        let gap = reader.next()?;
        let run = reader.next()?;
        if run == 0 || (gap == 0 && !finished.is_empty()) {
            return Err(MapError::Corrupt("empty run"));
        }
        let start = add(cursor, gap)?;
        let stop = add(start, run)?;
        if stop > end {
            return Err(MapError::Corrupt("runs exceed the span"));
        }
        finished.push(start..stop);
        cursor = stop;
    }
    if cursor != end {
        return Err(MapError::Corrupt("runs do not fill the span"));
    }
    Ok(finished)
}

fn bitmap_body(bits: &[u8], base: i64, span: u64) -> Result<Vec<Range<i64>>, MapError> {
    if bits.len() as u64 != span.div_ceil(8) {
        return Err(MapError::Corrupt("bitmap length does not match the span"));
    }
    let mut finished: Vec<Range<i64>> = Vec::new();
    for i in 0..span {
        if bits[(i / 8) as usize] & (1 << (i % 8)) == 0 {
            continue;
        }
        let offset = base + i as i64;
        match finished.last_mut() {
            Some(last) if last.end == offset => last.end += 1,
            _ => finished.push(offset..offset + 1),
        }
    }
    if span > 0 && finished.last().is_none_or(|r| r.end != base + span as i64) {
        return Err(MapError::Corrupt(
            "the span does not end with a finished offset",
        ));
    }
    Ok(finished)
}

fn add(offset: i64, length: u64) -> Result<i64, MapError> {
    i64::try_from(length)
        .ok()
        .and_then(|length| offset.checked_add(length))
        .ok_or(MapError::Corrupt("offset out of range"))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Varints<'a>(&'a [u8]);

impl Varints<'_> {
    fn next(&mut self) -> Result<u64, MapError> {
        let mut value = 0u64;
        for (i, byte) in self.0.iter().enumerate() {
            if i >= 10 {
                break;
            }
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                break;
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(MapError::Corrupt("bad varint"))
    }
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

fn inflate(bytes: &[u8]) -> Result<Vec<u8>, MapError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|_| MapError::Corrupt("bad deflate stream"))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(MapError::Corrupt("inflates beyond the limit"));
    }
    Ok(out)
}

#[cfg(test)]
// Single ranges of offsets are meant, not vectors of their offsets.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_look_back_time_travels_with_the_map_or_alone() {
        let with_map = map(10, &[12..15]);
        let (text, kept) = encode_metadata(&with_map, Some(1_700_000_000_123), 4000);
        assert_eq!(kept, 1);
        assert!(text.ends_with("~1700000000123"), "{text}");
        assert_eq!(
            decode_metadata(&text, 10),
            (Ok(with_map), Some(1_700_000_000_123))
        );

        let (alone, _) = encode_metadata(&map(10, &[]), Some(5), 4000);
        assert_eq!(alone, "~5");
        assert_eq!(decode_metadata(&alone, 10), (Ok(map(10, &[])), Some(5)));
        // Without a time the text is a version-1 map, as before.
        let (plain, _) = encode_metadata(&map(10, &[12..15]), None, 4000);
        assert_eq!(decode_metadata(&plain, 10), (Ok(map(10, &[12..15])), None));
    }

    #[test]
    fn the_map_gives_way_to_the_look_back_time_within_the_budget() {
        // Irregular gaps and runs, so that no encoding shrinks them much.
        let mut scattered: Vec<Range<i64>> = Vec::new();
        let (mut cursor, mut seed) = (0i64, 12_345u64);
        for _ in 0..400 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let (gap, run) = (1 + (seed >> 33) % 50, 1 + (seed >> 40) % 30);
            cursor += gap as i64;
            scattered.push(cursor..cursor + run as i64);
            cursor += run as i64;
        }
        let long = map(0, &scattered);
        let (text, kept) = encode_metadata(&long, Some(1_700_000_000_123), 200);
        assert!(text.len() <= 200, "{}", text.len());
        assert!(kept < scattered.len());
        let (decoded, since) = decode_metadata(&text, 0);
        assert_eq!(decoded.unwrap().finished, scattered[..kept].to_vec());
        assert_eq!(since, Some(1_700_000_000_123));
        // A budget too small for the time leaves it out rather than overflow.
        assert_eq!(
            encode_metadata(&map(0, &[]), Some(1_700_000_000_123), 8).0,
            ""
        );
    }

    #[test]
    fn a_malformed_look_back_time_makes_the_metadata_unusable() {
        for text in ["~", "~-5", "~12a", "~+5", "ps1r~9999999999999999999999"] {
            let (map, since) = decode_metadata(text, 0);
            assert!(map.is_err(), "{text}");
            assert_eq!(since, None, "{text}");
        }
        assert_eq!(
            decode_metadata("another tool's note", 0).0,
            Err(MapError::Foreign)
        );
    }

    fn map(base: i64, finished: &[Range<i64>]) -> CompletionMap {
        CompletionMap {
            base,
            finished: finished.to_vec(),
        }
    }

    #[test]
    fn a_stuck_event_with_a_long_finished_run_behind_it_is_a_few_bytes() {
        let stuck = map(1_000_000, &[1_000_001..1_300_000]);
        let (text, kept) = stuck.encode(4000).unwrap();
        assert_eq!(kept, 1);
        assert!(text.len() < 32, "{text}");
        assert!(text.starts_with("ps1r"), "runs win for long runs: {text}");
        assert_eq!(CompletionMap::decode(&text, 1_000_000).unwrap(), stuck);
    }

    #[test]
    fn scattered_completions_prefer_the_bitmap() {
        let finished: Vec<Range<i64>> = (0..500).map(|i| 10 + 2 * i..11 + 2 * i).collect();
        let scattered = map(9, &finished);
        let (text, kept) = scattered.encode(4000).unwrap();
        assert_eq!(kept, 500);
        assert!(
            text.starts_with("ps1b") || text.starts_with("ps1B"),
            "{text}"
        );
        assert_eq!(CompletionMap::decode(&text, 9).unwrap(), scattered);
    }

    #[test]
    fn a_map_over_budget_keeps_the_longest_prefix_that_fits() {
        // Random-looking gaps defeat both the bitmap and deflate.
        let mut finished = Vec::new();
        let mut cursor = 0i64;
        for i in 0..5_000i64 {
            cursor += 1 + (i * 7919) % 251;
            let length = 1 + (i * 104_729) % 97;
            finished.push(cursor..cursor + length);
            cursor += length;
        }
        let big = map(0, &finished);
        let (text, kept) = big.encode(600).unwrap();
        assert!(text.len() <= 600, "{} bytes", text.len());
        assert!(kept > 10 && kept < 5_000, "kept {kept}");
        let decoded = CompletionMap::decode(&text, 0).unwrap();
        assert_eq!(decoded.finished, finished[..kept]);
        assert!(big.encode(5).is_none(), "nothing fits in 5 bytes");
    }

    #[test]
    fn nothing_finished_or_no_budget_encodes_nothing() {
        assert_eq!(map(5, &[]).encode(4000), None);
        assert_eq!(map(5, &[6..7]).encode(0), None);
    }

    #[test]
    fn foreign_corrupt_and_misplaced_metadata_is_refused() {
        let (text, _) = map(100, &[102..110, 120..121]).encode(4000).unwrap();
        assert_eq!(
            CompletionMap::decode(&text, 101),
            Err(MapError::OtherBase {
                map: 100,
                committed: 101
            })
        );
        assert_eq!(CompletionMap::decode("", 0), Err(MapError::Foreign));
        assert_eq!(
            CompletionMap::decode("offsets by another tool", 0),
            Err(MapError::Foreign)
        );
        assert_eq!(
            CompletionMap::decode("ps1x", 0),
            Err(MapError::UnknownKind('x'))
        );
        assert!(matches!(
            CompletionMap::decode("ps1r!!!", 0),
            Err(MapError::Corrupt(_))
        ));
        // Flip one character of the payload: the checksum catches it.
        let mut flipped: Vec<char> = text.chars().collect();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == 'A' { 'B' } else { 'A' };
        let flipped: String = flipped.into_iter().collect();
        assert!(matches!(
            CompletionMap::decode(&flipped, 100),
            Err(MapError::Corrupt(_))
        ));
        // A valid checksum over a body that does not add up.
        let mut lying = Vec::new();
        put_varint(&mut lying, 100);
        put_varint(&mut lying, 5);
        put_varint(&mut lying, 1);
        put_varint(&mut lying, 9);
        let crc = crc32fast::hash(&lying);
        lying.extend_from_slice(&crc.to_le_bytes());
        let text = format!("ps1r{}", URL_SAFE_NO_PAD.encode(&lying));
        assert_eq!(
            CompletionMap::decode(&text, 100),
            Err(MapError::Corrupt("runs exceed the span"))
        );
    }

    #[test]
    fn a_deflate_bomb_is_refused() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        let text = format!("ps1B{}", URL_SAFE_NO_PAD.encode(deflate(&zeros)));
        assert_eq!(
            CompletionMap::decode(&text, 0),
            Err(MapError::Corrupt("inflates beyond the limit"))
        );
    }

    #[test]
    fn a_union_keeps_every_fact_at_or_above_its_base() {
        // The group committed 100 with 105..107 finished; this process had
        // reached 103 with 110..112 finished before its commit failed.
        let group = map(100, &[105..107]);
        let own = map(103, &[110..112]);
        let union = CompletionMap::union_at(100, [&group, &own]);
        assert_eq!(union.finished, vec![100..103, 105..107, 110..112]);
        // Another owner moved the group past this process: only the facts above it count.
        let union = CompletionMap::union_at(108, [&own]);
        assert_eq!(union.finished, vec![110..112]);
        assert_eq!(CompletionMap::union_at(7, []), map(7, &[]));
    }

    #[test]
    fn contains_finds_offsets_in_ranges() {
        let m = map(0, &[2..4, 10..11]);
        let inside: Vec<i64> = (0..12).filter(|o| m.contains(*o)).collect();
        assert_eq!(inside, vec![2, 3, 10]);
        assert_eq!(m.finished_count(), 3);
    }

    proptest! {
        /// Any set of finished offsets survives the round trip, whichever
        /// encoding wins.
        #[test]
        fn every_map_round_trips(
            base in 0i64..1_000_000_000_000,
            steps in prop::collection::vec((1i64..300, 1i64..300), 1..200),
        ) {
            let mut finished = Vec::new();
            let mut cursor = base;
            for (gap, length) in steps {
                let start = cursor + gap;
                finished.push(start..start + length);
                cursor = start + length;
            }
            let original = map(base, &finished);
            let (text, kept) = original.encode(1 << 20).unwrap();
            prop_assert_eq!(kept, finished.len());
            prop_assert!(text.is_ascii());
            prop_assert_eq!(CompletionMap::decode(&text, base).unwrap(), original);
        }

        /// Arbitrary text never panics the decoder.
        #[test]
        fn arbitrary_metadata_never_panics(text in "ps1[rbRBx][A-Za-z0-9_-]{0,64}") {
            let _ = CompletionMap::decode(&text, 0);
        }
    }
}
