//! Text for a service with a length limit and a markup of its own: the text as pieces, each
//! one character as it is written out (escaped) with what it counts towards the limit, so a
//! text can be cut ([`capped`]) or split into messages ([`split`]) without ever breaking an
//! escape, an entity, a surrogate pair or a piece of markup. Pure.

/// One unit of a text being capped or split: what is written out and what it counts towards
/// the service's limit. A piece is never split; markup a caller wants kept whole (a tag pair
/// with its text) is one piece.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub cost: usize,
}

impl Piece {
    pub fn new(text: impl Into<String>, cost: usize) -> Piece {
        Piece {
            text: text.into(),
            cost,
        }
    }
}

/// The pieces joined, cut to at most `limit` (counting each piece's cost) and ended with
/// `…` when cut. Pieces are never split, so the cut never lands inside an escape, an entity
/// or a surrogate pair.
pub fn capped(pieces: Vec<Piece>, limit: usize) -> String {
    cap(pieces, limit).into_iter().map(|p| p.text).collect()
}

/// The pieces that fit within `limit`, the last one `…` (one UTF-16 unit, one character)
/// when some had to go.
pub fn cap(pieces: Vec<Piece>, limit: usize) -> Vec<Piece> {
    let total: usize = pieces.iter().map(|p| p.cost).sum();
    if total <= limit {
        return pieces;
    }
    if limit == 0 {
        return Vec::new();
    }
    let room = limit - 1;
    let mut used = 0;
    let mut kept: Vec<Piece> = pieces
        .into_iter()
        .take_while(|piece| {
            used += piece.cost;
            used <= room
        })
        .collect();
    kept.push(Piece::new("…", 1));
    kept
}

/// The pieces as messages of at most `limit` each, in order. A message ends at the last line
/// break that fits, so lines stay whole where they can; a line longer than a message is split
/// between two pieces. Line breaks at a message's edges are dropped and a message of nothing
/// but white space is left out, since a service refuses an empty text. A piece costlier than
/// `limit` gets a message of its own (callers keep markup pieces short).
pub fn split(pieces: Vec<Piece>, limit: usize) -> Vec<String> {
    let mut messages = Vec::new();
    let mut current: Vec<Piece> = Vec::new();
    let mut used = 0;
    for piece in pieces {
        while used + piece.cost > limit && !current.is_empty() {
            // Back to the last line break, when the message holds one past its start; what
            // follows it opens the next message (or, still too long with this piece, is a
            // message of its own on the next round).
            let cut = current
                .iter()
                .rposition(|p| p.text == "\n")
                .filter(|&at| at > 0)
                .map_or(current.len(), |at| at + 1);
            let rest = current.split_off(cut);
            messages.push(std::mem::take(&mut current));
            used = rest.iter().map(|p| p.cost).sum();
            current = rest;
        }
        used += piece.cost;
        current.push(piece);
    }
    messages.push(current);
    messages
        .into_iter()
        .map(|pieces| {
            let text: String = pieces.into_iter().map(|p| p.text).collect();
            text.trim_matches('\n').to_owned()
        })
        .filter(|text| !text.trim().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(text: &str) -> Vec<Piece> {
        text.chars().map(|c| Piece::new(c, 1)).collect()
    }

    #[test]
    fn capping_keeps_whole_pieces_and_marks_the_cut() {
        assert_eq!(capped(chars("abcdef"), 6), "abcdef");
        assert_eq!(capped(chars("abcdef"), 4), "abc…");
        assert_eq!(capped(chars("abcdef"), 0), "");
        let pieces = vec![
            Piece::new("a", 1),
            Piece::new("&amp;", 1),
            Piece::new("b", 1),
        ];
        assert_eq!(capped(pieces.clone(), 3), "a&amp;b");
        assert_eq!(capped(pieces, 2), "a…");
    }

    #[test]
    fn splitting_ends_messages_at_line_breaks_and_cuts_long_lines() {
        assert_eq!(split(chars("ab\ncd\nef"), 100), ["ab\ncd\nef"]);
        assert_eq!(split(chars("ab\ncd\nef"), 6), ["ab\ncd", "ef"]);
        assert_eq!(split(chars("abcdefgh"), 3), ["abc", "def", "gh"]);
        assert_eq!(split(chars("ab\n\n\ncd"), 3), ["ab", "cd"]);
        assert_eq!(split(chars("\n\n"), 1), Vec::<String>::new());
        // A piece is never split, and one larger than a message has one of its own.
        let pieces = vec![Piece::new("<b>xy</b>", 2), Piece::new("z", 1)];
        assert_eq!(split(pieces, 2), ["<b>xy</b>", "z"]);
        let pieces = vec![Piece::new("a", 1), Piece::new("<b>long</b>", 4)];
        assert_eq!(split(pieces, 2), ["a", "<b>long</b>"]);
    }

    #[test]
    fn every_split_message_is_within_the_limit() {
        let text = "word ".repeat(300) + "\n" + &"x".repeat(999) + "\nend";
        for limit in [7, 50, 100, 1000] {
            let messages = split(chars(&text), limit);
            assert!(
                messages.iter().all(|m| m.chars().count() <= limit),
                "{limit}"
            );
            let joined: String = messages.concat();
            let expected: String = text.chars().filter(|c| *c != '\n').collect();
            assert_eq!(joined.replace('\n', ""), expected, "{limit}: nothing lost");
        }
    }
}
