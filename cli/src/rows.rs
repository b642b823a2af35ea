//! The rows of a batch file, one at a time with their file line: CSV (header row = field
//! names, cells trimmed but for `password`, empty cells absent, the columns a results file adds
//! read past) or NDJSON (one JSON object per non-blank line). Nothing is held
//! but the row being read: a row (or CSV record) over `MAX_ROW_BYTES` is refused, and the file
//! may have any number of lines.

use std::{
    cell::Cell,
    fmt::Display,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    rc::Rc,
};

use serde_json::{Map, Value};

use crate::{
    exit::{Failure, Problem, Result},
    fields,
};

/// Longest row: the API's limit for one NDJSON item.
pub const MAX_ROW_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// By extension: `.csv`, `.ndjson` or `.jsonl`.
    pub fn of(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("ndjson" | "jsonl") => Ok(Self::Ndjson),
            _ => Err(Failure::invalid(format!(
                "{}: the file must end in .csv, .ndjson or .jsonl",
                path.display()
            ))),
        }
    }
}

/// One row: its first line in the file, and its fields or why they could not be read.
pub struct Row {
    pub line: u64,
    pub fields: std::result::Result<Map<String, Value>, Problem>,
}

/// A reader that fails once more than `MAX_ROW_BYTES` were read past `floor` (the end of the
/// last whole CSV record), so one endless record cannot fill the memory.
pub struct Bounded<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    floor: Rc<Cell<u64>>,
}

/// `Bounded`'s refusal: the record begun after its floor is longer than `MAX_ROW_BYTES`.
#[derive(Debug)]
struct RowTooLong;

impl Display for RowTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a row is longer than {MAX_ROW_BYTES} bytes (is a quote opened there and never \
             closed?)"
        )
    }
}

impl std::error::Error for RowTooLong {}

