//! A ZIP writer for the corpus, byte by byte (stored entries), that can bend every field the
//! reader's directory walk checks.

#[derive(Clone)]
pub(super) struct Entry {
    pub(super) name: Vec<u8>,
    pub(super) body: Vec<u8>,
    pub(super) flags: u16,
    pub(super) extra: Vec<u8>,
    pub(super) disk: u16,
    pub(super) unix_mode: Option<u32>,
    /// Point this record at another entry's data.
    pub(super) same_data_as: Option<usize>,
    /// The compressed size the central record declares, instead of the true one.
    pub(super) declared_compressed: Option<u32>,
    /// The name the local header gives, instead of the directory's.
    pub(super) local_name: Option<Vec<u8>>,
    /// The compression method both headers give (the data is stored whatever they say).
    pub(super) method: u16,
}

pub(super) fn entry(name: &str, body: &[u8]) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        body: body.to_vec(),
        flags: 0,
        extra: vec![],
        disk: 0,
        unix_mode: None,
        same_data_as: None,
        declared_compressed: None,
        local_name: None,
        method: 0,
    }
}

/// How to write the end of the archive.
#[derive(Clone, Default)]
pub(super) struct End {
    pub(super) on_disk: Option<u64>,
    pub(super) total: Option<u64>,
    pub(super) disk: u16,
    pub(super) zip64: bool,
    /// ZIP64 only: the 16-bit "total entries" written instead of 0xFFFF.
    pub(super) narrow_total: Option<u16>,
    pub(super) locator_disks: Option<u32>,
    pub(super) locator_offset: Option<u64>,
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub(super) fn archive(entries: &[Entry], end: &End) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        offsets.push(out.len() as u32);
        if e.same_data_as.is_some() {
            continue;
        }
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend(e.flags.to_le_bytes());
        out.extend(e.method.to_le_bytes());
        out.extend([0u8; 4]); // time, date
        out.extend(crc32(&e.body).to_le_bytes());
        out.extend((e.body.len() as u32).to_le_bytes());
        out.extend((e.body.len() as u32).to_le_bytes());
        let local_name = e.local_name.as_ref().unwrap_or(&e.name);
        out.extend((local_name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(local_name);
        out.extend(&e.body);
    }
    let dir_offset = out.len() as u64;
    for (i, e) in entries.iter().enumerate() {
        let offset = offsets[e.same_data_as.unwrap_or(i)];
        let data = &entries[e.same_data_as.unwrap_or(i)].body;
        out.extend(0x0201_4b50u32.to_le_bytes());
        let made_by: u16 = if e.unix_mode.is_some() {
            3 << 8 | 20
        } else {
            20
        };
        out.extend(made_by.to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend(e.flags.to_le_bytes());
        out.extend(e.method.to_le_bytes());
        out.extend([0u8; 4]);
        out.extend(crc32(data).to_le_bytes());
        out.extend(
            e.declared_compressed
                .unwrap_or(data.len() as u32)
                .to_le_bytes(),
        );
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((e.name.len() as u16).to_le_bytes());
        out.extend((e.extra.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(e.disk.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend((e.unix_mode.unwrap_or(0) << 16).to_le_bytes());
        out.extend(offset.to_le_bytes());
        out.extend(&e.name);
        out.extend(&e.extra);
    }
    let dir_size = out.len() as u64 - dir_offset;
    let n = entries.len() as u64;
    let (on_disk, total) = (end.on_disk.unwrap_or(n), end.total.unwrap_or(n));
    if end.zip64 {
        let record = out.len() as u64;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend(45u16.to_le_bytes());
        out.extend(45u16.to_le_bytes());
        out.extend(u32::from(end.disk).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(on_disk.to_le_bytes());
        out.extend(total.to_le_bytes());
        out.extend(dir_size.to_le_bytes());
        out.extend(dir_offset.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(end.locator_offset.unwrap_or(record).to_le_bytes());
        out.extend(end.locator_disks.unwrap_or(1).to_le_bytes());
    }
    let narrow = |v: u64| if end.zip64 { 0xFFFF } else { v as u16 };
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(if end.zip64 { 0xFFFF } else { end.disk }.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(narrow(on_disk).to_le_bytes());
    out.extend(end.narrow_total.unwrap_or(narrow(total)).to_le_bytes());
    let wide = |v: u64| if end.zip64 { 0xFFFF_FFFF } else { v as u32 };
    out.extend(wide(dir_size).to_le_bytes());
    out.extend(wide(dir_offset).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}
