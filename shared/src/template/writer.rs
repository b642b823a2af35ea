//! Writing a template front to back: the manifest and the tenant whole, then each list a page
//! at a time into a streamed ZIP (`zipout`). A list written in pages is the same pretty JSON as
//! the list written at once. Export Tenant feeds it pages read from the database;
//! `Template::write` the lists it holds.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

use super::{
    ACCESS_NUMBERS, AUDIT, AccessNumberEntry, AuditEntry, CALLING_LISTS, CallingListEntry,
    MANIFEST, Manifest, OBJECTS, ObjectEntry, TENANT, TenantEntry, USERS, UserEntry,
    zipout::ZipStream,
};

/// The lists, in archive order.
const LISTS: [&str; 5] = [USERS, OBJECTS, ACCESS_NUMBERS, CALLING_LISTS, AUDIT];

/// Some consecutive items of one list.
#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    Users(Vec<UserEntry>),
    Objects(Vec<ObjectEntry>),
    AccessNumbers(Vec<AccessNumberEntry>),
    CallingLists(Vec<CallingListEntry>),
    Audit(Vec<AuditEntry>),
}

impl Page {
    pub fn len(&self) -> usize {
        match self {
            Page::Users(v) => v.len(),
            Page::Objects(v) => v.len(),
            Page::AccessNumbers(v) => v.len(),
            Page::CallingLists(v) => v.len(),
            Page::Audit(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A template being written into `W`. Lists come in archive order (users, objects, access
/// numbers, calling lists, audit); a list never given is written empty.
pub struct TemplateWriter<W: Write> {
    zip: ZipStream<W>,
    /// Index in `LISTS` of the first list not started yet.
    next: usize,
    /// The list being written, and whether it has an item yet.
    open: Option<(&'static str, bool)>,
}

impl<W: Write> TemplateWriter<W> {
    /// Starts the archive with its manifest and tenant entries.
    pub fn new(out: W, manifest: &Manifest, tenant: &TenantEntry) -> io::Result<Self> {
        let mut zip = ZipStream::new(out);
        zip.start(MANIFEST)?;
        serde_json::to_writer_pretty(&mut zip, manifest)?;
        zip.start(TENANT)?;
        serde_json::to_writer_pretty(&mut zip, tenant)?;
        Ok(Self {
            zip,
            next: 0,
            open: None,
        })
    }

    /// Appends the page's items to their list.
    pub fn page(&mut self, page: &Page) -> io::Result<()> {
        match page {
            Page::Users(items) => self.users(items),
            Page::Objects(items) => self.objects(items),
            Page::AccessNumbers(items) => self.access_numbers(items),
            Page::CallingLists(items) => self.calling_lists(items),
            Page::Audit(items) => self.audit(items),
        }
    }

    pub fn users(&mut self, items: &[UserEntry]) -> io::Result<()> {
        self.items(USERS, items)
    }

    pub fn objects(&mut self, items: &[ObjectEntry]) -> io::Result<()> {
        self.items(OBJECTS, items)
    }

    pub fn access_numbers(&mut self, items: &[AccessNumberEntry]) -> io::Result<()> {
        self.items(ACCESS_NUMBERS, items)
    }

    pub fn calling_lists(&mut self, items: &[CallingListEntry]) -> io::Result<()> {
        self.items(CALLING_LISTS, items)
    }

    pub fn audit(&mut self, items: &[AuditEntry]) -> io::Result<()> {
        self.items(AUDIT, items)
    }

    /// Bytes of the archive written to the output so far.
    pub fn written(&self) -> u64 {
        self.zip.written()
    }

    /// Ends the lists and the archive; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.close_list()?;
        while self.next < LISTS.len() {
            self.empty_list()?;
        }
        self.zip.finish()
    }

    fn items<T: Serialize>(&mut self, list: &'static str, items: &[T]) -> io::Result<()> {
        self.open_list(list)?;
        for item in items {
            self.item(item)?;
        }
        Ok(())
    }

    /// Makes `list` the list being written: the one before it is closed, those between are
    /// written empty.
    fn open_list(&mut self, list: &'static str) -> io::Result<()> {
        if self.open.is_some_and(|(open, _)| open == list) {
            return Ok(());
        }
        let at = LISTS
            .iter()
            .position(|l| *l == list)
            .expect("a template list");
        if at < self.next {
            return Err(io::Error::other(format!(
                "`{list}` comes after a list written later in the archive"
            )));
        }
        self.close_list()?;
        while self.next < at {
            self.empty_list()?;
        }
        self.zip.start(list)?;
        self.zip.write_all(b"[")?;
        self.open = Some((list, false));
        self.next = at + 1;
        Ok(())
    }

    fn empty_list(&mut self) -> io::Result<()> {
        self.zip.start(LISTS[self.next])?;
        self.zip.write_all(b"[]")?;
        self.next += 1;
        Ok(())
    }

    /// Writes one item as `serde_json::to_writer_pretty` writes it inside a list.
    fn item<T: Serialize>(&mut self, item: &T) -> io::Result<()> {
        let Some((_, any)) = &mut self.open else {
            return Err(io::Error::other("no list is being written"));
        };
        let separator: &[u8] = if *any { b",\n  " } else { b"\n  " };
        *any = true;
        self.zip.write_all(separator)?;
        let mut formatter = PrettyFormatter::new();
        // One level in, as inside the list's brackets.
        formatter.begin_array(&mut io::sink())?;
        let mut json = serde_json::Serializer::with_formatter(&mut self.zip, formatter);
        item.serialize(&mut json)?;
        Ok(())
    }

    fn close_list(&mut self) -> io::Result<()> {
        match self.open.take() {
            Some((_, true)) => self.zip.write_all(b"\n]"),
            Some((_, false)) => self.zip.write_all(b"]"),
            None => Ok(()),
        }
    }
}
