//! Full-text search over message bodies (Client-Server API §"Server Side Search").
//!
//! An inverted index in RocksDB: for every `m.room.message` (and room name
//! and topic) the distinct lower-cased words of its text are stored as
//! `(room, word, position) → event`, in the event's own append batch. A query
//! matches events containing every word of the search term (prefix matching
//! on the last word would be a later refinement), newest first.

use std::collections::{BTreeSet, HashMap};

use myelin_storage::{Batch, Direction, Table, catalog};

use super::{Pdu, RoomError, Rooms};

const WORDS: Table<(u64, String, i64), u64> = Table::new(&catalog::ROOMWORDCOUNT_EVENT);

/// The distinct index words of a text: alphanumeric runs, lower-cased, 1–64 chars.
pub fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.chars().count() <= 64)
        .map(str::to_lowercase)
        .collect()
}

fn searchable_text(pdu: &Pdu) -> Option<String> {
    let content = pdu.content_value();
    let field = match pdu.kind.to_string().as_str() {
        "m.room.message" => "body",
        "m.room.name" => "name",
        "m.room.topic" => "topic",
        _ => return None,
    };
    content[field].as_str().map(str::to_owned)
}

impl Rooms {
    /// Adds the search rows of an accepted timeline event to `batch`.
    pub(super) fn index_search(
        &self,
        batch: &mut Batch,
        pdu: &Pdu,
        short: u64,
        count: i64,
        room: u64,
    ) -> Result<(), RoomError> {
        if let Some(text) = searchable_text(pdu) {
            for word in words(&text).into_iter().take(256) {
                WORDS.put(batch, &(room, word, count), &short)?;
            }
        }
        Ok(())
    }

    /// Adds the deletions of an event's search rows to `batch` (a history purge).
    pub(super) fn unindex_search(&self, batch: &mut Batch, pdu: &Pdu, count: i64, room: u64) {
        if let Some(text) = searchable_text(pdu) {
            for word in words(&text).into_iter().take(256) {
                WORDS.delete(batch, &(room, word, count));
            }
        }
    }

    /// Events of `room_short` whose text holds every word of `term`: `(count, short id)`, newest first.
    pub fn search_room(&self, room_short: u64, term: &str) -> Result<Vec<(i64, u64)>, RoomError> {
        let wanted = words(term);
        let mut hits: Option<HashMap<i64, u64>> = None;
        for word in &wanted {
            let mut found = HashMap::new();
            for row in WORDS.prefix(&*self.db, &(room_short, word.clone()), Direction::Forward)? {
                let ((_, _, count), short) = row?;
                found.insert(count, short);
            }
            hits = Some(match hits {
                None => found,
                Some(prev) => prev.into_iter().filter(|(c, _)| found.contains_key(c)).collect(),
            });
        }
        let mut out: Vec<(i64, u64)> = hits.unwrap_or_default().into_iter().collect();
        out.sort_by(|a, b| b.cmp(a));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_distinct_alphanumeric_runs() {
        let w: Vec<String> = words("Deploy v2.1 — DEPLOY failed: see #ops!").into_iter().collect();
        assert_eq!(w, ["1", "deploy", "failed", "ops", "see", "v2"]);
        assert!(words("").is_empty());
    }
}