/// Whether the CSV reader's `e` is `Bounded`'s refusal.
fn too_long(e: &csv::Error) -> bool {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.get_ref().is_some_and(|e| e.is::<RowTooLong>()),
        _ => false,
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read.get().saturating_sub(self.floor.get()) > MAX_ROW_BYTES + 8192 {
            return Err(std::io::Error::other(RowTooLong));
        }
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Lines counted up to a byte of a file, reading it forward once beside the CSV reader, which
/// does not count the blank lines it skips in its own line numbers. A line ends as the CSV
/// reader ends a record: `\n`, `\r\n` or a lone `\r`.
pub struct LineCounter {
    reader: BufReader<File>,
    /// The byte read up to, and the line it is on (from 1).
    byte: u64,
    line: u64,
    /// Whether the last byte counted was `\r` (a `\n` right after it ends no other line).
    after_cr: bool,
}

impl LineCounter {
    fn new(file: File) -> Self {
        Self {
            reader: BufReader::new(file),
            byte: 0,
            line: 1,
            after_cr: false,
        }
    }

    /// The line of the record the CSV reader placed at byte `at` (the end of the record before
    /// it: the line breaks and blank lines between them are passed over); `at` never goes back.
    fn line_of(&mut self, at: u64) -> std::io::Result<u64> {
        loop {
            let buf = self.reader.fill_buf()?;
            let before = usize::try_from(at.saturating_sub(self.byte)).unwrap_or(usize::MAX);
            let take = if before > 0 {
                buf.len().min(before)
            } else {
                buf.iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count()
            };
            if take == 0 {
                return Ok(self.line);
            }
            for &b in &buf[..take] {
                if b == b'\r' || (b == b'\n' && !self.after_cr) {
                    self.line += 1;
                }
                self.after_cr = b == b'\r';
            }
            self.byte += take as u64;
            self.reader.consume(take);
        }
    }
}

/// UTF-8's byte-order mark, which some editors write at the start of a file.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// The rows of a file, in order.
pub enum Rows {
    Csv {
        path: PathBuf,
        reader: Box<csv::Reader<Bounded<File>>>,
        headers: Vec<String>,
        /// A results file's (`a_results_file`): its cells were written by `never_a_formula`.
        results: bool,
        floor: Rc<Cell<u64>>,
        record: csv::StringRecord,
        lines: LineCounter,
    },
    Ndjson {
        path: PathBuf,
        reader: BufReader<File>,
        line: u64,
        buf: Vec<u8>,
    },
}

impl Rows {
    /// A CSV file's header row, in the file's order; `None` for NDJSON.
    pub fn headers(&self) -> Option<&[String]> {
        match self {
            Self::Csv { headers, .. } => Some(headers),
            Self::Ndjson { .. } => None,
        }
    }

    /// The rows of the file at `path`; a folder, or a file that cannot be opened, is refused
    /// naming it.
    pub fn open(path: &Path, format: Format) -> Result<Self> {
        not_a_folder(path)?;
        let file = File::open(path).map_err(|e| unreadable(path, e))?;
        match format {
            Format::Ndjson => Ok(Self::Ndjson {
                path: path.to_owned(),
                reader: BufReader::new(file),
                line: 0,
                buf: Vec::new(),
            }),
            Format::Csv => {
                let floor = Rc::new(Cell::new(0));
                let bounded = Bounded {
                    inner: file,
                    read: Rc::new(Cell::new(0)),
                    floor: floor.clone(),
                };
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(true)
                    .from_reader(bounded);
                let headers: Vec<String> = reader
                    .headers()
                    .map_err(|e| {
                        // By its line in the file, as a row's fault is; an endless header row
                        // from its first line.
                        let at = if too_long(&e) {
                            Some(0)
                        } else {
                            e.position()
                                .filter(|_| !matches!(e.kind(), csv::ErrorKind::Io(_)))
                                .map(csv::Position::byte)
                        };
                        let line = at.and_then(|at| {
                            let file = File::open(path).ok()?;
                            LineCounter::new(file).line_of(at).ok()
                        });
                        csv_failure(path, &e, line)
                    })?
                    .iter()
                    .map(|h| h.trim().to_owned())
                    .collect();
                check_headers(path, &headers)?;
                floor.set(reader.position().byte());
                let again = File::open(path).map_err(|e| unreadable(path, e))?;
                Ok(Self::Csv {
                    path: path.to_owned(),
                    reader: Box::new(reader),
                    results: a_results_file(&headers),
                    headers,
                    floor,
                    record: csv::StringRecord::new(),
                    lines: LineCounter::new(again),
                })
            }
        }
    }

    /// The next row, `None` at the end; an error the file cannot be read past.
    pub fn next_row(&mut self) -> Result<Option<Row>> {
        match self {
            Self::Csv {
                path,
                reader,
                headers,
                results,
                floor,
                record,
                lines,
            } => {
                let more = match reader.read_record(record) {
                    Ok(more) => more,
                    Err(e) => {
                        // The reader's own line number does not count the blank lines it skipped.
                        // A record too long to hold is named by the line it begins on: the
                        // first after the last whole record.
                        let at = match e.position() {
                            _ if too_long(&e) => Some(floor.get()),
                            Some(at) if !matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                                Some(at.byte())
                            }
                            _ => None,
                        };
                        let line = match at {
                            Some(at) => Some(lines.line_of(at).map_err(|e| unreadable(path, e))?),
                            None => None,
                        };
                        return Err(csv_failure(path, &e, line));
                    }
                };
                floor.set(reader.position().byte());
                if !more {
                    return Ok(None);
                }
                let line = match record.position() {
                    Some(at) => lines.line_of(at.byte()).map_err(|e| unreadable(path, e))?,
                    None => 0,
                };
                if record.iter().all(|c| c.trim().is_empty()) {
                    return Ok(Some(Row {
                        line,
                        fields: Err(Problem::new("", "the row is empty")),
                    }));
                }
                if record.len() != headers.len() {
                    let message = format!(
                        "the row has {} cells; the header has {}",
                        record.len(),
                        headers.len()
                    );
                    return Ok(Some(Row {
                        line,
                        fields: Err(Problem::new("", message)),
                    }));
                }
                let mut fields = Map::new();
                for (name, value) in headers.iter().zip(record.iter()) {
                    // A results file's cells as the text they were made from (a `'` that
                    // keeps a spreadsheet from running one is not part of it).
                    // Spaces around a cell (`a.example, Acme` typed by hand) are not part of
                    // its value, but for a password, whose every character counts, and in a
                    // results file, whose cells are the fields' text as it was submitted.
                    let value = if *results {
                        as_written(value)
                    } else if name == "password" {
                        value
                    } else {
                        value.trim()
                    };
                    if !value.is_empty() && !RESULT_COLUMNS.contains(&name.as_str()) {
                        fields.insert(name.clone(), fields::cell(name, value));
                    }
                }
                Ok(Some(Row {
                    line,
                    fields: Ok(fields),
                }))
            }
            Self::Ndjson {
                path,
                reader,
                line,
                buf,
            } => loop {
                buf.clear();
                // The first line may open with a byte-order mark, besides its row.
                let mark = if *line == 0 {
                    BYTE_ORDER_MARK.len() as u64
                } else {
                    0
                };
                let n = reader
                    .by_ref()
                    .take(MAX_ROW_BYTES + 1 + mark)
                    .read_until(b'\n', buf)
                    .map_err(|e| unreadable(path, e))?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                // A byte-order mark opening the file (Windows editors write one), as a CSV
                // file's is: not part of the first row.
                if *line == 1 && buf.starts_with(BYTE_ORDER_MARK) {
                    buf.drain(..BYTE_ORDER_MARK.len());
                }
                if buf.len() as u64 > MAX_ROW_BYTES && buf.last() != Some(&b'\n') {
                    skip_line(reader).map_err(|e| unreadable(path, e))?;
                    return Ok(Some(Row {
                        line: *line,
                        fields: Err(Problem::new(
                            "",
                            format!("a row may be at most {MAX_ROW_BYTES} bytes"),
                        )),
                    }));
                }
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let fields = match serde_json::from_slice::<Value>(buf) {
                    Ok(Value::Object(map)) => Ok(map),
                    Ok(_) => Err(Problem::new("", "a row must be a JSON object")),
                    Err(e) => Err(Problem::new("", format!("not valid JSON: {e}"))),
                };
                return Ok(Some(Row {
                    line: *line,
                    fields,
                }));
            },
        }
    }
}

