//! A ZIP archive written front to back into any `Write`: each entry is deflated as it is
//! written and followed by a data descriptor (its CRC and sizes, known only at its end), so
//! nothing is held but the entry's compression state. The central directory, written last,
//! carries every size again; readers (`zipdir`, the ZIP library) take the sizes from it.

use std::io::{self, Write};

use flate2::{Compression, write::DeflateEncoder};

const LOCAL: u32 = 0x0403_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
/// Version 2.0 (deflate) needed; made by version 2.0 on Unix.
const VERSION_NEEDED: u16 = 20;
const MADE_BY: u16 = (3 << 8) | 20;
/// Flag bit 3: the CRC and sizes follow the data, in a data descriptor.
const SIZES_AFTER: u16 = 1 << 3;
const DEFLATED: u16 = 8;
/// 1980-01-01 00:00, the earliest DOS time (what the ZIP library writes without a clock).
const DOS_DATE: u16 = (1 << 5) | 1;
const DOS_TIME: u16 = 0;
/// A regular file, rw-r--r--, in the high half of the external attributes.
const FILE_MODE: u32 = 0o100_644 << 16;
/// Entry bytes gathered before they are handed to the compressor.
const INPUT_BUFFER: usize = 64 << 10;

/// `out`, counting the bytes written to it.
struct Counted<W> {
    out: W,
    written: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The entry being written.
struct Entry<W: Write> {
    name: String,
    offset: u32,
    crc: crc32fast::Hasher,
    size: u64,
    input: Vec<u8>,
    deflate: DeflateEncoder<Counted<W>>,
}

/// What the central directory says of a written entry.
struct Record {
    name: String,
    offset: u32,
    crc: u32,
    compressed: u32,
    size: u32,
}

enum State<W: Write> {
    Between(Counted<W>),
    In(Entry<W>),
    /// A write failed: the archive is lost.
    Broken,
}

/// A ZIP archive being written; `start` an entry, write its content, `finish` the archive.
pub(super) struct ZipStream<W: Write> {
    state: State<W>,
    records: Vec<Record>,
}

impl<W: Write> ZipStream<W> {
    pub(super) fn new(out: W) -> Self {
        Self {
            state: State::Between(Counted { out, written: 0 }),
            records: Vec::new(),
        }
    }

    /// Ends the entry being written, if any, and starts `name`: what is written next is its
    /// content.
    pub(super) fn start(&mut self, name: &str) -> io::Result<()> {
        let mut out = self.between()?;
        let offset = narrow(out.written, "the archive")?;
        if self.records.len() >= usize::from(u16::MAX) {
            return Err(too_large("the archive's entry count"));
        }
        let mut header = Vec::with_capacity(30 + name.len());
        put32(&mut header, LOCAL);
        put16(&mut header, VERSION_NEEDED);
        put16(&mut header, SIZES_AFTER);
        put16(&mut header, DEFLATED);
        put16(&mut header, DOS_TIME);
        put16(&mut header, DOS_DATE);
        // CRC and sizes: in the data descriptor.
        header.extend([0; 12]);
        put16(&mut header, name_len(name)?);
        put16(&mut header, 0);
        header.extend(name.as_bytes());
        out.write_all(&header)?;
        self.state = State::In(Entry {
            name: name.to_owned(),
            offset,
            crc: crc32fast::Hasher::new(),
            size: 0,
            input: Vec::with_capacity(INPUT_BUFFER),
            deflate: DeflateEncoder::new(out, Compression::default()),
        });
        Ok(())
    }

    /// Bytes written to the output so far (those the compressor holds are not).
    pub(super) fn written(&self) -> u64 {
        match &self.state {
            State::Between(out) => out.written,
            State::In(entry) => entry.deflate.get_ref().written,
            State::Broken => 0,
        }
    }

