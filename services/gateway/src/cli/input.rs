//! The inputs of `flowmesh index`: a JSONL file (a document a line), a CSV file (a header row,
//! then a document a record), or a folder of PNG and JPEG images (a document a file).
//!
//! Every source reads its input once, front to back, and keeps a [`Mark`] of what it has
//! consumed: a byte offset (files) or a count of files (folders), the number of the last line,
//! and a SHA-256 of everything consumed (the bytes of a file; the names and sizes of a folder's
//! files). `flowmesh index` records the mark after each acknowledged batch, and on a restart
//! reads up to it again and compares the hash, so it resumes only where the input is unchanged.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use flowmesh_shared::Document;

/// What an input is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON document a line (the gateway's Document: id, text, blob, uri, tags).
    Jsonl,
    /// A header row, a `text` column, an optional `id` column; other columns become tags.
    Csv,
    /// A folder of `.png`, `.jpg` and `.jpeg` files, read recursively in name order.
    Images,
}

impl Format {
    /// The format of `path`: a folder holds images, `.csv` is CSV, anything else JSONL.
    pub fn of(path: &Path) -> Self {
        if path.is_dir() {
            return Self::Images;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Self::Csv,
            _ => Self::Jsonl,
        }
    }

    /// `jsonl`, `csv` or `images`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Images => "images",
        }
    }
}

/// How far a source has read.
#[derive(Clone)]
pub struct Mark {
    /// Bytes consumed (files), or files consumed (folders).
    pub offset: u64,
    /// The last line consumed (files), or the files consumed (folders).
    pub line: u64,
    hash: Sha256,
}

impl Mark {
    fn start() -> Self {
        Self {
            offset: 0,
            line: 0,
            hash: Sha256::new(),
        }
    }

    /// The SHA-256 of everything consumed, in hex.
    pub fn digest(&self) -> String {
        hex(&self.hash.clone().finalize())
    }
}

impl std::fmt::Debug for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mark")
            .field("offset", &self.offset)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

/// A document read from the input, with where it was.
#[derive(Debug)]
pub struct Entry {
    pub doc: Document,
    /// Its first line (files) or its file's number (folders), from 1.
    pub line: u64,
}

/// A part of the input that is not a document: where it is and what is wrong.
#[derive(Debug)]
pub struct Bad {
    /// `line 17`, or `file cats/tabby.gif`.
    pub place: String,
    pub problem: String,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.problem)
    }
}

/// An open input.
pub struct Source {
    kind: Kind,
    mark: Mark,
    /// The input's size: bytes of a file, files of a folder.
    pub total: u64,
    /// The name ids are made from (the file's name).
    name: String,
}

enum Kind {
    Jsonl(BufReader<File>),
    Csv {
        reader: BufReader<File>,
        header: Option<Header>,
    },
    Images {
        root: PathBuf,
        files: Vec<(String, u64)>,
    },
}

/// The columns of a CSV file.
struct Header {
    names: Vec<String>,
    text: usize,
    id: Option<usize>,
}

