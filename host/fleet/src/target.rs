//! Device tags and the tag selectors releases target.
//!
//! Tags are `key=value` pairs a device carries (site, hardware, customer):
//! set in its configuration, at enrolment, or by an admin. A release may
//! name a selector in the syntax of Kubernetes label selectors; only
//! devices whose tags match it take the release (and then only those in
//! its rollout share):
//!
//! | requirement            | matches a device that                       |
//! |------------------------|---------------------------------------------|
//! | `site=berlin`          | has tag `site` with value `berlin` (`==` too) |
//! | `site!=berlin`         | has no `site` tag, or another value         |
//! | `hw in (rpi4, jetson)` | has tag `hw` with one of the values         |
//! | `hw notin (rpi3)`      | has no `hw` tag, or a value not listed      |
//! | `canary`               | has a `canary` tag (any value)              |
//! | `!legacy`              | has no `legacy` tag                         |
//!
//! Requirements separated by commas must all hold. An empty selector
//! matches every device.
//!
//! ```
//! use edgeml_fleet::{Selector, Tags};
//! let s: Selector = "site in (berlin, paris), hw!=rpi3, !legacy".parse()?;
//! let tags: Tags = [("site", "paris"), ("hw", "rpi4")]
//!     .into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
//! assert!(s.matches(&tags));
//! # Ok::<(), edgeml_fleet::Error>(())
//! ```

use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A device's tags: key -> value.
pub type Tags = BTreeMap<String, String>;

/// Longest tag key or value, in bytes (as for Kubernetes label names).
pub const MAX_TAG_LEN: usize = 63;

/// Most tags a device carries.
pub const MAX_TAGS: usize = 64;

/// Check a tag key or value: 1 to 63 characters from `A-Z a-z 0-9 . _ - /`
/// (a value may be empty).
fn check_word(word: &str, what: &str, may_be_empty: bool) -> std::result::Result<(), String> {
    if word.is_empty() && !may_be_empty {
        return Err(format!("{what} is empty"));
    }
    if word.len() > MAX_TAG_LEN {
        return Err(format!(
            "{what} `{word}` is longer than {MAX_TAG_LEN} bytes"
        ));
    }
    if let Some(c) = word
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!(
            "{what} `{word}` has `{c}`: use letters, digits, `.`, `_`, `-` and `/`"
        ));
    }
    Ok(())
}

/// Check a device's tags: at most [`MAX_TAGS`], keys and values of at most
/// [`MAX_TAG_LEN`] characters from `A-Z a-z 0-9 . _ - /`.
pub fn check_tags(tags: &Tags) -> Result<()> {
    let invalid = |reason: String| Error::InvalidTags(reason);
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!(
            "{} tags; a device carries at most {MAX_TAGS}",
            tags.len()
        )));
    }
    for (k, v) in tags {
        check_word(k, "tag key", false).map_err(invalid)?;
        check_word(v, &format!("value of tag `{k}`"), true).map_err(invalid)?;
    }
    Ok(())
}

/// Parse `key=value` pairs (as given on a command line).
pub fn parse_tags<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Tags> {
    let mut tags = Tags::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::InvalidTags(format!("`{pair}` is not `key=value`")))?;
        tags.insert(k.trim().to_string(), v.trim().to_string());
    }
    check_tags(&tags)?;
    Ok(tags)
}

/// One requirement of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    Absent(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

impl Requirement {
    fn matches(&self, tags: &Tags) -> bool {
        match self {
            Requirement::Exists(k) => tags.contains_key(k),
            Requirement::Absent(k) => !tags.contains_key(k),
            Requirement::In(k, vs) => tags.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => tags.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(", ");
        match self {
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::Absent(k) => write!(f, "!{k}"),
            Requirement::In(k, vs) if vs.len() == 1 => write!(f, "{k}={}", list(vs)),
            Requirement::NotIn(k, vs) if vs.len() == 1 => write!(f, "{k}!={}", list(vs)),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", list(vs)),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", list(vs)),
        }
    }
}

/// A tag selector (see the module documentation for its syntax).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether a device with `tags` matches every requirement.
    pub fn matches(&self, tags: &Tags) -> bool {
        self.requirements.iter().all(|r| r.matches(tags))
    }

    /// Whether it matches every device.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(", "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Comma,
    Open,
    Close,
    Bang,
    Eq,
    NotEq,
}

fn tokens(s: &str) -> std::result::Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ',' => out.push(Token::Comma),
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            '!' if chars.peek().is_some_and(|(_, n)| *n == '=') => {
                chars.next();
                out.push(Token::NotEq);
            }
            '!' => out.push(Token::Bang),
            '=' => {
                if chars.peek().is_some_and(|(_, n)| *n == '=') {
                    chars.next();
                }
                out.push(Token::Eq);
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/') => {
                let mut end = i + c.len_utf8();
                while let Some((j, n)) = chars.peek().copied() {
                    if n.is_ascii_alphanumeric() || matches!(n, '.' | '_' | '-' | '/') {
                        end = j + n.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(s[i..end].to_string()));
            }
            c => return Err(format!("unexpected `{c}` at byte {i}")),
        }
    }
    Ok(out)
}

