//! Reading a server's answer (a JSON body, or one event's data) for the lists it holds, without
//! a tree of it.
//!
//! SECURITY: an answer is the server's text, up to `max_message_bytes` (8 MiB by default). As a
//! `serde_json::Value` tree, 8 MiB of `[[],[],…]` took about 30 times its size, and every JSON
//! answer was read so (a list may hide in any message's `result`), on a worker every tenant
//! shares. Only what the filter decides on is kept: each message's `id`, and of each list its
//! place in the text and its items, as the server wrote them, with the names that decide them.
//! Everything else is read for its syntax and dropped ([`ServerSkip`]): valid JSON, valid
//! UTF-8, no object repeating a key, within serde_json's nesting limit, as a whole parse reads
//! it. A filtered answer is the server's text with its lists' arrays written anew, every other
//! byte as it was.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::jsonrpc::{IdAs, Key, Keys, ListKind, ServerSkip, SkipVisitor, TextAs, MESSAGE_MEMBERS};

/// The lists of one answer, in the order they stand in its text.
#[derive(Debug, Default)]
pub struct Answer<'a> {
    pub lists: Vec<List<'a>>,
}

/// One list: a list field's array in a message's `result`.
#[derive(Debug)]
pub struct List<'a> {
    pub kind: ListKind,
    /// Where the array stands in the answer's text.
    pub span: Range<usize>,
    pub items: Vec<Item<'a>>,
}

/// One item of a list.
#[derive(Debug)]
pub struct Item<'a> {
    /// The item as the server wrote it.
    pub text: &'a str,
    /// What names it for the policy: its `name`, `uri` or `uriTemplate`.
    pub name: String,
}

/// Why an answer could not be read for its lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Not JSON, or not what a server answers with a list (the text is for the agent, and
    /// quotes nothing the server wrote).
    Unreadable(String),
    /// Its lists hold more items than the reader was allowed.
    TooManyItems,
}

/// Reads `text` (one message or a batch) for its lists: each list field of each message's
/// `result`, and the list each message answering one of `list_ids` owes. At most `max_items`
/// items, all lists together.
pub fn read<'a>(
    text: &'a [u8],
    list_ids: &[(Value, ListKind)],
    max_items: usize,
) -> Result<Answer<'a>, ReadError> {
    let reader = Reader {
        base: text.as_ptr() as usize,
        list_ids,
        max_items,
        items: Cell::new(0),
        failure: RefCell::new(None),
        lists: RefCell::new(Vec::new()),
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let read = AnswerSeed(&reader)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(failure) = reader.failure.take() {
        return Err(failure);
    }
    read.map_err(|e| ReadError::Unreadable(e.to_string()))?;
    Ok(Answer {
        lists: reader.lists.into_inner(),
    })
}

/// What the visits share: the lists found so far, and the failure that ended the reading
/// (serde's errors carry text only).
struct Reader<'a, 'r> {
    /// The address of the answer's first byte: where a borrowed piece of it stands.
    base: usize,
    list_ids: &'r [(Value, ListKind)],
    max_items: usize,
    items: Cell<usize>,
    failure: RefCell<Option<ReadError>>,
    lists: RefCell<Vec<List<'a>>>,
}

impl<'a> Reader<'a, '_> {
    /// Ends the reading with `failure`.
    fn fail<E: de::Error>(&self, failure: ReadError) -> E {
        let text = match &failure {
            ReadError::Unreadable(text) => text.clone(),
            ReadError::TooManyItems => "too many list items".to_string(),
        };
        self.failure.borrow_mut().get_or_insert(failure);
        E::custom(text)
    }

    /// Refuses `key` when it spells one of `known` in another case. SECURITY: a client that
    /// matches names ignoring case (Go's `encoding/json`) reads `Result` as `result`: a list
    /// under it would reach it unfiltered. (The name is the server's: not quoted.)
    fn misspelt<E: de::Error>(&self, key: &str, known: &[&str], what: &str) -> Result<(), E> {
        match known
            .iter()
            .find(|name| crate::json_names::misspelt([key], name).is_some())
        {
            Some(name) => Err(self.fail(ReadError::Unreadable(format!(
                "{what} holds `{name}` spelt in another case, which clients that match names \
                 ignoring case would read"
            )))),
            None => Ok(()),
        }
    }

    /// Where `piece`, borrowed from the answer, stands in it.
    fn span(&self, piece: &str) -> Range<usize> {
        let start = piece.as_ptr() as usize - self.base;
        start..start + piece.len()
    }
}

/// The whole answer: one message, a batch, or (holding no list) anything else.
struct AnswerSeed<'a, 'r, 'x>(&'x Reader<'a, 'r>);

impl<'a> DeserializeSeed<'a> for AnswerSeed<'a, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'a>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for AnswerSeed<'a, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(());
    fn visit_map<A: MapAccess<'a>>(self, map: A) -> Result<(), A::Error> {
        MessageSeed(self.0).visit_map(map)
    }
    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(MessageSeed(self.0))?.is_some() {}
        Ok(())
    }
}

/// One message: its lists join the reader's when it ends.
struct MessageSeed<'a, 'r, 'x>(&'x Reader<'a, 'r>);