impl Source {
    /// Opens `path` as `format`.
    pub fn open(path: &Path, format: Format) -> anyhow::Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let open_file = || -> anyhow::Result<(BufReader<File>, u64)> {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let size = file
                .metadata()
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            Ok((BufReader::with_capacity(1 << 16, file), size))
        };
        let (kind, total) = match format {
            Format::Jsonl => {
                let (reader, size) = open_file()?;
                (Kind::Jsonl(reader), size)
            }
            Format::Csv => {
                let (reader, size) = open_file()?;
                (
                    Kind::Csv {
                        reader,
                        header: None,
                    },
                    size,
                )
            }
            Format::Images => {
                anyhow::ensure!(
                    path.is_dir(),
                    "{} is not a folder (--format images reads a folder of images)",
                    path.display()
                );
                let mut files = Vec::new();
                list_images(path, path, &mut files)?;
                files.sort();
                let total = files.len() as u64;
                (
                    Kind::Images {
                        root: path.to_owned(),
                        files,
                    },
                    total,
                )
            }
        };
        Ok(Self {
            kind,
            mark: Mark::start(),
            total,
            name,
        })
    }

    /// What has been consumed so far.
    pub fn mark(&self) -> &Mark {
        &self.mark
    }

    /// The next document; `Ok(None)` at the end; `Ok(Some(Err(bad)))` for a part that is not
    /// a document (the source is then past it). Reading errors are `Err`.
    pub fn next_entry(&mut self) -> anyhow::Result<Option<Result<Entry, Bad>>> {
        match &mut self.kind {
            Kind::Jsonl(reader) => loop {
                let Some(bytes) = read_line(reader, &mut self.mark)? else {
                    return Ok(None);
                };
                let line = self.mark.line;
                let text = trim_line_end(&bytes);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(jsonl_document(text, line, &self.name)));
            },
            Kind::Csv { reader, header } => loop {
                let Some((bytes, first)) = read_record(reader, &mut self.mark)? else {
                    return Ok(None);
                };
                let bad = |problem: String| Bad {
                    place: format!("line {first}"),
                    problem,
                };
                let text = trim_line_end(&bytes);
                if text.is_empty() {
                    continue;
                }
                let Ok(text) = std::str::from_utf8(text) else {
                    return Ok(Some(Err(bad("not UTF-8 text".into()))));
                };
                let fields = match parse_csv(text) {
                    Ok(f) => f,
                    Err(e) => return Ok(Some(Err(bad(e)))),
                };
                match header {
                    None => match Header::new(fields) {
                        Ok(h) => *header = Some(h),
                        Err(e) => return Ok(Some(Err(bad(e)))),
                    },
                    Some(h) => {
                        return Ok(Some(
                            h.document(fields, &self.name)
                                .map(|doc| Entry { doc, line: first })
                                .map_err(bad),
                        ))
                    }
                }
            },
            Kind::Images { root, files } => {
                let Some((name, size)) = usize::try_from(self.mark.offset)
                    .ok()
                    .and_then(|i| files.get(i))
                    .cloned()
                else {
                    return Ok(None);
                };
                self.mark.offset += 1;
                self.mark.line += 1;
                self.mark.hash.update(name.as_bytes());
                self.mark.hash.update(b"\0");
                self.mark.hash.update(size.to_string().as_bytes());
                self.mark.hash.update(b"\n");
                let path = root.join(&name);
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if !is_png(&bytes) && !is_jpeg(&bytes) {
                    return Ok(Some(Err(Bad {
                        place: format!("file {name}"),
                        problem: "not a PNG or JPEG image".into(),
                    })));
                }
                let mut tags = Map::new();
                tags.insert("file".into(), Value::String(name.clone()));
                let doc = Document {
                    id: name,
                    blob: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                    tags: Some(tags),
                    ..Document::default()
                };
                Ok(Some(Ok(Entry {
                    doc,
                    line: self.mark.line,
                })))
            }
        }
    }

    /// `line 17`, or the name of the 17th image.
    pub fn place(&self, line: u64) -> String {
        match &self.kind {
            Kind::Images { files, .. } => usize::try_from(line)
                .ok()
                .and_then(|l| files.get(l.wrapping_sub(1)))
                .map_or_else(|| format!("file {line}"), |(n, _)| format!("file {n}")),
            _ => format!("line {line}"),
        }
    }
}

/// The image files under `dir`, relative to `root` with `/` separators, with their sizes;
/// files and folders whose names start with `.` are left out.
fn list_images(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            list_images(root, &path, out)?;
            continue;
        }
        let image = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| {
                ["png", "jpg", "jpeg"]
                    .iter()
                    .any(|x| e.eq_ignore_ascii_case(x))
            });
        if !image {
            continue;
        }
        let size = std::fs::metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        out.push((relative, size));
    }
    Ok(())
}

fn is_png(b: &[u8]) -> bool {
    b.starts_with(b"\x89PNG\r\n\x1a\n")
}

fn is_jpeg(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// One line with its end, consumed into `mark`; `None` at the end of the file.
fn read_line(reader: &mut BufReader<File>, mark: &mut Mark) -> anyhow::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let n = reader
        .read_until(b'\n', &mut buf)
        .context("cannot read the input")?;
    if n == 0 {
        return Ok(None);
    }
    mark.offset += n as u64;
    mark.line += 1;
    mark.hash.update(&buf);
    Ok(Some(buf))
}

/// One CSV record (lines joined while a quoted field is open) and its first line.
fn read_record(
    reader: &mut BufReader<File>,
    mark: &mut Mark,
) -> anyhow::Result<Option<(Vec<u8>, u64)>> {
    let Some(mut record) = read_line(reader, mark)? else {
        return Ok(None);
    };
    let first = mark.line;
    // An odd number of quotes: a quoted field goes on on the next line.
    while record.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
        match read_line(reader, mark)? {
            Some(more) => record.extend_from_slice(&more),
            None => break,
        }
    }
    Ok(Some((record, first)))
}

fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// A JSONL line as a document: a JSON object in the gateway's Document shape, with a text, a
/// blob or a URI; without an id it gets [`stable_id`].
fn jsonl_document(text: &[u8], line: u64, name: &str) -> Result<Entry, Bad> {
    let bad = |problem: String| Bad {
        place: format!("line {line}"),
        problem,
    };
    let mut doc: Document = serde_json::from_slice(text).map_err(|e| {
        // serde_json ends its message with the position "at line 1 column 7": the line is
        // this one, the column is worth keeping.
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m)
            .to_owned();
        bad(format!("not a document (column {}): {message}", e.column()))
    })?;
    if doc.text.is_none() && doc.blob.is_none() && doc.uri.is_none() {
        return Err(bad("the document has no text, blob or uri".into()));
    }
    if doc.id.is_empty() {
        doc.id = stable_id(name, &doc);
    }
    Ok(Entry { doc, line })
}

impl Header {
    fn new(names: Vec<String>) -> Result<Self, String> {
        let names: Vec<String> = names.into_iter().map(|n| n.trim().to_owned()).collect();
        let find = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
        let Some(text) = find("text") else {
            return Err(format!(
                "the header row has no `text` column (it has: {})",
                names.join(", ")
            ));
        };
        if let Some(empty) = names.iter().position(String::is_empty) {
            return Err(format!(
                "column {} of the header row has no name",
                empty + 1
            ));
        }
        Ok(Self {
            id: find("id"),
            text,
            names,
        })
    }

    /// A record as a document: `text`, `id`, and every other non-empty cell as a string tag.
    fn document(&self, fields: Vec<String>, name: &str) -> Result<Document, String> {
        if fields.len() != self.names.len() {
            return Err(format!(
                "{} field(s), but the header row has {} column(s)",
                fields.len(),
                self.names.len()
            ));
        }
        let mut doc = Document::default();
        let mut tags = Map::new();
        for (i, value) in fields.into_iter().enumerate() {
            if i == self.text {
                doc.text = Some(value);
            } else if Some(i) == self.id {
                doc.id = value.trim().to_owned();
            } else if !value.is_empty() {
                tags.insert(self.names[i].clone(), Value::String(value));
            }
        }
        if doc.text.as_deref().is_none_or(|t| t.trim().is_empty()) {
            return Err("the `text` field is empty".into());
        }
        if !tags.is_empty() {
            doc.tags = Some(tags);
        }
        if doc.id.is_empty() {
            doc.id = stable_id(name, &doc);
        }
        Ok(doc)
    }
}