    /// Ends the entry being written, writes the central directory and returns the output.
    pub(super) fn finish(mut self) -> io::Result<W> {
        let mut out = self.between()?;
        let start = out.written;
        let mut directory = Vec::new();
        for r in &self.records {
            put32(&mut directory, CENTRAL);
            put16(&mut directory, MADE_BY);
            put16(&mut directory, VERSION_NEEDED);
            put16(&mut directory, SIZES_AFTER);
            put16(&mut directory, DEFLATED);
            put16(&mut directory, DOS_TIME);
            put16(&mut directory, DOS_DATE);
            put32(&mut directory, r.crc);
            put32(&mut directory, r.compressed);
            put32(&mut directory, r.size);
            put16(&mut directory, name_len(&r.name)?);
            // Extra field, comment, disk number, internal attributes.
            directory.extend([0; 8]);
            put32(&mut directory, FILE_MODE);
            put32(&mut directory, r.offset);
            directory.extend(r.name.as_bytes());
        }
        let size = narrow(directory.len() as u64, "the directory")?;
        let entries = self.records.len() as u16;
        put32(&mut directory, END);
        // This disk, the directory's disk.
        directory.extend([0; 4]);
        put16(&mut directory, entries);
        put16(&mut directory, entries);
        put32(&mut directory, size);
        put32(&mut directory, narrow(start, "the archive")?);
        put16(&mut directory, 0);
        out.write_all(&directory)?;
        out.flush()?;
        Ok(out.out)
    }

    /// Ends the entry being written (its data descriptor written, its record kept) and gives
    /// the output back.
    fn between(&mut self) -> io::Result<Counted<W>> {
        match std::mem::replace(&mut self.state, State::Broken) {
            State::Between(out) => Ok(out),
            State::In(entry) => {
                let (out, record) = entry.end()?;
                self.records.push(record);
                Ok(out)
            }
            State::Broken => Err(broken()),
        }
    }
}

impl<W: Write> Entry<W> {
    /// Gathers small writes (serializers write token by token) before compressing them; a
    /// large one is compressed at once.
    fn take(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.input.len() + buf.len() > INPUT_BUFFER {
            self.compress_input()?;
        }
        if buf.len() >= INPUT_BUFFER {
            self.deflate.write_all(buf)
        } else {
            self.input.extend_from_slice(buf);
            Ok(())
        }
    }

    fn compress_input(&mut self) -> io::Result<()> {
        self.deflate.write_all(&self.input)?;
        self.input.clear();
        Ok(())
    }

    fn end(mut self) -> io::Result<(Counted<W>, Record)> {
        self.compress_input()?;
        let mut out = self.deflate.finish()?;
        let data_start = u64::from(self.offset) + 30 + self.name.len() as u64;
        let compressed = narrow(out.written - data_start, &self.name)?;
        let size = narrow(self.size, &self.name)?;
        let crc = self.crc.finalize();
        let mut descriptor = Vec::with_capacity(16);
        put32(&mut descriptor, DESCRIPTOR);
        put32(&mut descriptor, crc);
        put32(&mut descriptor, compressed);
        put32(&mut descriptor, size);
        out.write_all(&descriptor)?;
        let record = Record {
            name: self.name,
            offset: self.offset,
            crc,
            compressed,
            size,
        };
        Ok((out, record))
    }
}

impl<W: Write> Write for ZipStream<W> {
    /// Content of the entry being written.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let State::In(entry) = &mut self.state else {
            return Err(io::Error::other("no ZIP entry is being written"));
        };
        entry.crc.update(buf);
        entry.size += buf.len() as u64;
        if let Err(e) = entry.take(buf) {
            self.state = State::Broken;
            return Err(e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend(v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend(v.to_le_bytes());
}

fn name_len(name: &str) -> io::Result<u16> {
    u16::try_from(name.len()).map_err(|_| too_large("an entry name"))
}

/// A size or offset of the archive as its 32-bit field (ZIP64 is not written).
fn narrow(v: u64, what: &str) -> io::Result<u32> {
    u32::try_from(v).map_err(|_| too_large(what))
}

fn too_large(what: &str) -> io::Error {
    io::Error::other(format!(
        "{what} is too large for a ZIP archive without ZIP64"
    ))
}

fn broken() -> io::Error {
    io::Error::other("an earlier write to the archive failed")
}
