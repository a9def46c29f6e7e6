//! A minimal walker over the top-level sections of a WebAssembly binary.
//!
//! The signature format works on raw sections, so this is all it needs: each
//! section's id, its byte range and, for custom sections, its name.

use crate::{Error, Result};
use std::ops::Range;

/// `\0asm` magic.
pub const MAGIC: [u8; 4] = *b"\0asm";
/// Version and layer bytes of a component (component-model layer 1).
pub const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
/// Version and layer bytes of a core module.
pub const MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// Most top-level sections accepted in a component. Our guest components
/// have a few dozen; the bound keeps a hostile file of millions of tiny
/// sections from costing memory before any signature is checked.
pub const MAX_SECTIONS: usize = 10_000;

/// One top-level section.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    /// Section id (0 = custom).
    pub id: u8,
    /// Custom section name (empty for other sections).
    pub name: &'a str,
    /// The whole section, id byte included.
    pub range: Range<usize>,
    /// The payload (for custom sections, after the name).
    pub payload: &'a [u8],
}

/// Check the preamble is a component's and return its top-level sections.
pub fn component_sections(bytes: &[u8]) -> Result<Vec<Section<'_>>> {
    if bytes.len() < 8 || bytes[..4] != MAGIC {
        return Err(Error::NotAComponent {
            found: "no WebAssembly magic number",
        });
    }
    if bytes[4..8] == MODULE_VERSION {
        return Err(Error::NotAComponent {
            found: "a core module",
        });
    }
    if bytes[4..8] != COMPONENT_VERSION {
        return Err(Error::NotAComponent {
            found: "an unknown WebAssembly version",
        });
    }
    let mut out = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        if out.len() == MAX_SECTIONS {
            return Err(Error::LimitExceeded {
                what: "top-level sections",
                limit: MAX_SECTIONS as u64,
                found: MAX_SECTIONS as u64 + 1,
            });
        }
        let start = pos;
        let id = bytes[pos];
        pos += 1;
        let (size, n) = read_u32(bytes, pos)?;
        pos += n;
        let end = pos
            .checked_add(size as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                malformed(
                    start,
                    format!("section of {size} bytes runs past the end of the file"),
                )
            })?;
        let (name, payload) = if id == 0 {
            let (len, n) = read_u32(bytes, pos)?;
            let name_start = pos + n;
            let name_end = name_start
                .checked_add(len as usize)
                .filter(|&e| e <= end)
                .ok_or_else(|| {
                    malformed(pos, "custom section name runs past the section".into())
                })?;
            let name = std::str::from_utf8(&bytes[name_start..name_end])
                .map_err(|_| malformed(name_start, "custom section name is not UTF-8".into()))?;
            (name, &bytes[name_end..end])
        } else {
            ("", &bytes[pos..end])
        };
        out.push(Section {
            id,
            name,
            range: start..end,
            payload,
        });
        pos = end;
    }
    Ok(out)
}

impl Section<'_> {
    /// The section as wasmsign2 writes (and hashes) it: id, then minimal
    /// LEB128 lengths. Padded lengths in an input component are rewritten,
    /// so that a bundle signed by either tool hashes the same.
    pub fn canonical(&self) -> Vec<u8> {
        if self.id == 0 {
            return custom_section(self.name, self.payload);
        }
        let mut out = Vec::with_capacity(self.payload.len() + 6);
        out.push(self.id);
        write_u32(&mut out, self.payload.len() as u32);
        out.extend_from_slice(self.payload);
        out
    }
}

fn malformed(offset: usize, reason: String) -> Error {
    Error::Malformed { offset, reason }
}

/// Read an unsigned LEB128 u32 at `pos`; returns the value and its length.
pub fn read_u32(bytes: &[u8], pos: usize) -> Result<(u32, usize)> {
    let mut value: u64 = 0;
    for i in 0..5 {
        let b = *bytes
            .get(pos + i)
            .ok_or_else(|| malformed(pos, "unexpected end of file in a length".into()))?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(value)
                .map(|v| (v, i + 1))
                .map_err(|_| malformed(pos, "length over u32".into()));
        }
    }
    Err(malformed(pos, "length encoding is too long".into()))
}

/// Append `v` as unsigned LEB128.
pub fn write_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Encode a custom section.
pub fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(name.len() + payload.len() + 5);
    write_u32(&mut body, name.len() as u32);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(0);
    write_u32(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    out
}