/// The fields of one CSV record (RFC 4180: commas, double quotes around fields that hold
/// commas, quotes or line breaks, a quote doubled inside them).
fn parse_csv(record: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = record.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => {
                        return Err(format!(
                            "field {} opens a quote that is never closed",
                            fields.len() + 1
                        ))
                    }
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => {
                    return Err(format!(
                        "field {} has {c:?} after its closing quote (a quote inside a quoted field is written \"\")",
                        fields.len() + 1
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => {
                        return Err(format!(
                            "field {} has a quote but does not start with one (quote the whole field, and double the quote)",
                            fields.len() + 1
                        ))
                    }
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// An id for a document that has none, the same every time the same content is read from a
/// file of the same name: `NAME:` and 32 hex digits of the SHA-256 of the document's JSON.
/// Sending the file again replaces these documents instead of adding copies.
pub fn stable_id(name: &str, doc: &Document) -> String {
    let json = serde_json::to_vec(doc).unwrap_or_default();
    let digest = Sha256::digest(&json);
    let stem = Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{stem}:{}", hex(&digest[..16]))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reads `path` as `format` to its end: every document, or the first bad part.
#[cfg(test)]
fn read_all(path: &Path, format: Format) -> anyhow::Result<Result<Vec<Entry>, Bad>> {
    let mut source = Source::open(path, format)?;
    let mut out = Vec::new();
    while let Some(item) = source.next_entry()? {
        match item {
            Ok(e) => out.push(e),
            Err(b) => return Ok(Err(b)),
        }
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn temp(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "flowmesh-cli-input-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn csv_fields_follow_rfc_4180() {
        assert_eq!(parse_csv("a,b,,c").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(
            parse_csv("\"x, y\",\"say \"\"hi\"\"\",z").unwrap(),
            ["x, y", "say \"hi\"", "z"]
        );
        assert_eq!(parse_csv("\"two\nlines\"").unwrap(), ["two\nlines"]);
        assert!(parse_csv("\"open").unwrap_err().contains("never closed"));
        assert!(parse_csv("\"a\"b")
            .unwrap_err()
            .contains("after its closing quote"));
        assert!(parse_csv("a\"b").unwrap_err().contains("field 1"));
    }

    #[test]
    fn csv_records_become_documents_with_tags_and_their_first_line() {
        let path = temp(
            "docs.csv",
            b"id,text,lang\r\nd1,hello,en\r\n,\"multi\nline, text\",fr\n\nd3,third,\n",
        );
        let docs = read_all(&path, Format::Csv).unwrap().unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].doc.id, "d1");
        assert_eq!(docs[0].line, 2);
        assert_eq!(docs[0].doc.tags.as_ref().unwrap()["lang"], "en");
        assert_eq!(docs[1].doc.text.as_deref(), Some("multi\nline, text"));
        assert_eq!(docs[1].line, 3);
        assert!(docs[1].doc.id.starts_with("docs:"), "{}", docs[1].doc.id);
        assert_eq!(docs[2].line, 6);
        assert!(docs[2].doc.tags.is_none(), "an empty cell is no tag");
    }

    #[test]
    fn bad_csv_records_are_named_by_line() {
        let path = temp("bad.csv", b"text,lang\nok,en\ntoo,many,fields\n");
        let bad = read_all(&path, Format::Csv).unwrap().unwrap_err();
        assert_eq!(bad.place, "line 3");
        assert!(bad.problem.contains("3 field(s)"), "{bad}");
        let path = temp("nohead.csv", b"title,lang\nx,y\n");
        let bad = read_all(&path, Format::Csv).unwrap().unwrap_err();
        assert_eq!(bad.place, "line 1");
        assert!(bad.problem.contains("no `text` column"), "{bad}");
    }

    #[test]
    fn jsonl_lines_are_documents_and_ids_are_stable() {
        let path = temp(
            "d.jsonl",
            b"{\"id\":\"a\",\"text\":\"one\"}\n\n{\"text\":\"two\",\"tags\":{\"k\":1}}\n",
        );
        let docs = read_all(&path, Format::Jsonl).unwrap().unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].doc.id, "a");
        assert_eq!(docs[1].line, 3);
        let again = read_all(&path, Format::Jsonl).unwrap().unwrap();
        assert_eq!(
            docs[1].doc.id, again[1].doc.id,
            "the same line, the same id"
        );
        assert!(docs[1].doc.id.starts_with("d:"));
        let other = stable_id("d.jsonl", &Document::text("", "three"));
        assert_ne!(docs[1].doc.id, other);
    }

    #[test]
    fn bad_jsonl_lines_name_the_line_and_the_problem() {
        let path = temp("b.jsonl", b"{\"text\":\"ok\"}\n{\"text\": oops}\n");
        let bad = read_all(&path, Format::Jsonl).unwrap().unwrap_err();
        assert_eq!(bad.place, "line 2");
        assert!(bad.problem.contains("column"), "{bad}");
        let path = temp("e.jsonl", b"{\"tags\":{}}\n");
        let bad = read_all(&path, Format::Jsonl).unwrap().unwrap_err();
        assert!(bad.problem.contains("no text, blob or uri"), "{bad}");
    }

    #[test]
    fn marks_hash_exactly_the_bytes_consumed() {
        let content = b"{\"text\":\"a\"}\n{\"text\":\"b\"}\n";
        let path = temp("m.jsonl", content);
        let mut s = Source::open(&path, Format::Jsonl).unwrap();
        s.next_entry().unwrap().unwrap().unwrap();
        let mark = s.mark().clone();
        assert_eq!(mark.offset, 13);
        assert_eq!(mark.line, 1);
        assert_eq!(mark.digest(), hex(&Sha256::digest(&content[..13])));
    }

    #[test]
    fn folders_give_images_in_name_order_and_refuse_others() {
        let png = temp("b.png", b"\x89PNG\r\n\x1a\nrest");
        let dir = png.parent().unwrap().to_owned();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.JPG"), [0xFF, 0xD8, 0xFF, 0xE0]).unwrap();
        std::fs::write(dir.join("notes.txt"), b"skipped").unwrap();
        std::fs::write(dir.join(".hidden.png"), b"skipped").unwrap();
        let docs = read_all(&dir, Format::Images).unwrap().unwrap();
        let ids: Vec<&str> = docs.iter().map(|d| d.doc.id.as_str()).collect();
        assert_eq!(ids, ["b.png", "sub/a.JPG"]);
        assert_eq!(docs[1].doc.tags.as_ref().unwrap()["file"], "sub/a.JPG");
        assert!(docs[0].doc.blob.is_some());
        std::fs::write(dir.join("c.png"), b"not an image").unwrap();
        let bad = read_all(&dir, Format::Images).unwrap().unwrap_err();
        assert_eq!(bad.place, "file c.png");
    }
}
