//! The built-in sentencizer: splits each document's `text` into sentence chunks.
//!
//! A sentence ends after a run of punctuation characters or at a line break. Sentences shorter
//! than `min_sent_len` characters are dropped, longer ones are cut at `max_sent_len` characters.
//! Chunks get the id `PARENT#N`, carry `parent_id`, and their span in the parent's text (in
//! characters) as `tags.location`, as Jina's Sentencizer does.

use flowmesh_shared::{ApiError, Document};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::guard::ChunkBudget;
use super::spec::FlowError;

/// Sentencizer options (`with:` of a `uses: sentencizer` executor).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sentencizer {
    /// Sentences with fewer characters are dropped.
    #[serde(default = "default_min")]
    pub min_sent_len: usize,
    /// Sentences are cut at this many characters.
    #[serde(default = "default_max")]
    pub max_sent_len: usize,
    /// The characters that end a sentence.
    #[serde(default = "default_punct")]
    pub punct_chars: String,
}

fn default_min() -> usize {
    1
}
fn default_max() -> usize {
    512
}
fn default_punct() -> String {
    "!.?。！？…".to_owned()
}

impl Default for Sentencizer {
    fn default() -> Self {
        Self {
            min_sent_len: default_min(),
            max_sent_len: default_max(),
            punct_chars: default_punct(),
        }
    }
}

impl Sentencizer {
    /// Reads the options of executor `name`.
    pub fn from_settings(name: &str, settings: &Map<String, Value>) -> Result<Self, FlowError> {
        let s: Self = serde_json::from_value(Value::Object(settings.clone())).map_err(|e| {
            FlowError::Executor {
                executor: name.to_owned(),
                problem: format!("bad sentencizer settings: {e}"),
            }
        })?;
        if s.max_sent_len == 0 || s.min_sent_len > s.max_sent_len {
            return Err(FlowError::Executor {
                executor: name.to_owned(),
                problem: "need 0 < min_sent_len <= max_sent_len".into(),
            });
        }
        Ok(s)
    }

    /// Adds sentence chunks to every document that has text and no chunks yet, within the
    /// request's `budget` of chunks (413 beyond it, before the chunks are made).
    pub fn segment(&self, docs: &mut [Document], budget: &ChunkBudget) -> Result<(), ApiError> {
        for doc in docs {
            if !doc.chunks.is_empty() {
                continue;
            }
            if let Some(text) = &doc.text {
                let sentences = self.sentences_at_most(text, budget.per_document());
                if sentences.len() > budget.per_document() {
                    return Err(budget.document_error(&doc.id));
                }
                budget.take(sentences.len())?;
                doc.chunks = sentences
                    .into_iter()
                    .enumerate()
                    .map(|(n, (start, end, sentence))| {
                        let mut tags = Map::new();
                        tags.insert("location".into(), json!([start, end]));
                        Document {
                            id: format!("{}#{n}", doc.id),
                            text: Some(sentence),
                            parent_id: Some(doc.id.clone()),
                            tags: Some(tags),
                            ..Document::default()
                        }
                    })
                    .collect();
            }
        }
        Ok(())
    }

    /// The sentences of `text` with their character spans `[start, end)`.
    pub fn sentences(&self, text: &str) -> Vec<(usize, usize, String)> {
        self.sentences_at_most(text, usize::MAX)
    }

    /// [`sentences`](Self::sentences), stopping after `max + 1` of them: a caller that gets more
    /// than `max` knows the text has too many, without all of them having been made.
    pub fn sentences_at_most(&self, text: &str, max: usize) -> Vec<(usize, usize, String)> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < chars.len() && out.len() <= max {
            let c = chars[i];
            let mut end = None;
            if self.punct_chars.contains(c) {
                let mut j = i + 1;
                while j < chars.len() && self.punct_chars.contains(chars[j]) {
                    j += 1;
                }
                end = Some(j);
            } else if c == '\n' {
                end = Some(i + 1);
            }
            if let Some(j) = end {
                self.push(&chars, start, j, &mut out);
                start = j;
                i = j;
            } else {
                i += 1;
            }
        }
        if out.len() <= max {
            self.push(&chars, start, chars.len(), &mut out);
        }
        out
    }

    fn push(
        &self,
        chars: &[char],
        start: usize,
        end: usize,
        out: &mut Vec<(usize, usize, String)>,
    ) {
        let mut s = start;
        let mut e = end;
        while s < e && chars[s].is_whitespace() {
            s += 1;
        }
        while e > s && chars[e - 1].is_whitespace() {
            e -= 1;
        }
        if e - s < self.min_sent_len || e == s {
            return;
        }
        let e = e.min(s + self.max_sent_len);
        out.push((s, e, chars[s..e].iter().collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &Sentencizer, t: &str) -> Vec<String> {
        s.sentences(t).into_iter().map(|(_, _, x)| x).collect()
    }

    #[test]
    fn splits_on_punctuation_and_newlines() {
        let s = Sentencizer::default();
        assert_eq!(
            texts(&s, "A man is riding a horse. Is it white?! Yes\nNo end"),
            vec!["A man is riding a horse.", "Is it white?!", "Yes", "No end"]
        );
        assert_eq!(
            texts(&s, "日本語です。次の文！"),
            vec!["日本語です。", "次の文！"]
        );
        assert!(texts(&s, "   ").is_empty());
    }

    #[test]
    fn min_and_max_lengths_apply() {
        let s = Sentencizer {
            min_sent_len: 4,
            max_sent_len: 5,
            ..Sentencizer::default()
        };
        assert_eq!(texts(&s, "Hi. Hello world. Ok."), vec!["Hello"]);
    }

    #[test]
    fn chunks_carry_parent_and_location() {
        let mut docs = vec![Document::text("d", "One. Two.")];
        Sentencizer::default()
            .segment(&mut docs, &ChunkBudget::default())
            .unwrap();
        let c = &docs[0].chunks;
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].id, "d#1");
        assert_eq!(c[1].parent_id.as_deref(), Some("d"));
        assert_eq!(c[1].tags.as_ref().unwrap()["location"], json!([5, 9]));
    }

    #[test]
    fn a_text_with_too_many_sentences_is_a_413_naming_the_flag() {
        let s = Sentencizer::default();
        assert_eq!(s.sentences_at_most(&"A b. ".repeat(1000), 3).len(), 4);
        let budget = crate::flow::guard::GatewayLimits {
            max_chunks_per_document: 3,
            ..crate::flow::guard::GatewayLimits::defaults()
        }
        .chunk_budget();
        let mut docs = vec![Document::text("d", "A. B. C. D.")];
        let err = s.segment(&mut docs, &budget).unwrap_err();
        assert_eq!(err.status(), 413);
        assert!(
            err.to_string().contains("--max-chunks-per-document"),
            "{err}"
        );
        assert!(docs[0].chunks.is_empty());
    }
}