fn skip_line(reader: &mut BufReader<File>) -> std::io::Result<()> {
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
            }
        }
    }
}

/// Refuses a folder given for a file of rows, naming it.
pub fn not_a_folder(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Failure::invalid(format!(
            "{} is a folder, not a file of rows (.csv, .ndjson or .jsonl)",
            path.display()
        )));
    }
    Ok(())
}

/// The file at `path` cannot be read, and why.
fn unreadable(path: &Path, e: impl Display) -> Failure {
    Failure::invalid(format!("{}: {e}", path.display()))
}

/// A fault of the file the CSV reader found, at `line` of the file when it names a record.
fn csv_failure(path: &Path, e: &csv::Error, line: Option<u64>) -> Failure {
    let fault = match e.kind() {
        csv::ErrorKind::Io(io) if !too_long(e) => {
            return unreadable(path, format_args!("the CSV file cannot be read: {io}"));
        }
        csv::ErrorKind::Io(io) => io.to_string(),
        // The crate's own text names the record by its line, which skips blank lines.
        csv::ErrorKind::Utf8 { err, .. } => match err.valid_up_to() {
            0 => format!(
                "column {} is not UTF-8 text (from its first byte; save the file as UTF-8)",
                err.field() + 1
            ),
            valid => format!(
                "column {} is not UTF-8 text (after its first {valid} bytes; save the file as \
                 UTF-8)",
                err.field() + 1
            ),
        },
        _ => e.to_string(),
    };
    let message = match line {
        Some(line) => format!("line {line}: {fault}"),
        None => fault,
    };
    unreadable(path, format_args!("the CSV file cannot be read: {message}"))
}

/// The columns `batch results --format csv` (and the dashboard's failed rows) add after an
/// item's fields: read past when a header names all four (a results file), so that its failed
/// items can be fixed and submitted again as they are; one of them alone is an unknown field,
/// as before.
pub use provisioner_shared::domain::RESULT_COLUMNS;
use provisioner_shared::domain::as_written;

/// Whether `headers` are a results file's: they name every one of `RESULT_COLUMNS`.
fn a_results_file(headers: &[String]) -> bool {
    RESULT_COLUMNS
        .iter()
        .all(|c| headers.iter().any(|h| h == c))
}