impl<'a> DeserializeSeed<'a> for MessageSeed<'a, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'a>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for MessageSeed<'a, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(());
    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<(), A::Error> {
        SkipVisitor::<false>.visit_seq(seq).map(drop)
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        let reader = self.0;
        let mut keys = Keys::<false>::default();
        let mut id = None;
        let mut result = None;
        while let Some(key) = map.next_key_seed(Key)? {
            reader.misspelt(&key, MESSAGE_MEMBERS, "a message")?;
            match &*key {
                "id" => id = map.next_value_seed(IdAs::<false>)?,
                "result" => result = Some(map.next_value_seed(ResultSeed(reader))?),
                _ => {
                    map.next_value::<ServerSkip>()?;
                }
            }
            keys.add(&key)?;
        }
        keys.end()?;
        let Some(result) = result else {
            return Ok(());
        };
        let answers = id.and_then(|id| {
            reader
                .list_ids
                .iter()
                .find(|(listed, _)| *listed == id)
                .map(|(_, kind)| *kind)
        });
        let fields = match result {
            ResultRead::Object(fields) => fields,
            ResultRead::Other => Default::default(),
        };
        for (kind, field) in ListKind::ALL.into_iter().zip(fields) {
            match field {
                Some(Field::List(list)) => reader.lists.borrow_mut().push(list),
                None if answers != Some(kind) => {}
                _ => {
                    return Err(reader.fail(ReadError::Unreadable(format!(
                        "a `{}` result without a `{}` array",
                        kind.method(),
                        kind.field()
                    ))))
                }
            }
        }
        Ok(())
    }
}

/// A message's `result`: when it is an object, its list fields, in [`ListKind::ALL`]'s order.
enum ResultRead<'a> {
    Object([Option<Field<'a>>; 4]),
    Other,
}

/// A list field of a `result`.
enum Field<'a> {
    List(List<'a>),
    NotAnArray,
}

struct ResultSeed<'a, 'r, 'x>(&'x Reader<'a, 'r>);

impl<'a> DeserializeSeed<'a> for ResultSeed<'a, '_, '_> {
    type Value = ResultRead<'a>;

    fn deserialize<D: Deserializer<'a>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for ResultSeed<'a, '_, '_> {
    type Value = ResultRead<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(ResultRead::Other);
    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<Self::Value, A::Error> {
        SkipVisitor::<false>
            .visit_seq(seq)
            .map(|_| ResultRead::Other)
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let reader = self.0;
        let list_fields = ListKind::ALL.map(ListKind::field);
        let mut keys = Keys::<false>::default();
        let mut fields: [Option<Field<'a>>; 4] = Default::default();
        while let Some(key) = map.next_key_seed(Key)? {
            reader.misspelt(&key, &list_fields, "a result")?;
            match list_fields.iter().position(|field| *field == key) {
                Some(at) => {
                    // Kept as the server wrote it, then read again item by item.
                    let array: &'a RawValue = map.next_value()?;
                    fields[at] = Some(read_list(reader, ListKind::ALL[at], array.get())?);
                }
                None => {
                    map.next_value::<ServerSkip>()?;
                }
            }
            keys.add(&key)?;
        }
        keys.end()?;
        Ok(ResultRead::Object(fields))
    }
}

/// Reads a list field's value, `text` (borrowed from the answer): each item's text and name.
fn read_list<'a, E: de::Error>(
    reader: &Reader<'a, '_>,
    kind: ListKind,
    text: &'a str,
) -> Result<Field<'a>, E> {
    let mut de = serde_json::Deserializer::from_str(text);
    if !text.starts_with('[') {
        // Read for its syntax all the same, as everything else is.
        de::Deserialize::deserialize(&mut de)
            .map(|_: ServerSkip| Field::NotAnArray)
            .map_err(E::custom)
    } else {
        let mut items = Vec::new();
        ItemsSeed {
            reader,
            kind,
            items: &mut items,
        }
        .deserialize(&mut de)
        .map_err(E::custom)?;
        Ok(Field::List(List {
            kind,
            span: reader.span(text),
            items,
        }))
    }
}

/// A list's items, each kept as the server wrote it with its name.
struct ItemsSeed<'a, 'r, 'x, 'v> {
    reader: &'x Reader<'a, 'r>,
    kind: ListKind,
    items: &'v mut Vec<Item<'a>>,
}

impl<'a> DeserializeSeed<'a> for ItemsSeed<'a, '_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'a>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'a> Visitor<'a> for ItemsSeed<'a, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
        let reader = self.reader;
        while let Some(item) = seq.next_element::<&'a RawValue>()? {
            // Counted before it is read: past the bound nothing more is kept.
            let count = reader.items.get() + 1;
            if count > reader.max_items {
                return Err(reader.fail(ReadError::TooManyItems));
            }
            reader.items.set(count);
            let text = item.get();
            let mut de = serde_json::Deserializer::from_str(text);
            let name = NameSeed {
                reader,
                key: self.kind.item_key(),
            }
            .deserialize(&mut de)
            .map_err(de::Error::custom)?;
            let Some(name) = name else {
                return Err(reader.fail(ReadError::Unreadable(format!(
                    "an item of `{}` without a string `{}`",
                    self.kind.field(),
                    self.kind.item_key()
                ))));
            };
            self.items.push(Item { text, name });
        }
        Ok(())
    }
}

/// A list item's name: its member `key` when the item is an object and that member a string.
struct NameSeed<'a, 'r, 'x> {
    reader: &'x Reader<'a, 'r>,
    key: &'static str,
}

impl<'a, 'de> DeserializeSeed<'de> for NameSeed<'a, '_, '_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'a, 'de> Visitor<'de> for NameSeed<'a, '_, '_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(None);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        SkipVisitor::<false>.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = Keys::<false>::default();
        let mut name = None;
        while let Some(key) = map.next_key_seed(Key)? {
            self.reader.misspelt(&key, &[self.key], "a list item")?;
            if key == self.key {
                name = map.next_value_seed(TextAs::<false>)?;
            } else {
                map.next_value::<ServerSkip>()?;
            }
            keys.add(&key)?;
        }
        keys.end()?;
        Ok(name)
    }
}