impl FromStr for Selector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Selector> {
        let invalid = |reason: String| Error::InvalidSelector {
            selector: s.chars().take(200).collect(),
            reason,
        };
        if s.len() > 4096 {
            return Err(invalid("longer than 4096 bytes".into()));
        }
        let toks = tokens(s).map_err(invalid)?;
        let mut requirements = Vec::new();
        let mut i = 0;
        let word = |i: usize, what: &str| -> std::result::Result<String, String> {
            match toks.get(i) {
                Some(Token::Word(w)) => Ok(w.clone()),
                Some(t) => Err(format!("expected {what}, found {t:?}")),
                None => Err(format!("expected {what} at the end")),
            }
        };
        while i < toks.len() {
            let req = if toks[i] == Token::Bang {
                let key = word(i + 1, "a tag key after `!`").map_err(invalid)?;
                check_word(&key, "tag key", false).map_err(invalid)?;
                i += 2;
                Requirement::Absent(key)
            } else {
                let key = word(i, "a tag key").map_err(invalid)?;
                check_word(&key, "tag key", false).map_err(invalid)?;
                i += 1;
                match toks.get(i) {
                    None | Some(Token::Comma) => Requirement::Exists(key),
                    Some(Token::Eq) | Some(Token::NotEq) => {
                        let not = toks[i] == Token::NotEq;
                        // `key=` (empty value) is allowed, as for tags.
                        let value = match toks.get(i + 1) {
                            Some(Token::Word(w)) => {
                                i += 2;
                                w.clone()
                            }
                            None | Some(Token::Comma) => {
                                i += 1;
                                String::new()
                            }
                            Some(t) => {
                                return Err(invalid(format!("expected a value, found {t:?}")))
                            }
                        };
                        check_word(&value, "tag value", true).map_err(invalid)?;
                        let set = BTreeSet::from([value]);
                        if not {
                            Requirement::NotIn(key, set)
                        } else {
                            Requirement::In(key, set)
                        }
                    }
                    Some(Token::Word(op)) if op == "in" || op == "notin" => {
                        let not = op == "notin";
                        if toks.get(i + 1) != Some(&Token::Open) {
                            return Err(invalid(format!("expected `(` after `{op}`")));
                        }
                        i += 2;
                        let mut set = BTreeSet::new();
                        loop {
                            let v = word(i, "a value").map_err(invalid)?;
                            check_word(&v, "tag value", true).map_err(invalid)?;
                            set.insert(v);
                            i += 1;
                            match toks.get(i) {
                                Some(Token::Comma) => i += 1,
                                Some(Token::Close) => {
                                    i += 1;
                                    break;
                                }
                                _ => {
                                    return Err(invalid(format!(
                                        "expected `,` or `)` in the `{op}` list"
                                    )))
                                }
                            }
                        }
                        if not {
                            Requirement::NotIn(key, set)
                        } else {
                            Requirement::In(key, set)
                        }
                    }
                    Some(t) => {
                        return Err(invalid(format!(
                            "expected `=`, `!=`, `in`, `notin` or `,` after `{key}`, found {t:?}"
                        )))
                    }
                }
            };
            requirements.push(req);
            match toks.get(i) {
                None => {}
                Some(Token::Comma) if i + 1 < toks.len() => i += 1,
                Some(Token::Comma) => return Err(invalid("a trailing `,`".into())),
                Some(t) => return Err(invalid(format!("expected `,`, found {t:?}"))),
            }
        }
        Ok(Selector { requirements })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_requirements_match_as_documented() {
        let t = tags(&[("site", "berlin"), ("hw", "rpi4"), ("canary", "")]);
        for (sel, want) in [
            ("", true),
            ("site=berlin", true),
            ("site==berlin", true),
            ("site=paris", false),
            ("site!=paris", true),
            ("site!=berlin", false),
            ("customer!=acme", true),
            ("hw in (rpi4, jetson)", true),
            ("hw in (jetson)", false),
            ("hw notin (rpi3,jetson)", true),
            ("customer notin (acme)", true),
            ("customer in (acme)", false),
            ("canary", true),
            ("canary=", true),
            ("legacy", false),
            ("!legacy", true),
            ("!canary", false),
            ("site=berlin, hw in (rpi4), !legacy", true),
            ("site=berlin,hw=jetson", false),
        ] {
            let s: Selector = sel.parse().unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&t), want, "{sel}");
            // Display gives a selector that parses to the same thing.
            assert_eq!(s.to_string().parse::<Selector>().unwrap(), s, "{sel}");
        }
    }

    #[test]
    fn rejects_malformed_selectors() {
        for sel in [
            "site=",
            ",",
            "site=berlin,",
            "site in berlin",
            "site in (berlin",
            "site in ()",
            "=berlin",
            "site = berlin paris",
            "site=ber lin",
            "site=berlin;rm",
            "!",
            "(site)",
        ] {
            let r = sel.parse::<Selector>();
            if sel == "site=" {
                assert!(r.is_ok(), "an empty value is a value");
                continue;
            }
            assert!(
                matches!(r, Err(Error::InvalidSelector { .. })),
                "{sel}: {r:?}"
            );
        }
        let long = format!("site={}", "x".repeat(64));
        assert!(matches!(
            long.parse::<Selector>(),
            Err(Error::InvalidSelector { .. })
        ));
    }

    #[test]
    fn rejects_invalid_tags() {
        assert!(parse_tags(["site=berlin", "hw = rpi4"]).is_ok());
        for bad in ["site", "=x", "site=ber lin", "sité=x"] {
            assert!(
                matches!(parse_tags([bad]), Err(Error::InvalidTags(_))),
                "{bad}"
            );
        }
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}=v")).collect();
        assert!(matches!(
            parse_tags(many.iter().map(String::as_str)),
            Err(Error::InvalidTags(_))
        ));
    }
}