fn check_headers(path: &Path, headers: &[String]) -> Result<()> {
    let results = a_results_file(headers);
    let mut problems = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if h.is_empty() {
            problems.push(Problem::new("", format!("column {} has no name", i + 1)).at_line(1));
        } else if headers[..i].contains(h) {
            problems.push(Problem::new(h, "appears twice in the header").at_line(1));
        } else if !(fields::FIELDS.contains(&h.as_str())
            || results && RESULT_COLUMNS.contains(&h.as_str()))
        {
            problems.push(Problem::new(h, "unknown field").at_line(1));
        }
    }
    if !headers.iter().any(|h| h == "tenantUrl") {
        problems.push(Problem::new("tenantUrl", "the header must name it").at_line(1));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::invalid(format!("{}: bad header row", path.display())).with_problems(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::file;

    type Fields = std::result::Result<Map<String, Value>, Problem>;

    fn all(path: &Path) -> Vec<(u64, Fields)> {
        let mut rows = Rows::open(path, Format::of(path).unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(row) = rows.next_row().unwrap() {
            out.push((row.line, row.fields));
        }
        out
    }

    #[test]
    fn an_overlong_ndjson_line_is_one_bad_row_and_the_next_keeps_its_number() {
        let long = format!(
            "{{\"tenantUrl\": \"{}\"}}\n",
            "a".repeat(MAX_ROW_BYTES as usize)
        );
        let text = format!(
            "{{\"tenantUrl\": \"a.example\"}}\n\n{long}[1]\n{{\"tenantUrl\": \"b.example\"}}\n"
        );
        let rows = all(&file("t.ndjson", text.as_bytes()));
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [1, 3, 4, 5]);
        assert!(rows[1].1.as_ref().unwrap_err().message.contains("at most"));
        assert!(
            rows[2]
                .1
                .as_ref()
                .unwrap_err()
                .message
                .contains("JSON object")
        );
        assert_eq!(rows[3].1.as_ref().unwrap()["tenantUrl"], "b.example");
    }

    #[test]
    fn a_csv_row_is_numbered_by_its_first_line_and_empty_cells_are_absent() {
        let text = "tenantUrl,tenantName,numberMap\na.example,\"Two\nlines\",\nb.example,B,1:2;3:4\nc.example\n";
        let rows = all(&file("t.csv", text.as_bytes()));
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [2, 4, 5]);
        let first = rows[0].1.as_ref().unwrap();
        assert_eq!(first["tenantName"], "Two\nlines");
        assert!(!first.contains_key("numberMap"));
        assert_eq!(rows[1].1.as_ref().unwrap()["numberMap"]["3"], "4");
        assert!(rows[2].1.as_ref().unwrap_err().message.contains("cells"));
    }

    #[test]
    fn csv_cells_are_trimmed_but_a_password() {
        let text =
            "tenantUrl, tenantName ,password,numberMap\n a.example ,\" Acme \", pass word ,  \n";
        let rows = all(&file("t.csv", text.as_bytes()));
        let fields = rows[0].1.as_ref().unwrap();
        assert_eq!(fields["tenantUrl"], "a.example");
        assert_eq!(fields["tenantName"], "Acme");
        assert_eq!(fields["password"], " pass word ");
        // A cell of spaces alone is empty: absent.
        assert!(!fields.contains_key("numberMap"), "{fields:?}");
        // A results file's cells are the text the fields were submitted with, spaces and all.
        let text = "tenantUrl,tenantName,jobId,status,code,error\na.example, Acme ,0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10,failed,409,x\n";
        let rows = all(&file("failed.csv", text.as_bytes()));
        assert_eq!(rows[0].1.as_ref().unwrap()["tenantName"], " Acme ");
    }

    #[test]
    fn a_csv_row_after_blank_lines_keeps_its_line_in_the_file() {
        // The CSV reader skips blank lines without counting them.
        let text = "tenantUrl\r\n\r\na.example\n\n\n\nb.example,x\n\n\"c.\nexample\"\nd.example\n";
        let rows = all(&file("t.csv", text.as_bytes()));
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [3, 7, 9, 11]);
        assert!(rows[1].1.as_ref().unwrap_err().message.contains("cells"));
    }

    #[test]
    fn a_csv_file_with_lone_carriage_returns_numbers_its_rows_by_line() {
        let text = "tenantUrl\ra.example\r\rb.example,x\r\r\nc.example\r";
        let rows = all(&file("t.csv", text.as_bytes()));
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [2, 4, 6]);
    }

    #[test]
    fn a_csv_cell_that_is_not_utf8_is_reported_at_its_line_in_the_file() {
        let text = b"tenantUrl,tenantName\n\n\na.example,A\n\nb.example,\xff\xfe\n";
        let path = file("t.csv", text);
        let mut rows = Rows::open(&path, Format::Csv).unwrap();
        assert_eq!(rows.next_row().unwrap().unwrap().line, 4);
        let Err(failure) = rows.next_row() else {
            panic!("a cell that is not UTF-8 was read");
        };
        assert!(
            failure
                .message
                .contains("line 6: column 2 is not UTF-8 text (from its first byte;"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn an_ndjson_file_may_open_with_a_byte_order_mark() {
        let path = file("t.ndjson", b"\xEF\xBB\xBF{\"tenantUrl\":\"a.example\"}\n");
        let mut rows = Rows::open(&path, Format::Ndjson).unwrap();
        let row = rows.next_row().unwrap().unwrap();
        assert_eq!(row.fields.unwrap()["tenantUrl"], "a.example");
        // The mark does not count in the row's size: a row of the largest size is one row.
        let largest = format!(
            "{{\"tenantUrl\":\"a.example\",\"tenantName\":\"{}\"}}",
            "n".repeat(MAX_ROW_BYTES as usize - 41)
        );
        assert_eq!(largest.len() as u64, MAX_ROW_BYTES);
        let mut text = BYTE_ORDER_MARK.to_vec();
        text.extend_from_slice(largest.as_bytes());
        text.extend_from_slice(b"\n{\"tenantUrl\":\"b.example\"}\n");
        let path = file("big.ndjson", &text);
        let mut rows = Rows::open(&path, Format::Ndjson).unwrap();
        let first = rows.next_row().unwrap().unwrap();
        assert_eq!(first.fields.unwrap()["tenantUrl"], "a.example");
        let second = rows.next_row().unwrap().unwrap();
        assert_eq!(
            (second.line, second.fields.unwrap()["tenantUrl"].clone()),
            (2, serde_json::json!("b.example"))
        );
    }

    #[test]
    fn a_header_that_is_not_utf8_is_reported_at_its_line_in_the_file() {
        let path = file("t.csv", b"\r\r\rtenantUrl,tenant\xffName\na.example,A\n");
        let Err(failure) = Rows::open(&path, Format::Csv) else {
            panic!("a header that is not UTF-8 was read");
        };
        assert!(
            failure
                .message
                .contains("line 4: column 2 is not UTF-8 text (after its first 6 bytes;"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn the_columns_of_a_results_file_are_read_past() {
        let text = "tenantUrl,tenantName,jobId,status,code,error\na.example,A,0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10,failed,409,\"tenant exists\"\n";
        let rows = all(&file("failed.csv", text.as_bytes()));
        let fields = rows[0].1.as_ref().unwrap();
        assert_eq!(
            fields.keys().collect::<Vec<_>>(),
            ["tenantName", "tenantUrl"]
        );
        // One of them alone is a column of the author's: unknown, as any other.
        let text = "tenantUrl,status\na.example,Active\n";
        let path = file("mine.csv", text.as_bytes());
        let Err(refused) = Rows::open(&path, Format::Csv) else {
            panic!("a status column alone was read");
        };
        assert!(
            refused.problems.iter().any(|p| p.field == "status"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_csv_header_must_name_known_distinct_fields_and_tenant_url() {
        let path = file("t.csv", b"tenantName,colour,tenantName\nx,y,z\n");
        let Err(failure) = Rows::open(&path, Format::Csv) else {
            panic!("a bad header is refused");
        };
        let fields: Vec<&str> = failure.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["colour", "tenantName", "tenantUrl"]);
    }

    #[test]
    fn an_endless_csv_record_is_refused_without_being_held() {
        let mut text = b"tenantUrl\n\"".to_vec();
        text.extend(std::iter::repeat_n(b'a', 4 * MAX_ROW_BYTES as usize));
        let path = file("t.csv", &text);
        let mut rows = Rows::open(&path, Format::Csv).unwrap();
        let Err(failure) = rows.next_row() else {
            panic!("an endless record is refused");
        };
        assert!(
            failure
                .message
                .contains("line 2: a row is longer than 65536 bytes"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_quote_never_closed_is_reported_at_the_line_it_opens() {
        // Rows after it, blank lines included, are swallowed by the open quote.
        let mut text =
            b"tenantUrl,tenantName\na.example,A\n\n\nb.example,\"B\nc.example,C\n".to_vec();
        for i in 0..10_000 {
            text.extend_from_slice(format!("\nt{i}.example,T").as_bytes());
        }
        let path = file("t.csv", &text);
        let mut rows = Rows::open(&path, Format::Csv).unwrap();
        assert_eq!(rows.next_row().unwrap().unwrap().line, 2);
        let Err(failure) = rows.next_row() else {
            panic!("a record of the rest of the file is refused");
        };
        assert!(
            failure.message.contains("line 5: a row is longer than")
                && failure
                    .message
                    .contains("a quote opened there and never closed?"),
            "{}",
            failure.message
        );
        let mut header = b"\n\"tenantUrl".to_vec();
        header.extend(std::iter::repeat_n(b'a', 2 * MAX_ROW_BYTES as usize));
        let Err(failure) = Rows::open(&file("h.csv", &header), Format::Csv) else {
            panic!("an endless header is refused");
        };
        assert!(
            failure.message.contains("line 2: a row is longer than"),
            "{}",
            failure.message
        );
    }
}
