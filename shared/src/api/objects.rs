//! Objects only where the API's schema says object. serde's derive also reads a struct written
//! as a sequence of its fields, so without this `"data": [[]]` would be a document with every
//! field at its default, and `"header": []` an empty header: a body that violates the schema
//! would be accepted. [`MapOnly`] reads a `T` from a map (a JSON object, a MessagePack map) and
//! refuses anything else with serde's "invalid type ..., expected an object".

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Document, Header, Route};

/// A `T` read from a map only.
#[derive(Debug)]
pub struct MapOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Objects<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Objects<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(Objects(PhantomData)).map(MapOnly)
    }
}

/// A list of `T`, each read from a map only.
struct ListOfObjects<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ListOfObjects<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of objects")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                // No capacity from the length the body claims: it does not size an allocation.
                let mut items = Vec::new();
                while let Some(MapOnly(item)) = seq.next_element::<MapOnly<T>>()? {
                    items.push(item);
                }
                Ok(items)
            }
        }

        d.deserialize_seq(Items(PhantomData)).map(ListOfObjects)
    }
}

/// `data`: documents, each an object.
pub fn documents<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Document>, D::Error> {
    Ok(ListOfObjects::deserialize(d)?.0)
}

/// `chunks`, `matches`: documents, each an object; `null` reads as an empty list (Jina clients
/// send `"matches": null` for unset fields).
pub(super) fn documents_or_null<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<Document>, D::Error> {
    Ok(Option::<ListOfObjects<Document>>::deserialize(d)?.map_or_else(Vec::new, |l| l.0))
}

/// `header`: an object; `null` reads as absent.
pub fn header_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Header, D::Error> {
    Ok(Option::<MapOnly<Header>>::deserialize(d)?.map_or_else(Header::default, |h| h.0))
}

/// `routes`: each an object.
pub(super) fn routes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Route>, D::Error> {
    Ok(ListOfObjects::deserialize(d)?.0)
}
